"""The training loop end to end, through `python -m sdn_jax.main` in subprocesses.

Covers the workdir a run leaves (INTERFACES.md), not retraining a finished run, the
classifier warm-up handing over to full steps, `--mode evaluate`, exact resumption after
SIGKILL and after SIGTERM, skipping a corrupt newest checkpoint, stopping on a
non-finite loss or state without checkpointing it, and bad input.

Cost control (compiles dominate on a CPU): every subprocess shares the session's JAX
persistent compilation cache and its prepared tiny dataset (conftest.py), so a run whose
programs were compiled before only pays for start-up; the session's tiny run
(`trained_run`) is the run whose workdir is checked here; and XLA's CPU backend runs
without its expensive optimisations (`XLA_FLAGS`), which halves cold compiles of these
tiny models while running them a little slower.
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image
from tiny_model import main_command, subprocess_env

ROOT = Path(__file__).resolve().parents[1]
# Long enough to interrupt (the first checkpoint commits at step 4 of 40), samples only at
# the end. Resumed and fallback runs repeat this exact command, so they compile nothing.
END = 40
LONG = (
    f"--config.train.num_steps={END}",
    "--config.train.checkpoint_every_steps=4",
    "--config.train.log_every_steps=4",
    "--config.train.sample_every_steps=1000",
)
TIMEOUT_S = 600


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Runner:
    """Starts `python -m sdn_jax.main` with the shared cache, data folder and XLA flags."""

    def __init__(self, cache_dir: Path, data_dir: Path):
        self.data_dir = data_dir
        self.env = subprocess_env(cache_dir)

    def command(self, workdir, *flags) -> list[str]:
        return main_command(workdir, self.data_dir, *flags)

    def start(self, log_prefix: Path, workdir, *flags, env=None) -> subprocess.Popen:
        """Output goes to files (no pipe to fill while the test polls the workdir)."""
        log_prefix.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{log_prefix}.out", "w") as out, open(f"{log_prefix}.err", "w") as err:
            process = subprocess.Popen(
                self.command(workdir, *flags),
                cwd=ROOT,
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=err,
            )
        process.log_prefix = log_prefix
        return process

    def finish(self, process: subprocess.Popen) -> Result:
        try:
            process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"{process.args} ran over {TIMEOUT_S} s")
        prefix = process.log_prefix
        return Result(
            process.returncode, Path(f"{prefix}.out").read_text(), Path(f"{prefix}.err").read_text()
        )

    def run(self, log_prefix: Path, workdir, *flags, env=None) -> Result:
        return self.finish(self.start(log_prefix, workdir, *flags, env=env))


@pytest.fixture(scope="module")
def runner(jax_cache_dir, tiny_data_dir) -> Runner:
    return Runner(jax_cache_dir, tiny_data_dir)


def _ok(result: Result) -> Result:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-5000:]}"
    return result


def _metrics(workdir: Path) -> list[dict]:
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def _train_lines(workdir: Path) -> dict[int, dict]:
    """step -> the last train line logged for it (a resumed run logs some steps again)."""
    return {m["step"]: m for m in _metrics(workdir) if m["split"] == "train"}


def _losses(line: dict) -> dict[str, float]:
    return {k: v for k, v in line.items() if k.startswith("loss/")}


def _assert_same_losses(actual: dict, expected: dict) -> None:
    assert _losses(actual).keys() == _losses(expected).keys()
    for key, value in _losses(expected).items():
        assert math.isclose(actual[key], value, rel_tol=1e-6, abs_tol=1e-12), (
            f"step {expected['step']} {key}: {actual[key]} != {value} (uninterrupted)"
        )


def _committed_steps(workdir: Path) -> list[int]:
    """Checkpoint steps Orbax finished (it renames a step's folder into place when done)."""
    folders = (workdir / "checkpoints").glob("*/commit_success.txt")
    return sorted(int(p.parent.name) for p in folders if p.parent.name.isdigit())


def _checkpoint_state(workdir: Path, step: int) -> dict:
    """A step's saved state as nested dicts of numpy arrays (no restore target needed)."""
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(workdir / "checkpoints" / str(step) / "state")
    return jax.tree.map(np.asarray, state)


def _assert_same_state(workdir: Path, other: Path, step: int) -> None:
    ours, theirs = _checkpoint_state(workdir, step), _checkpoint_state(other, step)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(theirs)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def _wait_for(condition, process: subprocess.Popen, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            err = Path(f"{process.log_prefix}.err").read_text()[-3000:]
            pytest.fail(
                f"the run ended (exit {process.returncode}) before it could be stopped:\n{err}"
            )
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("timed out waiting for the run")
        time.sleep(0.02)


def _error_line(stderr: str) -> str:
    """The last line of stderr: main.py's one-line reason for a non-zero exit."""
    lines = stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[-1]


# --- 1. A whole run and its workdir ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(trained_run_result):
    """The session's `python -m sdn_jax.main --config configs/tiny.py --workdir W` (6 steps
    at 32 px): its workdir and its result. Read only: tests that run it again copy it."""
    workdir, done = trained_run_result
    return workdir, Result(done.returncode, done.stdout, done.stderr)


def test_tiny_run_leaves_the_documented_workdir(tiny_run):
    workdir, result = tiny_run
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["num_steps"] == 6 and config["data"]["image_size"] == 32
    assert config["model"]["key_attributes"] == ["Smiling", "Eyeglasses"]

    assert _committed_steps(workdir) == [3, 6]  # checkpoint_every_steps 3, and the last step

    metrics = _metrics(workdir)
    train = [m for m in metrics if m["split"] == "train"]
    assert [m["step"] for m in train] == [2, 4, 6]  # log_every_steps 2
    for line in train:
        for key in ("loss/g_total", "loss/d_total", "perf/steps_per_s", "perf/images_per_s"):
            assert key in line, (key, line)
        values = {k: v for k, v in line.items() if k not in ("step", "split")}
        assert all(isinstance(v, float) and math.isfinite(v) for v in values.values()), line
    evals = [m for m in metrics if m["split"] == "eval"]
    assert [m["step"] for m in evals] == [6]

    size, rows, gap = 32, 4, 2  # image_size, train.num_samples, the grid's gap
    expected = (5 * size + 4 * gap, rows * size + (rows - 1) * gap)  # (width, height)
    assert sorted(p.name for p in (workdir / "samples").iterdir()) == [
        "step_000003.png",
        "step_000006.png",
    ]
    for png in (workdir / "samples").iterdir():
        with Image.open(png) as image:
            assert image.size == expected and image.mode == "RGB"

    assert list(workdir.rglob("events.out.tfevents.*")), "no TensorBoard event file"
    summary = json.loads((workdir / "eval" / "heldout_summary.json").read_text())
    assert summary["step"] == 6 and summary["num_images"] > 0
    assert "First step (compile + run)" in result.stderr


def _tree_digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_finished_run_is_not_retrained(runner, tiny_run, tmp_path):
    finished, _ = tiny_run
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    before = _metrics(workdir)
    checkpoints = _tree_digest(workdir / "checkpoints")
    samples = _tree_digest(workdir / "samples")
    again = _ok(runner.run(tmp_path / "log", workdir))
    after = _metrics(workdir)
    assert after[: len(before)] == before
    new = after[len(before) :]
    assert [(m["split"], m["step"]) for m in new] == [("eval", 6)]  # evaluated again, only
    assert "training already finished" in again.stderr
    assert "First step" not in again.stderr  # no train step compiled or run
    assert "Training steps" not in again.stderr
    assert _committed_steps(workdir) == [3, 6]
    # Nothing was trained, saved or drawn again: the checkpoints and samples are as they were.
    assert _tree_digest(workdir / "checkpoints") == checkpoints
    assert _tree_digest(workdir / "samples") == samples
    # The evaluation's figures are the finished run's own (the same weights, the same faces).
    evals = [m for m in after if m["split"] == "eval"]
    assert evals[-1] == evals[0]


@pytest.mark.slow
def test_mode_evaluate_rewrites_the_heldout_summary(runner, tiny_run, tmp_path):
    """`--mode evaluate` on a copy of the tiny run (full_report off): exit 0, no training,
    eval/heldout_summary.json written again for the newest checkpoint."""
    finished, _ = tiny_run
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    summary_path = workdir / "eval" / "heldout_summary.json"
    original = json.loads(summary_path.read_text())
    summary_path.unlink()
    checkpoints = _tree_digest(workdir / "checkpoints")
    result = _ok(runner.run(tmp_path / "log", workdir, "--mode", "evaluate"))
    summary = json.loads(summary_path.read_text())
    assert summary == original  # the same checkpoint (step 6) and faces: the same figures
    assert summary["step"] == 6 and summary["split"] == "test" and summary["num_images"] > 0
    assert "First step" not in result.stderr and "Training steps" not in result.stderr
    assert _tree_digest(workdir / "checkpoints") == checkpoints
    assert not (workdir / "eval" / "report.json").exists()  # tiny: full_report False
    evals = [m for m in _metrics(workdir) if m["split"] == "eval"]
    assert [m["step"] for m in evals] == [6, 6]


@pytest.mark.slow
def test_mode_evaluate_without_a_checkpoint_is_an_error(runner, tmp_path):
    result = runner.run(tmp_path / "log", tmp_path / "run", "--mode", "evaluate")
    assert result.returncode == 1
    line = _error_line(result.stderr)
    assert line.startswith("error: No checkpoint to evaluate in "), line


@pytest.mark.slow
def test_classifier_warmup_hands_over_to_full_steps(runner, tmp_path):
    """Two C-only warm-up steps, then two full steps, in one run: the log shows both
    phases and the hand-over, and the run finishes with every network's losses."""
    workdir = tmp_path / "run"
    result = _ok(
        runner.run(
            tmp_path / "log",
            workdir,
            "--config.train.classifier_warmup_steps=2",
            "--config.train.num_steps=4",
        )
    )
    train = _train_lines(workdir)
    assert sorted(train) == [2, 4]  # log_every_steps 2
    warmup, full = _losses(train[2]), _losses(train[4])
    # Step 2 is C's warm-up: C's real-image losses only.
    assert "loss/c_total" in warmup and "loss/c_contrastive" in warmup
    for key in ("loss/g_total", "loss/d_total", "loss/recovery", "loss/club_fit"):
        assert key not in warmup, key
        assert key in full, key
    assert "loss/c_adversarial" in full and "loss/c_adversarial" not in warmup
    assert all(math.isfinite(v) for v in (*warmup.values(), *full.values()))
    assert "Classifier warm-up done; training every network" in result.stderr
    assert "(C warm-up)" in result.stderr
    assert _committed_steps(workdir) == [3, 4]
    state = _checkpoint_state(workdir, 4)
    assert int(state["step"]) == 4


# --- 2, 3, 5. Resuming ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_run(runner, tmp_path_factory) -> Path:
    """The uninterrupted reference for the resumed runs."""
    base = tmp_path_factory.mktemp("long")
    _ok(runner.run(base / "log", base / "run", *LONG))
    workdir = base / "run"
    assert _committed_steps(workdir) == [END - 8, END - 4, END]  # train.max_checkpoints = 3
    assert sorted(_train_lines(workdir)) == list(range(4, END + 1, 4))
    return workdir


def _assert_resumed_exactly(workdir: Path, reference: Path, resumed_from: int, restart) -> None:
    """The restart resumed at `resumed_from` and then matched the uninterrupted run."""
    assert f"Resuming from the checkpoint of step {resumed_from}" in restart.stderr
    expected, actual = _train_lines(reference), _train_lines(workdir)
    later = [step for step in expected if step > resumed_from]
    assert END in later
    for step in later:
        _assert_same_losses(actual[step], expected[step])
    _assert_same_state(workdir, reference, END)


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(runner, long_run, tmp_path):
    workdir = tmp_path / "run"
    process = runner.start(tmp_path / "killed", workdir, *LONG)
    _wait_for(lambda: _committed_steps(workdir), process)
    os.kill(process.pid, signal.SIGKILL)
    killed = runner.finish(process)
    assert killed.returncode == -signal.SIGKILL
    steps = _committed_steps(workdir)
    assert steps and steps[-1] < END, f"not interrupted before the end: {steps}"
    assert max(_train_lines(workdir), default=0) < END
    logged = len(_metrics(workdir))

    restart = _ok(runner.run(tmp_path / "restart", workdir, *LONG))
    # Lines the restart appended are all after the step it resumed from.
    assert all(m["step"] > steps[-1] for m in _metrics(workdir)[logged:])
    _assert_resumed_exactly(workdir, long_run, steps[-1], restart)


def _garble_arrays(step_dir: Path) -> None:
    """Overwrites the step's array data (the merged OCDBT data files)."""
    files = list((step_dir / "state" / "d").iterdir())
    assert files
    for path in files:
        path.write_bytes(b"not a checkpoint" * 8)


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_is_skipped(runner, long_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(long_run, workdir)
    _garble_arrays(workdir / "checkpoints" / str(END))
    # The same command: training is not finished any more, as its last step cannot be restored.
    rerun = _ok(runner.run(tmp_path / "log", workdir, *LONG))
    assert f"Checkpoint step {END}" in rerun.stderr and "cannot be restored" in rerun.stderr
    assert (workdir / "checkpoints" / f"{END}.invalid").is_dir()  # set aside, not deleted
    assert _committed_steps(workdir) == [END - 8, END - 4, END]
    _assert_resumed_exactly(workdir, long_run, END - 4, rerun)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_restart_continues(runner, long_run, tmp_path):
    workdir = tmp_path / "run"
    process = runner.start(tmp_path / "stopped", workdir, *LONG)
    _wait_for(lambda: _committed_steps(workdir), process)  # in the loop: handler installed
    process.send_signal(signal.SIGTERM)
    stopped = runner.finish(process)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    line = _error_line(stopped.stderr)
    assert line.startswith("Stopped: SIGTERM at step ") and "checkpoint saved" in line, line
    step = int(line.removeprefix("Stopped: SIGTERM at step ").split(":")[0])
    assert step < END, "the run ended before the signal"
    assert _committed_steps(workdir)[-1] == step  # saved where it stopped, and complete
    assert max(_train_lines(workdir)) == step  # its metrics were logged too

    restart = _ok(runner.run(tmp_path / "restart", workdir, *LONG))
    _assert_resumed_exactly(workdir, long_run, step, restart)


# --- 4. Non-finite values ------------------------------------------------------------------


def _assert_stopped_on_nonfinite(workdir: Path, result: Result, bad_step: int, good_step: int):
    assert result.returncode == 1, result.stderr[-3000:]
    line = _error_line(result.stderr)
    assert re.match(rf"error: Non-finite .*\b(at|after) step {bad_step}\b", line), line
    assert line.endswith(f"the last good checkpoint is step {good_step}."), line
    assert _committed_steps(workdir) == [good_step]
    assert not [p for p in (workdir / "checkpoints").iterdir() if p.name != str(good_step)]
    state = _checkpoint_state(workdir, good_step)
    assert int(state["step"]) == good_step
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        assert np.isfinite(leaf).all(), jax.tree_util.keystr(path)


@pytest.mark.slow
def test_a_nonfinite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(runner, tmp_path):
    # The warm-up gives step 1 a learning rate of 0 and step 2 one of 5e29: Adam's first
    # update moves every weight by about that much, so step 3's forward pass overflows.
    workdir = tmp_path / "run"
    result = runner.run(
        tmp_path / "log",
        workdir,
        "--config.optim.learning_rate=1e30",
        "--config.train.log_every_steps=1",
        "--config.train.checkpoint_every_steps=2",
    )
    _assert_stopped_on_nonfinite(workdir, result, bad_step=3, good_step=2)
    assert "Non-finite loss at step 3" in result.stderr
    train = [m for m in _metrics(workdir) if m["split"] == "train"]
    assert [m["step"] for m in train] == [1, 2, 3]
    assert train[-1]["loss/g_total"] in ("nan", "inf", "-inf")  # JSON-safe spelling
    assert math.isfinite(train[1]["loss/g_total"])


@pytest.mark.slow
def test_a_nonfinite_update_after_a_finite_loss_is_not_checkpointed(runner, tmp_path):
    # Step 2's generator learning rate overflows to inf (5e37 x 1e10 in float32): its loss,
    # computed before the update, is finite, but the state it would save is not.
    workdir = tmp_path / "run"
    result = runner.run(
        tmp_path / "log",
        workdir,
        "--config.optim.learning_rate=1e38",
        "--config.optim.generator_lr_scale=1e10",
        "--config.train.log_every_steps=1",
        "--config.train.checkpoint_every_steps=1",
    )
    _assert_stopped_on_nonfinite(workdir, result, bad_step=2, good_step=1)
    assert "Non-finite parameters or optimizer state after step 2" in result.stderr


# --- 6. Bad input --------------------------------------------------------------------------


def test_a_missing_workdir_is_a_usage_error(runner, tmp_path):
    result = subprocess.run(
        runner.command(None), cwd=ROOT, env=runner.env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "--workdir" in result.stderr and "required" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_batch_that_the_devices_cannot_split_is_refused(runner, tmp_path):
    xla_flags = f"{runner.env['XLA_FLAGS']} --xla_force_host_platform_device_count=3"
    result = runner.run(
        tmp_path / "log",
        tmp_path / "run",
        "--config.train.global_batch_size=8",
        env={"XLA_FLAGS": xla_flags},
    )
    assert result.returncode == 1
    line = _error_line(result.stderr)
    assert line.startswith("error: ") and "global_batch_size" in line and "3" in line, line
    assert not (tmp_path / "run" / "checkpoints").exists()
