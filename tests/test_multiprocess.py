"""Multi-process training through launch/local_multiprocess.sh (issue 19).

2 processes x 2 CPU devices train as 1 process x 4 devices does (the same global batches,
the same losses up to float reassociation), only process 0 writes metrics and progress,
and the 2-process checkpoint restores in 1 process (1 device, and 4 devices), where
training continues as the 2-process job did. The runs are tests/runs.py's background jobs
on the tiny config; the resumed runs load the programs of the session's tiny run and of
the 4-device run from the compilation cache.
"""

import math

import pytest
import runs
from runs import RESUME_STEP, train_lines

TOLERANCE = 1e-4  # relative, per loss; reassociation over devices is ~1e-6 here


def _ok(job):
    workdir, result = job.result()
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-5000:]}"
    return workdir, result


def _assert_close(actual: dict, expected: dict, steps) -> None:
    for step in steps:
        losses = {k: v for k, v in expected[step].items() if k.startswith("loss/")}
        assert losses, f"no losses logged at step {step}"
        for key, value in losses.items():
            got = actual[step][key]
            assert math.isclose(got, value, rel_tol=TOLERANCE, abs_tol=1e-6), (
                f"step {step} {key}: {got} vs {value}"
            )


@pytest.mark.slow
def test_two_processes_train_as_one_process_with_four_devices(two_process_job, four_device_job):
    two, result = _ok(two_process_job)
    four, _ = _ok(four_device_job)
    steps = range(1, 7)
    assert sorted(train_lines(two)) == list(steps)
    _assert_close(train_lines(two), train_lines(four), steps)
    # Process 0 alone writes metrics and reports progress; both say who they are.
    assert len(runs.metrics(two)) == len(runs.metrics(four))
    output = result.stderr
    assert "process 0 of 2" in output and "process 1 of 2" in output
    assert output.count("step 6/6") == 1
    assert sorted(p.name for p in (two / "checkpoints" / "3" / "data").iterdir()) == [
        "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("job", ["resumed_one_device_job", "resumed_four_devices_job"])
def test_a_two_process_checkpoint_resumes_in_one_process(job, request, two_process_job):
    two, _ = _ok(two_process_job)
    resumed, result = _ok(request.getfixturevalue(job))
    assert f"Resuming from the checkpoint of step {RESUME_STEP}" in result.stderr
    assert "another number of processes" in result.stderr  # the data position carried over
    _assert_close(train_lines(resumed), train_lines(two), range(RESUME_STEP + 1, 7))
