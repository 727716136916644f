"""Runs of `python -m sdn_jax.main` (and the other commands) for the end-to-end tests.

Each `*_job` function does the slow part of one test (training subprocesses, signals,
restarts) and returns what the test checks; conftest.py starts them on background
threads when the session begins (`jobs`), so they run while the in-process tests do.
They never assert: a failure to run shows in what they return, and the test says why.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tiny_model import ROOT, main_command, subprocess_env

TIMEOUT_S = 600
# Long enough to interrupt (the first checkpoint commits at step 4 of 24: 20 steps, seconds,
# to send the signal in), samples only at the end. Resumed and fallback runs repeat this
# exact command, so they compile nothing.
END = 24
LONG = (
    f"--config.train.num_steps={END}",
    "--config.train.checkpoint_every_steps=4",
    "--config.train.log_every_steps=4",
    "--config.train.sample_every_steps=1000",
)
RESUME_STEP = 3  # the tiny config checkpoints at steps 3 and 6
# Resumed from the tiny run's step-3 checkpoint doctored to overflow float32 at step 4
# (finite values whose next step is not): the tiny run's programs, from the cache.
OVERFLOW_FLAGS = ("--config.train.log_every_steps=1", "--config.train.checkpoint_every_steps=1")
HUGE_WEIGHTS = 1e30  # "loss": weights x 1e30, so step 4's forward pass overflows
HUGE_MOMENT = 3e38  # "update": the decoder's Adam first moments near float32's maximum,
# so step 4's loss (before the update) is finite and its update is not
WARMUP = ("--config.train.classifier_warmup_steps=2", "--config.train.num_steps=4")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


_live: set[subprocess.Popen] = set()  # the runs in progress, for stop_all
_live_lock = threading.Lock()
_stopping = threading.Event()


def _popen(command, **kwargs) -> subprocess.Popen:
    with _live_lock:
        if _stopping.is_set():
            raise RuntimeError("the test session is ending: no new runs")
        process = subprocess.Popen(command, **kwargs)
        _live.add(process)
    return process


def _wait(process: subprocess.Popen, timeout: float) -> None:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"{process.args} ran over {timeout} s")
    finally:
        with _live_lock:
            _live.discard(process)


def stop_all() -> None:
    """Kills the runs in progress and refuses new ones (the session is ending)."""
    with _live_lock:
        _stopping.set()
        for process in _live:
            process.kill()


def run_command(command, *, env, timeout=TIMEOUT_S) -> Result:
    """subprocess.run(command) from the repository root, output captured (in files: no
    pipe to fill), stoppable by stop_all."""
    with tempfile.TemporaryDirectory() as folder:
        out_path, err_path = Path(folder) / "out", Path(folder) / "err"
        with open(out_path, "w") as out, open(err_path, "w") as err:
            process = _popen(command, cwd=ROOT, env=env, stdout=out, stderr=err)
        _wait(process, timeout)
        return Result(process.returncode, out_path.read_text(), err_path.read_text())


class Runner:
    """Starts `python -m sdn_jax.main` on the tiny config with the session's compilation
    cache and prepared data, and XLA's expensive CPU passes off."""

    def __init__(self, cache_dir: Path, data_dir: Path):
        self.data_dir = data_dir
        self.env = subprocess_env(cache_dir)

    def command(self, workdir, *flags) -> list[str]:
        return main_command(workdir, self.data_dir, *flags)

    def start(self, log_prefix: Path, workdir, *flags, env=None) -> subprocess.Popen:
        """Output goes to files (no pipe to fill while the test polls the workdir)."""
        log_prefix.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{log_prefix}.out", "w") as out, open(f"{log_prefix}.err", "w") as err:
            process = _popen(
                self.command(workdir, *flags),
                cwd=ROOT,
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=err,
            )
        process.log_prefix = log_prefix
        return process

    def finish(self, process: subprocess.Popen) -> Result:
        _wait(process, TIMEOUT_S)
        prefix = process.log_prefix
        return Result(
            process.returncode, Path(f"{prefix}.out").read_text(), Path(f"{prefix}.err").read_text()
        )

    def run(self, log_prefix: Path, workdir, *flags, env=None) -> Result:
        return self.finish(self.start(log_prefix, workdir, *flags, env=env))


