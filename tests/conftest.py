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
