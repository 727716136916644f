"""The identity probe on a tiny setting: faces identify people, nuisances do not."""

import json

import numpy as np

from tools import identity_probe


def test_identity_probe_learns_faces_not_nuisances(identity_probe_job):
    # runs.PROBE_ARGS: 10 people, 16 held-out photos each: 160 test photos keep
    # chance-level probes within a few points of 0.1. Over seeds 0-7 the probes scored
    # top1 0.54-0.69 (linear_pixels), 0.75-0.88 (tiny_cnn), 0.07-0.18 (nuisance_only) and
    # 0.07-0.11 (background_pixels).
    run, out = identity_probe_job.result()
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())

    assert set(result) >= {"people", "chance", "probes", "seconds"}
    assert result["people"] == 10 and result["chance"] == 0.1
    probes = result["probes"]
    assert set(probes) == {"linear_pixels", "tiny_cnn", "nuisance_only", "background_pixels"}
    for acc in probes.values():
        assert 0.0 <= acc["top1"] <= acc["top5"] <= 1.0

    chance = result["chance"]
    assert probes["linear_pixels"]["top1"] >= 3 * chance
    assert probes["tiny_cnn"]["top1"] >= 5 * chance
    assert probes["nuisance_only"]["top1"] < 2.5 * chance
    assert probes["background_pixels"]["top1"] < 2.5 * chance


def test_corner_pixels_scale_with_image_size():
    for size in (32, 64):
        images = np.zeros((2, size, size, 3), np.uint8)
        assert identity_probe.corner_pixels(images).shape == (2, 4 * (size // 8) ** 2 * 3)
