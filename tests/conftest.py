"""Test-wide setup and the session's shared fixtures.

JAX runs on the CPU with XLA's expensive optimisations off (they dominate compile time and
change nothing the tests check) and a persistent compilation cache for the session, shared
with every `python -m sdn_jax.*` subprocess: a program compiled once, in any process, is
loaded after that. absl flags are parsed (grain needs them).

Shared fixtures: the tiny config's settings, networks and params; its dataset, prepared
once; the tiny run trained once (`trained_run`). The end-to-end runs (training
subprocesses, the 8-device sharding run) start on background threads when the session
begins (`jobs`) and run while the in-process tests do; a test waits for its run's result.
"""

import concurrent.futures
import functools
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `configs` is imported as a package from the repo root.
    sys.path.insert(0, str(ROOT))

# Before JAX is imported anywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_FAST_XLA = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    " --xla_cpu_use_fusion_emitters=false"
)
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_XLA}".strip()
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="sdn_jax_tests_xla_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()


import pytest  # noqa: E402
import runs  # noqa: E402

# The tests of these modules that wait for background runs go last (in this order), so
# that the main thread runs every in-process test first while those runs take the other
# core.
_LAST = (
    "test_steps.py",
    "test_identity_probe.py",
    "test_attacker.py",
    "test_inference.py",
    "test_anonymize_cli.py",
    "test_anonymize_cli_errors.py",
    "test_export.py",
    "test_latent.py",
    "test_evaluate.py",
    "test_security.py",
    "test_benchmark.py",
    "test_train.py",
    "test_multiprocess.py",
    "test_precision.py",
)


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        # A test that waits for no background run goes first, wherever it is written:
        # in-process work done while the runs go, not after the last of them.
        waits = any(name in _JOBS for name in item.fixturenames)
        return _LAST.index(item.path.name) + 1 if waits and item.path.name in _LAST else 0

    items.sort(key=rank)  # stable: each module's tests stay together and in order


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


# ------------------------------------------------------------------- the tiny model


# The tiny config's settings, networks and initial params, shared by the model and step
# tests (built once per session: compiles are the slow part of these tests).
@pytest.fixture(scope="session")
def tiny():
    from tiny_model import tiny_setup

    return tiny_setup()


@pytest.fixture(scope="session")
def settings(tiny):
    return tiny[0]


@pytest.fixture(scope="session")
def networks(tiny):
    return tiny[1]


@pytest.fixture(scope="session")
def params(tiny):
    return tiny[2]


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """The tiny config's synthetic dataset, prepared once for the session: pass it as
    `--config.data.data_dir` (or a Data section's data_dir). Tests must not write to it."""
    from tiny_model import tiny_settings

    import sdn_jax.data
    from sdn_jax.data import builders

    data_dir = tmp_path_factory.mktemp("tfds")
    data = tiny_settings().data
    builders.prepare(data.name, data.image_size, data_dir, **sdn_jax.data.dataset_options(data))
    return data_dir


@pytest.fixture(scope="session")
def trained_attacker(tiny_data_dir, tmp_path_factory):
    """(workdir, attacker, log): get_attacker trained the small attacker of
    tiny_model.evaluation_settings into a fresh workdir's cache (eval/attacker/), once
    for the session. Read only: tests copy the cache into a workdir of their own."""
    from tiny_model import evaluation_settings, logged

    from sdn_jax.evaluation import attacker as attacker_lib

    workdir = tmp_path_factory.mktemp("attacker_cache") / "run"
    with logged() as messages:
        attacker = attacker_lib.get_attacker(evaluation_settings(tiny_data_dir), str(workdir))
    return workdir, attacker, "\n".join(messages)


@pytest.fixture(scope="session")
def jax_cache_dir() -> Path:
    """The session's persistent compilation cache (see the module docstring)."""
    return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])


# ------------------------------------------------------------- background runs


class Jobs:
    """Slow subprocess work on background threads, at most `workers` at once, in the
    order submitted. A job's future gives its result (or raises its exception)."""

    def __init__(self, workers: int):
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="job")

    def submit(self, fn, *args) -> concurrent.futures.Future:
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        runs.stop_all()  # a failed session must not wait for its runs to finish
        self._pool.shutdown(wait=True)


@pytest.fixture(scope="session")
def jobs():
    # Two at once: with the main thread, three processes share two cores, which keeps
    # both busy (a compile, which dominates, uses one core).
    pool = Jobs(workers=2)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def runner(jax_cache_dir, tiny_data_dir) -> runs.Runner:
    return runs.Runner(jax_cache_dir, tiny_data_dir)


def _base(tmp_path_factory, name: str) -> Path:
    return tmp_path_factory.mktemp(name)


@pytest.fixture(scope="session")
def tiny_run_job(jobs, runner, tmp_path_factory):
    return jobs.submit(runs.tiny_job, runner, _base(tmp_path_factory, "trained_run"))


@pytest.fixture(scope="session")
def sharded_job(jobs):
    return jobs.submit(runs.sharded_job)


