"""`python -m sdn_jax.main`'s own flag handling (the work it starts is tested elsewhere)."""

import subprocess
import sys

from tiny_model import ROOT, subprocess_env


def test_a_mistyped_config_field_is_one_line_and_exit_2(tmp_path):
    command = [sys.executable, "-m", "sdn_jax.main", "--config", "configs/tiny.py",
               f"--workdir={tmp_path / 'run'}", "--config.seed=3",
               "--config.train.num_step=5"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        'error: --config.train.num_step: no such config field (Did you mean "num_steps" instead '
        'of "num_step"?)'
    ]
    assert not (tmp_path / "run").exists()  # nothing written