_HOLDER = """
import sys
from sdn_jax import workdir_lock
with workdir_lock.held(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def lock_held_elsewhere(workdir):
    """`workdir`'s lock held by another process, as a running `main` holds it (a light one:
    no JAX); yields that process."""
    holder = _popen([sys.executable, "-c", _HOLDER, str(workdir)], cwd=ROOT,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        if holder.stdout.readline() != "locked\n":
            pytest.fail(f"the lock holder for {workdir} did not start")
        yield holder
    finally:
        holder.kill()
        _wait(holder, TIMEOUT_S)


def metrics(workdir: Path) -> list[dict]:
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def train_lines(workdir: Path) -> dict[int, dict]:
    """step -> the last train line logged for it (a resumed run logs some steps again)."""
    return {m["step"]: m for m in metrics(workdir) if m["split"] == "train"}


def committed_steps(workdir: Path) -> list[int]:
    """Checkpoint steps Orbax finished (it renames a step's folder into place when done)."""
    folders = (workdir / "checkpoints").glob("*/commit_success.txt")
    return sorted(int(p.parent.name) for p in folders if p.parent.name.isdigit())


def tree_digest(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its content."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


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


# ------------------------------------------------------------------------------ jobs


def tiny_job(runner: Runner, base: Path) -> tuple[Path, Result]:
    """The tiny config's run as the README shows it (6 steps at 32 px)."""
    return base / "run", runner.run(base / "log", base / "run")


def long_job(runner: Runner, base: Path) -> tuple[Path, Result]:
    """LONG uninterrupted: the reference of the resumed runs."""
    return base / "run", runner.run(base / "log", base / "run", *LONG)


@dataclass
class Interrupted:
    workdir: Path
    stopped: Result  # the run that got the signal
    committed: list[int]  # checkpoints it left
    logged_steps: list[int]  # train lines it logged
    lines: int  # metrics.jsonl lines it left
    restart: Result  # the same command again


def interrupted_job(runner: Runner, base: Path, sig: int) -> Interrupted:
    """LONG, sent `sig` once its first checkpoint committed (in the loop: the signal
    handler is installed), then the same command again."""
    workdir = base / "run"
    process = runner.start(base / "stopped", workdir, *LONG)
    _wait_for(lambda: committed_steps(workdir), process)
    process.send_signal(sig)
    stopped = runner.finish(process)
    committed, lines = committed_steps(workdir), len(metrics(workdir))
    logged = sorted(train_lines(workdir))
    if stopped.returncode not in (130, -signal.SIGKILL):
        return Interrupted(workdir, stopped, committed, logged, lines, Result(-1, "", ""))
    restart = runner.run(base / "restart", workdir, *LONG)
    return Interrupted(workdir, stopped, committed, logged, lines, restart)


def garble_arrays(step_dir: Path) -> None:
    """Overwrites the step's array data (the merged OCDBT data files)."""
    for path in (step_dir / "state" / "d").iterdir():
        path.write_bytes(b"not a checkpoint" * 8)


def corrupt_job(runner: Runner, base: Path, long_run) -> tuple[Path, Result]:
    """A copy of the finished LONG run with its newest checkpoint's arrays garbled, run
    again with the same command (`long_run`: long_job's future)."""
    reference, _ = long_run.result()
    workdir = base / "run"
    shutil.copytree(reference, workdir)
    garble_arrays(workdir / "checkpoints" / str(END))
    return workdir, runner.run(base / "log", workdir, *LONG)


def _copy_as_at_resume_step(finished, base: Path) -> Path:
    """base/run: a copy of a finished job's run (its future) without the checkpoints
    after RESUME_STEP."""
    source, _ = finished.result()
    workdir = base / "run"
    shutil.copytree(source, workdir)
    for step in committed_steps(workdir):
        if step > RESUME_STEP:
            shutil.rmtree(workdir / "checkpoints" / str(step))
    return workdir


def _overflowing(state: dict, kind: str) -> dict:
    if kind == "loss":
        scale = lambda x: x * np.float32(HUGE_WEIGHTS) if x.dtype.kind == "f" else x  # noqa: E731
        return {**state, "params": jax.tree.map(scale, state["params"])}
    first_moment = lambda path, x: (  # noqa: E731
        np.full_like(x, HUGE_MOMENT) if "mu" in jax.tree_util.keystr(path) else x
    )
    opt_state = dict(state["opt_state"])
    opt_state["decoder"] = jax.tree_util.tree_map_with_path(first_moment, opt_state["decoder"])
    return {**state, "opt_state": opt_state}


def overflowing_job(runner: Runner, base: Path, finished, kind: str) -> tuple[Path, Result]:
    """A copy of the tiny run (`finished`: tiny_job's future) as it was after step
    RESUME_STEP, its saved state made to overflow at the next step (`kind` "loss" or
    "update", above), run again with OVERFLOW_FLAGS."""
    workdir = _copy_as_at_resume_step(finished, base)
    lines = (workdir / "metrics.jsonl").read_text().splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line)["step"] <= RESUME_STEP]
    (workdir / "metrics.jsonl").write_text("".join(kept))
    path = workdir / "checkpoints" / str(RESUME_STEP) / "state"
    with ocp.StandardCheckpointer() as checkpointer:
        state = jax.tree.map(np.asarray, checkpointer.restore(path))
        shutil.rmtree(path)
        checkpointer.save(path, _overflowing(state, kind))
    return workdir, runner.run(base / "log", workdir, *OVERFLOW_FLAGS)


