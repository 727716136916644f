"""Test-wide setup: JAX on the CPU, absl flags parsed (grain needs them), and the session's
shared fixtures: the tiny config's settings, networks and params, its prepared dataset,
one compilation cache for subprocesses and one trained tiny run."""

import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `configs` is imported as a package from the repo root.
    sys.path.insert(0, str(ROOT))

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()


import pytest  # noqa: E402


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
def jax_cache_dir(tmp_path_factory) -> Path:
    """One persistent compilation cache for every `python -m sdn_jax.*` subprocess: a
    program compiled by one (the tiny run's train step, its init, its evaluation) is only
    loaded by the next."""
    return tmp_path_factory.mktemp("jax_cache")


# A tiny run trained once per session, for the inference, anonymize, evaluation and
# training-loop tests: a subprocess of `python -m sdn_jax.main` (6 steps at 32 px), with
# XLA's expensive CPU passes off. Tests that change it copy it first.
@pytest.fixture(scope="session")
def trained_run_result(tmp_path_factory, tiny_data_dir, jax_cache_dir):
    """(workdir, the finished subprocess) of the session's tiny run."""
    import subprocess

    from tiny_model import main_command, subprocess_env

    workdir = tmp_path_factory.mktemp("trained_run") / "run"
    done = subprocess.run(
        main_command(workdir, tiny_data_dir),
        cwd=ROOT,
        env=subprocess_env(jax_cache_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir, done


@pytest.fixture(scope="session")
def trained_run(trained_run_result) -> Path:
    return trained_run_result[0]
