"""Test-wide setup: JAX on the CPU, absl flags parsed (grain needs them)."""

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


# The tiny config's networks and initial params, shared by the model and step tests
# (built once per session: compiles are the slow part of these tests).
@pytest.fixture(scope="session")
def tiny():
    from tiny_model import tiny_setup

    return tiny_setup()


@pytest.fixture(scope="session")
def config(tiny):
    return tiny[0]


@pytest.fixture(scope="session")
def networks(tiny):
    return tiny[1]


@pytest.fixture(scope="session")
def params(tiny):
    return tiny[2]


# A tiny run trained once per session, for the inference and anonymize tests: a subprocess
# of `python -m sdn_jax.main` (6 steps at 32 px, ~30 s), with XLA's expensive CPU passes
# off as in test_train.py. Tests that change it copy it first.
@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    import subprocess

    base = tmp_path_factory.mktemp("trained_run")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    fast_xla = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {fast_xla}".strip()
    command = [
        sys.executable, "-m", "sdn_jax.main", "--config", "configs/tiny.py",
        f"--workdir={base / 'run'}", f"--config.data.data_dir={base / 'tfds'}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return base / "run"
