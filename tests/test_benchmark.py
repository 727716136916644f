"""`python -m sdn_jax.benchmark` on the tiny config: the command line, the table, the JSON."""

import json

import pytest

from configs import tiny
from sdn_jax import benchmark


@pytest.mark.slow
def test_sections_write_json(benchmark_job):
    # runs.benchmark_job: input_pipeline, synth_faces_renderer and train_step, 5 batches
    # each after 1 untimed, with the session's data and compilation cache.
    out, done = benchmark_job.result()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "images_per_s" in done.stdout
    results = json.loads(out.read_text())
    assert results["device"] == "cpu" and results["num_devices"] == 1
    section = results["input_pipeline"]
    assert section["images_per_s"] > 0
    assert section["batch_size"] == 8 and section["num_batches"] == 5
    assert section["image_size"] == 32 and section["worker_count"] == 0
    renderer = results["synth_faces_renderer"]
    assert renderer["images_per_s"] > 0 and renderer["image_size"] == 32
    assert renderer["num_batches"] == 5 and renderer["batch_size"] == 256
    step = results["train_step"]
    assert step["num_steps"] == 5 and step["global_batch_size"] == 8
    assert step["image_size"] == 32 and step["seconds"] > 0
    # Rates in consistent units: 8 images per step, and G on all 8 (no generator share).
    assert step["images_per_s"] == pytest.approx(8 * step["steps_per_s"], rel=1e-9)
    assert step["steps_per_s"] == pytest.approx(5 / step["seconds"], rel=1e-9)
    assert step["generator_images_per_s"] == pytest.approx(step["images_per_s"], rel=1e-9)
    # XLA's count for the tiny model at 32px: E, G, C, D, Q and q, forward and backward.
    assert 1e7 < step["flops_per_image"] < 1e10
    # A train step of small convolutions reaches a fraction of a big matmul's FLOP/s.
    assert 0 < step["achieved_flops_per_s"] < step["peak_flops_per_s"]
    assert 0 < step["mfu"] < 1
    # The table shows every section's values.
    for name in ("input_pipeline", "synth_faces_renderer", "train_step"):
        assert f"\n{name:<16} images_per_s" in done.stdout


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="Unknown benchmark sections"):
        benchmark.run(tiny.get_config(), ["no_such_section"], benchmark.Options(str(tmp_path)))


def test_timed_counts_the_warmup_apart():
    calls = []
    count, seconds = benchmark._timed(
        lambda: calls.append(1), benchmark.Options("unused", num_batches=3, warmup_batches=2)
    )
    assert count == 3 and len(calls) == 2 + 3 and seconds >= 0.0


def test_format_table_on_a_hand_made_result():
    results = {
        "device": "cpu",
        "num_devices": 2,
        "anonymize": {"images_per_s": 1234.5678, "batch_size": 16, "mfu": 0.0123},
    }
    assert benchmark.format_table(results).splitlines() == [
        "device: cpu x2",
        f"{'anonymize':<16} {'images_per_s':<20} {'1,234.6':>14}",
        f"{'anonymize':<16} {'batch_size':<20} {'16':>14}",
        f"{'anonymize':<16} {'mfu':<20} {'0.0123':>14}",
    ]