def flags_job(runner: Runner, base: Path, *flags) -> tuple[Path, Result]:
    """A fresh run of the tiny config with `flags`."""
    return base / "run", runner.run(base / "log", base / "run", *flags)


@dataclass
class Rerun:
    workdir: Path
    before: dict  # metrics, checkpoints, samples and config.json of the copy before the rerun
    result: Result
    writable: bool = True  # whether the rerun could write outside eval/ (read_only: root can)


def file_identity(path: Path) -> tuple:
    """What changes when a file is written at all (rewritten in place or replaced)."""
    stat = path.stat()
    return path.read_bytes(), stat.st_ino, stat.st_mtime_ns


# The parts of a run made read-only by rerun_job(read_only=True): all but eval/.
_READ_ONLY = {".": 0o555, "checkpoints": 0o555, "samples": 0o555, "tensorboard": 0o555,
              "config.json": 0o444, "metrics.jsonl": 0o444, ".lock": 0o444}  # fmt: skip


def rerun_job(runner: Runner, base: Path, finished, *flags, read_only=False) -> Rerun:
    """A copy of a finished run (`finished`: tiny_job's future) run again with `flags`;
    eval/heldout_summary.json is removed first, so that a written one is a new one.
    `read_only`: the copy is read-only but for eval/ while it runs (no effect as root)."""
    source, _ = finished.result()
    workdir = base / "run"
    shutil.copytree(source, workdir)
    summary = workdir / "eval" / "heldout_summary.json"
    before = dict(
        metrics=metrics(workdir),
        checkpoints=tree_digest(workdir / "checkpoints"),
        samples=tree_digest(workdir / "samples"),
        summary=json.loads(summary.read_text()),
        config=file_identity(workdir / "config.json"),
    )
    summary.unlink()
    modes = {name: (workdir / name).stat().st_mode for name in _READ_ONLY if read_only}
    for name in modes:
        (workdir / name).chmod(_READ_ONLY[name])
    writable = os.access(workdir, os.W_OK)
    try:
        result = runner.run(base / "log", workdir, *flags)
    finally:
        for name, mode in modes.items():
            (workdir / name).chmod(mode)
    return Rerun(workdir, before, result, writable)


# `python -m sdn_jax.benchmark` with torch unimportable, whether installed or not.
_WITHOUT_TORCH = (
    "import runpy, sys; sys.modules['torch'] = None; "
    "runpy.run_module('sdn_jax.benchmark', run_name='__main__', alter_sys=True)"
)


