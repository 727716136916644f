"""Multi-process training through launch/local_multiprocess.sh (issue 19).

2 processes x 2 CPU devices train as 1 process x 4 devices does, and as the session's
tiny run (1 process, 1 device) does: the same global batches, the same losses up to float
reassociation over devices; only process 0 writes metrics and progress; and the 2-process
checkpoint restores in 1 process, where training continues as the 2-process job did. The
runs are tests/runs.py's background jobs on the tiny config; the resumed run loads the
tiny run's programs from the compilation cache.
"""

import math

import pytest
import runs
from runs import RESUME_STEP, train_lines

TOLERANCE = 1e-4  # relative, per loss; reassociation over devices is ~1e-6 here
# Absolute, for losses near 0 (the CLUB bound, ~-0.02: 4 devices against 1 moved it by
# 3e-6 at step 6, 1.4e-4 of its value).
ABSOLUTE = 1e-5
# From step 5 on, Adam has turned reassociation noise in near-zero gradients into
# lr-sized steps (ENV_NOTES), and the losses drift apart: on another 2-core CPU (session
# 17) 2 processes against 1 differed at step 6 by up to 2.4e-3 of the CLUB bound and
# 2.1e-3 of the change margin, 1e-6 before. A sharding bug (a half batch, a missing
# all-reduce) moves losses by far more.
LATE_STEP, LATE_TOLERANCE, LATE_ABSOLUTE = 5, 1e-2, 1e-4


def _ok(job):
    workdir, result = job.result()
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-5000:]}"
    return workdir, result


def _assert_close(actual: dict, expected: dict, steps) -> None:
    for step in steps:
        losses = {k: v for k, v in expected[step].items() if k.startswith("loss/")}
        assert losses, f"no losses logged at step {step}"
        late = step >= LATE_STEP
        rel_tol, abs_tol = (LATE_TOLERANCE, LATE_ABSOLUTE) if late else (TOLERANCE, ABSOLUTE)
        for key, value in losses.items():
            got = actual[step][key]
            assert math.isclose(got, value, rel_tol=rel_tol, abs_tol=abs_tol), (
                f"step {step} {key}: {got} vs {value}"
            )


@pytest.mark.slow
def test_two_processes_train_as_one_process(two_process_job, trained_run):
    two, result = _ok(two_process_job)
    one = train_lines(trained_run)  # logged every 2 steps; the 2-process run every step
    assert sorted(train_lines(two)) == list(range(1, 7))
    _assert_close(train_lines(two), one, sorted(one))
    # Process 0 alone writes metrics and reports progress; both say who they are.
    rows = [(m["step"], m["split"]) for m in runs.metrics(two)]
    assert len(rows) == len(set(rows)), "a step was logged twice: two writers"
    output = result.stderr
    assert "process 0 of 2" in output and "process 1 of 2" in output
    assert output.count("step 6/6") == 1
    assert sorted(p.name for p in (two / "checkpoints" / "3" / "data").iterdir()) == [
        "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"
    ]  # fmt: skip


@pytest.mark.slow
def test_two_processes_of_two_devices_train_as_one_process_of_four(
    two_process_job, four_device_job
):
    two, _ = _ok(two_process_job)
    four, result = _ok(four_device_job)
    assert "process 0 of 1" in result.stderr and "4 local of 4 devices" in result.stderr
    assert sorted(train_lines(four)) == list(range(1, 7))
    _assert_close(train_lines(two), train_lines(four), range(1, 7))


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_one_process(resumed_one_device_job, two_process_job):
    two, _ = _ok(two_process_job)
    resumed, result = _ok(resumed_one_device_job)
    assert f"Resuming from the checkpoint of step {RESUME_STEP}" in result.stderr
    assert "another number of processes" in result.stderr  # the data position carried over
    _assert_close(train_lines(resumed), train_lines(two), range(RESUME_STEP + 1, 7))
