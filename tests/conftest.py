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
