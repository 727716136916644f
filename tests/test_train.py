"""The training loop end to end, through `python -m sdn_jax.main` in subprocesses.

Covers the workdir a run leaves (INTERFACES.md), not retraining a finished run, the
classifier warm-up handing over to full steps, `--mode evaluate`, exact resumption after
SIGKILL and after SIGTERM, skipping a corrupt newest checkpoint, stopping on a
non-finite loss or state without checkpointing it, and bad input.

Cost control (compiles dominate on a CPU): the runs are tests/runs.py's jobs, started on
background threads when the session begins (conftest.py) and checked here; they share the
session's persistent compilation cache and its prepared tiny dataset, so a run whose
programs were compiled before only pays for start-up; the session's tiny run
(`trained_run`) is the run whose workdir is checked here; and XLA's CPU backend runs
without its expensive optimisations, which halves cold compiles of these tiny models
while running them a little slower.
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import runs
from PIL import Image
from runs import END, committed_steps, file_identity, metrics, train_lines, tree_digest
from tiny_model import tiny_config

from sdn_jax import train, workdir_lock

ROOT = Path(__file__).resolve().parents[1]


def _ok(result: runs.Result) -> runs.Result:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-5000:]}"
    return result


def _losses(line: dict) -> dict[str, float]:
    return {k: v for k, v in line.items() if k.startswith("loss/")}


def _assert_same_losses(actual: dict, expected: dict) -> None:
    assert _losses(actual).keys() == _losses(expected).keys()
    for key, value in _losses(expected).items():
        assert math.isclose(actual[key], value, rel_tol=1e-6, abs_tol=1e-12), (
            f"step {expected['step']} {key}: {actual[key]} != {value} (uninterrupted)"
        )


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


def _error_line(stderr: str) -> str:
    """The last line of stderr: main.py's one-line reason for a non-zero exit."""
    lines = stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[-1]


# --- 1. A whole run and its workdir ------------------------------------------------------


def test_tiny_run_leaves_the_documented_workdir(trained_run_result):
    workdir, result = trained_run_result
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["num_steps"] == 6 and config["data"]["image_size"] == 32
    assert config["model"]["key_attributes"] == ["Smiling", "Eyeglasses"]
    cache = os.environ["JAX_COMPILATION_CACHE_DIR"]  # the session's, which the run was given
    assert f"Compiled programs are cached in {cache}" in result.stderr

    assert committed_steps(workdir) == [3, 6]  # checkpoint_every_steps 3, and the last step

    lines = metrics(workdir)
    train = [m for m in lines if m["split"] == "train"]
    assert [m["step"] for m in train] == [2, 4, 6]  # log_every_steps 2
    for line in train:
        for key in ("loss/g_total", "loss/d_total", "perf/steps_per_s", "perf/images_per_s"):
            assert key in line, (key, line)
        # The steps alone are never slower than the loop with its logs, samples and saves.
        assert line["perf/steps_per_s_excluding_bookkeeping"] >= line["perf/steps_per_s"]
        values = {k: v for k, v in line.items() if k not in ("step", "split")}
        assert all(isinstance(v, float) and math.isfinite(v) for v in values.values()), line
    evals = [m for m in lines if m["split"] == "eval"]
    assert [m["step"] for m in evals] == [6]

    # image_size 32 enlarged 4x (nearest neighbour), train.num_samples, the grid's gap
    size, rows, gap = 4 * 32, 4, 2
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


@pytest.mark.slow
def test_a_finished_run_is_not_retrained(rerun_finished_job):
    rerun = rerun_finished_job.result()
    workdir, before, again = rerun.workdir, rerun.before, _ok(rerun.result)
    after = metrics(workdir)
    assert after[: len(before["metrics"])] == before["metrics"]
    new = after[len(before["metrics"]) :]
    assert [(m["split"], m["step"]) for m in new] == [("eval", 6)]  # evaluated again, only
    assert "training already finished" in again.stderr
    assert "First step" not in again.stderr  # no train step compiled or run
    assert "Training steps" not in again.stderr
    assert committed_steps(workdir) == [3, 6]
    # Nothing was trained, saved or drawn again: the checkpoints and samples are as they were,
    # and config.json, whose content the same config would not change, was not written.
    assert file_identity(workdir / "config.json") == before["config"]
    assert tree_digest(workdir / "checkpoints") == before["checkpoints"]
    assert tree_digest(workdir / "samples") == before["samples"]
    # The evaluation's figures are the finished run's own (the same weights, the same faces).
    assert new[0] == [m for m in before["metrics"] if m["split"] == "eval"][-1]
    summary = json.loads((workdir / "eval" / "heldout_summary.json").read_text())
    assert summary == before["summary"]


