"""`python -m sdn_jax.benchmark` on the tiny config: the command line, the table, the JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from configs import tiny
from sdn_jax import benchmark

ROOT = Path(__file__).resolve().parents[1]


def test_data_sections_write_json(tmp_path):
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        "-m",
        "sdn_jax.benchmark",
        "input_pipeline",
        "synth_faces_renderer",
        "--config",
        "configs/tiny.py",
        "--config.train.global_batch_size=4",
        f"--data_dir={tmp_path / 'tfds'}",
        f"--out={out}",
        "--num_batches=5",
        "--warmup_batches=1",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
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


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="Unknown benchmark sections"):
        benchmark.run(tiny.get_config(), ["no_such_section"], benchmark.Options(str(tmp_path)))
