"""`python -m sdn_jax.benchmark` on the tiny config: the command line, the table, the JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import tiny
from sdn_jax import benchmark

ROOT = Path(__file__).resolve().parents[1]


def test_sections_write_json(tmp_path):
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        "-m",
        "sdn_jax.benchmark",
        "input_pipeline",
        "synth_faces_renderer",
        "train_step",
        "--config",
        "configs/tiny.py",
        "--config.train.global_batch_size=4",
        f"--data_dir={tmp_path / 'tfds'}",
        f"--out={out}",
        "--num_batches=5",
        "--warmup_batches=1",
    ]
    # XLA's expensive CPU passes off: the train step compiles in ~15 s instead of ~60 s.
    fast_xla = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=fast_xla)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "images_per_s" in done.stdout
    results = json.loads(out.read_text())
    assert isinstance(results["device"], str) and results["num_devices"] >= 1
    section = results["input_pipeline"]
    assert section["images_per_s"] > 0
    assert section["batch_size"] == 4 and section["num_batches"] == 5
    assert section["image_size"] == 32 and section["worker_count"] == 0
    renderer = results["synth_faces_renderer"]
    assert renderer["images_per_s"] > 0 and renderer["image_size"] == 32
    assert renderer["num_batches"] == 5
    step = results["train_step"]
    assert step["num_steps"] == 5 and step["global_batch_size"] == 4
    # XLA's count for the tiny model at 32px: E, G, C, D, Q and q, forward and backward.
    assert 1e7 < step["flops_per_image"] < 1e10
    assert step["achieved_flops_per_s"] == pytest.approx(
        step["flops_per_image"] * step["images_per_s"], rel=1e-6
    )
    assert step["mfu"] == pytest.approx(step["achieved_flops_per_s"] / step["peak_flops_per_s"])
    assert 0 < step["mfu"] < 1


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="Unknown benchmark sections"):
        benchmark.run(tiny.get_config(), ["no_such_section"], benchmark.Options(str(tmp_path)))