@pytest.mark.slow
def test_mode_evaluate_rewrites_the_heldout_summary(evaluate_mode_job):
    """`--mode evaluate` on a copy of the tiny run (full_report off), read-only but for
    eval/: exit 0, no training, eval/heldout_summary.json (removed first) written again for
    the newest checkpoint, config.json not written (issue 18: it was, and failed)."""
    rerun = evaluate_mode_job.result()
    workdir, before, result = rerun.workdir, rerun.before, _ok(rerun.result)
    summary = json.loads((workdir / "eval" / "heldout_summary.json").read_text())
    assert summary == before["summary"]  # the same checkpoint (step 6) and faces
    assert summary["step"] == 6 and summary["split"] == "test" and summary["num_images"] > 0
    assert "First step" not in result.stderr and "Training steps" not in result.stderr
    assert "training already finished" not in result.stderr  # not the training path
    assert tree_digest(workdir / "checkpoints") == before["checkpoints"]
    assert not (workdir / "eval" / "report.json").exists()  # tiny: full_report False
    assert file_identity(workdir / "config.json") == before["config"]
    evals = [m for m in metrics(workdir) if m["split"] == "eval"]
    if rerun.writable:  # root: read-only modes do not bind it
        assert [m["step"] for m in evals] == [6, 6]
    else:  # metrics.jsonl cannot take the eval line: said once, and the run goes on
        assert [m["step"] for m in evals] == [6]
        assert "Cannot write " in result.stderr and "the figures are only in eval/" in result.stderr


@pytest.mark.slow
def test_mode_evaluate_without_a_checkpoint_is_an_error(runner, tmp_path):
    result = runner.run(tmp_path / "log", tmp_path / "run", "--mode", "evaluate")
    assert result.returncode == 1
    line = _error_line(result.stderr)
    assert line.startswith("error: No checkpoint to evaluate in "), line


@pytest.mark.slow
def test_classifier_warmup_hands_over_to_full_steps(warmup_job):
    """Two C-only warm-up steps, then two full steps, in one run: the log shows both
    phases and the hand-over, and the run finishes with every network's losses."""
    workdir, result = warmup_job.result()
    _ok(result)
    train = train_lines(workdir)
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
    assert committed_steps(workdir) == [3, 4]
    assert int(_checkpoint_state(workdir, 4)["step"]) == 4


# --- 2, 3, 5. Resuming ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_run(long_run_job) -> Path:
    """The uninterrupted reference for the resumed runs."""
    workdir, result = long_run_job.result()
    _ok(result)
    assert committed_steps(workdir) == [END - 8, END - 4, END]  # train.max_checkpoints = 3
    assert sorted(train_lines(workdir)) == list(range(4, END + 1, 4))
    return workdir


def _assert_resumed_exactly(workdir: Path, reference: Path, resumed_from: int, restart) -> None:
    """The restart resumed at `resumed_from` and then matched the uninterrupted run."""
    assert f"Resuming from the checkpoint of step {resumed_from}" in restart.stderr
    expected, actual = train_lines(reference), train_lines(workdir)
    later = [step for step in expected if step > resumed_from]
    assert END in later
    for step in later:
        _assert_same_losses(actual[step], expected[step])
    _assert_same_state(workdir, reference, END)


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(long_run, sigkill_job):
    run = sigkill_job.result()
    assert run.stopped.returncode == -signal.SIGKILL, run.stopped.stderr[-3000:]
    steps = run.committed
    assert steps and steps[-1] < END, f"not interrupted before the end: {steps}"
    assert max(run.logged_steps, default=0) < END
    restart = _ok(run.restart)
    # Lines the restart appended are all after the step it resumed from.
    assert all(m["step"] > steps[-1] for m in metrics(run.workdir)[run.lines :])
    _assert_resumed_exactly(run.workdir, long_run, steps[-1], restart)


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_is_skipped(long_run, corrupt_job):
    workdir, rerun = corrupt_job.result()
    # The same command: training is not finished any more, as its last step cannot be restored.
    _ok(rerun)
    assert f"Checkpoint step {END}" in rerun.stderr and "cannot be restored" in rerun.stderr
    assert (workdir / "checkpoints" / f"{END}.invalid").is_dir()  # set aside, not deleted
    assert committed_steps(workdir) == [END - 8, END - 4, END]
    _assert_resumed_exactly(workdir, long_run, END - 4, rerun)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_restart_continues(long_run, sigterm_job):
    run = sigterm_job.result()
    stopped = run.stopped
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    line = _error_line(stopped.stderr)
    assert line.startswith("Stopped: SIGTERM at step ") and "checkpoint saved" in line, line
    step = int(line.removeprefix("Stopped: SIGTERM at step ").split(":")[0])
    assert step < END, "the run ended before the signal"
    assert run.committed[-1] == step  # saved where it stopped, and complete
    assert run.logged_steps[-1] == step  # its metrics were logged too
    restart = _ok(run.restart)
    _assert_resumed_exactly(run.workdir, long_run, step, restart)


