"""`python -m sdn_jax.benchmark` on the tiny config: the command line, the table, the JSON."""

import json
import sys

import pytest
from tiny_model import tiny_settings

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
    # --vs-torch without torch: JAX's figures, the reason in one line, no traceback.
    reason = "torch is not installed (pip install -r requirements-bench.txt)"
    assert step["torch_skipped"] == reason
    assert "torch" not in step and "ratio_vs_torch_eager" not in step
    assert f"train_step: no PyTorch comparison: {reason}\n" in done.stderr
    assert "Traceback" not in done.stderr
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


@pytest.mark.parametrize(
    ("blocked", "reason"),
    [
        ("torch", "torch is not installed"),
        ("benchmarks", "benchmarks/ is not importable: run from the repository root"),
    ],
)
def test_vs_torch_without_torch_or_benchmarks_says_why(blocked, reason, monkeypatch, capsys):
    # Unimportable whether installed or not; the reference imported earlier is forgotten.
    monkeypatch.setitem(sys.modules, blocked, None)
    for name in ("benchmarks.torch_reference", "benchmarks.torch_networks"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    options = benchmark.Options("unused", vs_torch=True)
    result = benchmark.versus_torch(tiny_settings(), options, jax_steps_per_s=1.0)
    assert list(result) == ["torch_skipped"] and result["torch_skipped"].startswith(reason)
    logged = capsys.readouterr().err.splitlines()
    assert logged == [f"train_step: no PyTorch comparison: {result['torch_skipped']}"]


def test_vs_torch_ratios_and_table(monkeypatch):
    """JAX over torch per mode, None where the compile failed; the table shows them."""

    class Reference:
        @staticmethod
        def time_train_step(settings, batch, timed, log):
            assert batch["image"].shape[0] == settings.train.global_batch_size
            return {
                "eager": {"steps_per_s": 2.0},
                "compile": {"steps_per_s": None, "error": "RuntimeError: no compiler"},
                "version": "2.14.1",
            }

    monkeypatch.setitem(sys.modules, "benchmarks.torch_reference", Reference)
    result = benchmark.versus_torch(tiny_settings(), benchmark.Options("unused"), 3.0)
    assert result["ratio_vs_torch_eager"] == 1.5 and result["ratio_vs_torch_compile"] is None
    table = benchmark.format_table({"device": "cpu", "num_devices": 1, "train_step": result})
    assert f"{'train_step':<16} {'torch.eager.steps_per_s':<25} {'2':>14}" in table
    assert (
        f"{'train_step':<16} {'torch.compile.error':<25} {'RuntimeError: no compiler':>14}" in table
    )
    assert f"{'train_step':<16} {'ratio_vs_torch_eager':<25} {'1.5':>14}" in table