@pytest.fixture(scope="session")
def long_run_job(jobs, runner, tmp_path_factory):
    return jobs.submit(runs.long_job, runner, _base(tmp_path_factory, "long"))


@pytest.fixture(scope="session")
def nonfinite_loss_job(jobs, runner, tiny_run_job, tmp_path_factory):
    base = _base(tmp_path_factory, "nonfinite_loss")
    return jobs.submit(runs.overflowing_job, runner, base, tiny_run_job, "loss")


@pytest.fixture(scope="session")
def nonfinite_update_job(jobs, runner, tiny_run_job, tmp_path_factory):
    base = _base(tmp_path_factory, "nonfinite_update")
    return jobs.submit(runs.overflowing_job, runner, base, tiny_run_job, "update")


@pytest.fixture(scope="session")
def warmup_job(jobs, runner, tmp_path_factory):
    return jobs.submit(runs.flags_job, runner, _base(tmp_path_factory, "warmup"), *runs.WARMUP)


@pytest.fixture(scope="session")
def sigkill_job(jobs, runner, tmp_path_factory):
    base = _base(tmp_path_factory, "sigkill")
    return jobs.submit(runs.interrupted_job, runner, base, signal.SIGKILL)


@pytest.fixture(scope="session")
def sigterm_job(jobs, runner, tmp_path_factory):
    base = _base(tmp_path_factory, "sigterm")
    return jobs.submit(runs.interrupted_job, runner, base, signal.SIGTERM)


@pytest.fixture(scope="session")
def benchmark_job(jobs, tiny_data_dir, jax_cache_dir, tiny_run_job, tmp_path_factory):
    base = _base(tmp_path_factory, "benchmark")
    return jobs.submit(runs.benchmark_job, base, tiny_data_dir, jax_cache_dir, tiny_run_job)


@pytest.fixture(scope="session")
def identity_probe_job(jobs, tmp_path_factory):
    return jobs.submit(runs.identity_probe_job, _base(tmp_path_factory, "identity_probe"))


@pytest.fixture(scope="session")
def rerun_finished_job(jobs, runner, tiny_run_job, tmp_path_factory):
    base = _base(tmp_path_factory, "rerun_finished")
    return jobs.submit(runs.rerun_job, runner, base, tiny_run_job)


@pytest.fixture(scope="session")
def evaluate_mode_job(jobs, runner, tiny_run_job, tmp_path_factory):
    base = _base(tmp_path_factory, "evaluate_mode")
    # Read-only but for eval/: --mode evaluate must write nothing else (issue 18).
    evaluate = functools.partial(runs.rerun_job, read_only=True)
    return jobs.submit(evaluate, runner, base, tiny_run_job, "--mode", "evaluate")


@pytest.fixture(scope="session")
def corrupt_job(jobs, runner, long_run_job, tmp_path_factory):
    base = _base(tmp_path_factory, "corrupt")
    return jobs.submit(runs.corrupt_job, runner, base, long_run_job)


@pytest.fixture(scope="session")
def two_process_job(jobs, runner, tmp_path_factory):
    return jobs.submit(runs.two_process_job, runner, _base(tmp_path_factory, "two_processes"))


@pytest.fixture(scope="session")
def four_device_job(jobs, runner, tmp_path_factory):
    return jobs.submit(runs.four_device_job, runner, _base(tmp_path_factory, "four_devices"))


@pytest.fixture(scope="session")
def resumed_one_device_job(jobs, runner, two_process_job, tiny_run_job, tmp_path_factory):
    base = _base(tmp_path_factory, "resumed_one_device")
    job = runs.resumed_elsewhere_job
    return jobs.submit(job, runner, base, two_process_job, 1, tiny_run_job)


# In the order they start: the tiny run first (most tests read it), then the longest.
_JOBS = (
    "tiny_run_job",
    "two_process_job",
    "four_device_job",
    "sharded_job",
    "identity_probe_job",
    "long_run_job",
    "nonfinite_loss_job",
    "nonfinite_update_job",
    "warmup_job",
    "sigkill_job",
    "sigterm_job",
    "benchmark_job",
    "rerun_finished_job",
    "evaluate_mode_job",
    "resumed_one_device_job",
    "corrupt_job",  # waits for long_run_job: last, so that it never holds a thread idle long
)


@pytest.fixture(scope="session", autouse=True)
def _start_background_jobs(request):
    """Starts the runs that the selected tests need, when the session begins."""
    needed = set().union(*(item.fixturenames for item in request.session.items))
    for name in _JOBS:
        if name in needed:
            request.getfixturevalue(name)


@pytest.fixture(scope="session")
def trained_run_result(tiny_run_job):
    """(workdir, result) of the session's tiny run: `python -m sdn_jax.main --config
    configs/tiny.py` (6 steps at 32 px). Read only: tests that change it copy it first."""
    workdir, result = tiny_run_job.result()
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


@pytest.fixture(scope="session")
def trained_run(trained_run_result) -> Path:
    return trained_run_result[0]