# --- 4. Non-finite values ------------------------------------------------------------------


def _assert_stopped_on_nonfinite(workdir: Path, result, bad_step: int, good_step: int):
    assert result.returncode == 1, result.stderr[-3000:]
    line = _error_line(result.stderr)
    assert re.match(rf"error: Non-finite .*\b(at|after) step {bad_step}\b", line), line
    assert line.endswith(f"the last good checkpoint is step {good_step}."), line
    assert committed_steps(workdir) == [good_step]
    assert not [p for p in (workdir / "checkpoints").iterdir() if p.name != str(good_step)]
    state = _checkpoint_state(workdir, good_step)
    assert int(state["step"]) == good_step
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        assert np.isfinite(leaf).all(), jax.tree_util.keystr(path)


@pytest.mark.slow
def test_a_nonfinite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(nonfinite_loss_job):
    # runs.overflowing_job "loss": resumed at step 3 with weights that overflow at step 4.
    workdir, result = nonfinite_loss_job.result()
    _assert_stopped_on_nonfinite(workdir, result, bad_step=4, good_step=3)
    assert "Non-finite loss at step 4" in result.stderr
    train = [m for m in metrics(workdir) if m["split"] == "train"]
    assert [m["step"] for m in train] == [2, 4]  # the tiny run's step 2, then the resumed run's
    assert train[-1]["loss/g_total"] in ("nan", "inf", "-inf")  # JSON-safe spelling
    assert math.isfinite(train[0]["loss/g_total"])


@pytest.mark.slow
def test_a_nonfinite_update_after_a_finite_loss_is_not_checkpointed(nonfinite_update_job):
    # runs.overflowing_job "update": resumed at step 3 with Adam moments that overflow
    # step 4's update of the decoder.
    workdir, result = nonfinite_update_job.result()
    _assert_stopped_on_nonfinite(workdir, result, bad_step=4, good_step=3)
    assert "Non-finite parameters or optimizer state after step 4" in result.stderr
    assert "'decoder'" in result.stderr


# --- 6. Bad input --------------------------------------------------------------------------


def test_a_missing_workdir_is_a_usage_error(runner):
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


def test_a_bad_config_value_is_one_line_naming_the_field(runner, tmp_path):
    """A SettingsError stops the run before anything is built or written."""
    result = runner.run(tmp_path / "log", tmp_path / "run", "--config.train.ema_decay=1.5")
    assert result.returncode == 2  # nothing was done
    line = _error_line(result.stderr)
    assert line == "error: train.ema_decay must be in [0, 1), got 1.5", line
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_a_second_writer_and_other_model_or_key_settings_are_refused(runner, trained_run, tmp_path):
    """Issue 18 on a copy of the finished tiny run: a second start while another process
    holds the workdir (both wrote it, and exited 0), then `main` with the key attributes
    reordered (it exited 0, and keys changed meaning) and other password bits (a traceback,
    then an unloadable run): refused with one line, exit 2, before writing anything."""
    workdir = tmp_path / "run"
    shutil.copytree(trained_run, workdir)
    before = tree_digest(workdir)
    config = tiny_config(**{"data.data_dir": str(runner.data_dir)})
    with runs.lock_held_elsewhere(workdir) as holder:  # in-process: the CLI costs seconds
        busy = rf"^{re.escape(str(workdir))} is in use by another sdn_jax.main \(pid {holder.pid}, "
        for start in (train.train_and_evaluate, train.evaluate_only):
            with pytest.raises(workdir_lock.WorkdirBusy, match=busy):
                start(config, str(workdir))
    changed = runner.run(
        tmp_path / "changed",
        workdir,
        "--config.model.key_attributes=('Eyeglasses', 'Smiling')",
        "--config.model.password_bits=24",
    )
    assert changed.returncode == 2, changed.stderr[-3000:]
    line = _error_line(changed.stderr)
    expected = (
        f"error: {workdir}'s checkpoints were made with other model, key or data settings: "
        'model.key_attributes ["Smiling", "Eyeglasses"] -> ["Eyeglasses", "Smiling"]; '
        "model.password_bits 16 -> 24 "
    )
    assert line.startswith(expected), line
    assert tree_digest(workdir) == before  # config.json byte for byte, and all the rest
