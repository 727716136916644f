"""`python -m sdn_jax.main`'s own refusals (the work it starts is tested elsewhere)."""

import subprocess
import sys

import pytest
from tiny_model import ROOT, subprocess_env

REFUSED = [
    (["--config.seed=3", "--config.train.num_step=5"],
     'error: --config.train.num_step: no such config field (Did you mean "num_steps" instead '
     'of "num_step"?)'),
    (["--num_processes=2"],
     "error: a multi-process run needs --coordinator_address, --num_processes and "
     "--process_id together; missing: --coordinator_address, --process_id"),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "message"), REFUSED, ids=["config_field", "multi_process"])
def test_a_refusal_is_one_line_exit_2_and_writes_nothing(tmp_path, flags, message):
    command = [sys.executable, "-m", "sdn_jax.main", "--config", "configs/tiny.py",
               f"--workdir={tmp_path / 'run'}", *flags]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "run").exists()