def benchmark_job(base: Path, data_dir: Path, cache_dir: Path, finished=None):
    """`python -m sdn_jax.benchmark` on the tiny config: (the JSON path, the process).
    After the tiny run (`finished`) when given: its train step is in the cache then.
    With --vs-torch and torch made unimportable: the comparison's skip, wherever the
    tests run (a PyTorch step on top would take longer than the rest of the job)."""
    if finished is not None:
        finished.result()
    out = base / "bench.json"
    command = [
        sys.executable, "-c", _WITHOUT_TORCH,
        "input_pipeline", "synth_faces_renderer", "train_step", "--vs-torch",
        "--config", "configs/tiny.py", f"--data_dir={data_dir}", f"--out={out}",
        "--num_batches=5", "--warmup_batches=1",
    ]  # fmt: skip
    return out, run_command(command, env=subprocess_env(cache_dir))


def sharded_job() -> Result:
    """tests/test_steps.py as a script, with 8 fake CPU devices (XLA_FLAGS must be set
    before JAX starts): one JSON line of the sharded runs' differences."""
    env = subprocess_env()
    env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} --xla_force_host_platform_device_count=8"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env["PYTHONPATH"]])
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # its programs are its own
    return run_command([sys.executable, str(ROOT / "tests" / "test_steps.py")], env=env)


PROBE_ARGS = ("--people", "10", "--train_photos", "8", "--test_photos", "16", "--image_size",
              "32", "--steps", "100", "--linear_steps", "60")  # fmt: skip


def identity_probe_job(base: Path) -> tuple[Result, Path]:
    """`python -m tools.identity_probe` on a tiny world. It trains for real (a CNN, 100
    steps), so XLA's optimisations stay on: ~3x faster here than without them."""
    out = base / "probe.json"
    command = [sys.executable, "-m", "tools.identity_probe", *PROBE_ARGS, "--out", str(out)]
    return run_command(command, env=subprocess_env(fast_compile=False)), out


# --------------------------------------------------------------- several processes

MULTI = ("--config.train.log_every_steps=1",)  # every step's losses; the tiny run's programs
_PORT_TAKEN = re.compile(r"failed to add port|address already in use", re.IGNORECASE)


def _devices_env(runner: Runner, count: int) -> dict:
    flags = runner.env["XLA_FLAGS"]
    return {"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={count}"}


def two_process_job(runner: Runner, base: Path, attempts: int = 2) -> tuple[Path, Result]:
    """The tiny run as 2 processes x 2 CPU devices through launch/local_multiprocess.sh
    (a free loopback port each attempt; another program may take it first: try again)."""
    workdir = base / "run"
    for _ in range(attempts):
        shutil.rmtree(workdir, ignore_errors=True)
        command = ["bash", "launch/local_multiprocess.sh", "2",
                   *runner.command(workdir, *MULTI)[3:]]  # fmt: skip
        env = {**runner.env, "DEVICES_PER_PROCESS": "2", "PYTHON": sys.executable}
        result = run_command(command, env=env)
        if result.returncode == 0 or not _PORT_TAKEN.search(result.stderr):
            break
    return workdir, result


def four_device_job(runner: Runner, base: Path) -> tuple[Path, Result]:
    """The tiny run as 1 process x 4 CPU devices: two_process_job's reference."""
    workdir = base / "run"
    return workdir, runner.run(base / "log", workdir, *MULTI, env=_devices_env(runner, 4))


def resumed_elsewhere_job(runner: Runner, base: Path, two_process, devices: int, after=None):
    """A copy of two_process_job's run as it was after step RESUME_STEP's checkpoint, run
    again in 1 process with `devices` devices; `after` (a job's future) first, so that its
    programs are in the cache."""
    if after is not None:
        after.result()
    workdir = _copy_as_at_resume_step(two_process, base)
    env = _devices_env(runner, devices) if devices > 1 else None
    return workdir, runner.run(base / "log", workdir, *MULTI, env=env)
