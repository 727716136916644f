"""The independent attacker: its losses, colour augmentation, training, cache and API."""

import copy
import dataclasses
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_model import evaluation_settings, tiny_config

from sdn_jax import augment
from sdn_jax import settings as settings_lib
from sdn_jax.data import attributes as attr_lib
from sdn_jax.data import synth as synth_faces
from sdn_jax.evaluation import attacker as attacker_lib
from sdn_jax.evaluation import attacker_training, metrics
from sdn_jax.images import from_uint8

SMALL = dict(
    input_size=32,
    widths=(16, 32, 64),
    num_steps=150,
    people_per_batch=8,
    photos_per_person=4,
    attribute_input_size=32,
    attribute_widths=(16, 32, 64),
    attribute_steps=150,
    attribute_batch_size=32,
    calibration_people=4,
    log_every_steps=50,
    batch_size=64,
)


def tiny_settings(**overrides) -> settings_lib.Attacker:
    """Small networks at 32 px: seconds of training on 2 CPU cores (the config's
    eval.attacker section with these fields changed)."""
    config = tiny_config(**{f"eval.attacker.{k}": v for k, v in {**SMALL, **overrides}.items()})
    return settings_lib.from_config(config).eval.attacker


def test_prototype_cosface_loss_on_hand_made_embeddings():
    # Three people, two photos each, each person along its own axis: perfectly separated.
    e = jnp.repeat(jnp.eye(3), 2, axis=0)
    loss, accuracy = attacker_training.prototype_cosface_loss(e, 3, margin=0.2, scale=2.0)
    assert accuracy == 1.0
    # Own cosine 1 - margin vs two others at 0: -log(e^1.6 / (e^1.6 + 2)).
    np.testing.assert_allclose(loss, np.log1p(2 * np.exp(-2 * 0.8)), rtol=1e-5)
    # Swap one photo of person 0 with one of person 1: their photos now look alike.
    mixed = e[jnp.array([0, 2, 1, 3, 4, 5])]
    mixed_loss, mixed_accuracy = attacker_training.prototype_cosface_loss(mixed, 3, 0.2, 16.0)
    assert mixed_loss > 5.0 and mixed_accuracy < 1.0


def test_recolour_keeps_range_and_shape_and_can_be_off():
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (16, 32, 32, 3)), jnp.float32)
    key = jax.random.key(0)
    np.testing.assert_allclose(augment.recolour(key, images, 0.0), images, atol=1e-6)
    changed = augment.recolour(key, images, 1.0)
    assert changed.shape == images.shape
    assert float(changed.min()) >= -1.0 - 1e-6 and float(changed.max()) <= 1.0 + 1e-6
    per_image = jnp.abs(changed - images).mean(axis=(1, 2, 3))
    assert float(per_image.min()) > 0.01  # every image recoloured
    # A retint moves colours, not edges: the images stay aligned with their originals.
    grey = lambda x: x.mean(-1)
    assert float(jnp.corrcoef(grey(changed).ravel(), grey(images).ravel())[0, 1]) > 0.2


def test_damage_patch_overwrites_one_central_box_or_nothing():
    images = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (32, 40, 40, 3)), jnp.float32)
    key = jax.random.key(1)
    np.testing.assert_array_equal(augment.damage_patch(key, images, 0.0), images)
    changed = np.asarray(augment.damage_patch(key, images, 1.0)) != np.asarray(images)
    rows, cols = np.nonzero(changed.any(-1).any(0))
    assert changed.any(axis=(1, 2, 3)).all()  # every image damaged...
    assert changed.any(-1).mean() < 0.3  # ...in a box, not everywhere
    assert rows.min() >= 40 * 0.3 - 40 * 0.225 - 1 and rows.max() <= 40 * 0.7 + 40 * 0.225 + 1
    assert cols.min() >= 40 * 0.3 - 40 * 0.3 - 1 and cols.max() <= 40 * 0.7 + 40 * 0.3 + 1


def render_split(people, photos, size=32):
    identities = np.repeat(np.arange(people), photos)
    photo_numbers = np.tile(np.arange(photos), people)
    images, attributes = synth_faces.render_faces(identities, photo_numbers, size)
    return images, identities, attributes, photo_numbers


@pytest.fixture(scope="module")
def tiny_attacker():
    """An attacker trained on 20 synthetic people (12 photos each, 32 px) and their photos."""
    images, identities, attributes, photo_numbers = render_split(20, 16)
    seen = photo_numbers < 12
    settings = tiny_settings()
    train = {"images": images[seen], "identities": identities[seen], "attributes": attributes[seen]}
    attacker = attacker_lib.train_attacker(train, settings)
    return attacker, images, identities, attributes, ~seen


def test_attacker_recognizes_people_in_new_photos(tiny_attacker):
    attacker, images, identities, _, held_out = tiny_attacker
    embeddings = attacker.embed(from_uint8(images))
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)
    # Identification of the 16 trained people (4 were held out for the threshold) from
    # photos it never saw, by the nearest mean embedding of their training photos.
    trained = np.arange(16)
    means = np.stack([embeddings[~held_out & (identities == p)].mean(0) for p in trained])
    probes = held_out & (identities < 16)
    predicted = trained[np.argmax(embeddings[probes] @ means.T, axis=1)]
    accuracy = np.mean(predicted == identities[probes])
    assert accuracy >= 0.5, accuracy  # chance: 1/16
    positives, negatives = metrics.verification_pairs(embeddings[held_out], identities[held_out])
    assert positives.mean() > negatives.mean() + 0.3
    # The stored thresholds were fixed on the held-out people's photos at 1% FAR.
    assert attacker.info["calibration_far"] <= 0.01
    assert attacker.info["calibration_far_one_photo"] <= 0.01
    assert -1.0 <= attacker.threshold <= 1.0 and -1.0 <= attacker.one_photo_threshold <= 1.0


def test_calibrate_fixes_both_thresholds_and_a_gallery_verifies_more(tiny_attacker):
    # Hand-made embeddings: 40 people, 8 noisy photos each around a direction of their own.
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 16))
    identities = np.repeat(np.arange(40), 8)
    embeddings = centres[identities] + 1.2 * rng.normal(size=(320, 16))
    attacker = copy.copy(tiny_attacker[0])
    attacker.settings = dataclasses.replace(attacker.settings, gallery_photos=3, far=0.02)
    attacker.embed = lambda images: embeddings  # the calibration works on embeddings only
    rates = attacker.calibrate(np.zeros((320, 1, 1, 3)), identities)
    positives, negatives = metrics.gallery_verification_pairs(embeddings, identities, 3)
    passed = np.mean(negatives > attacker.threshold)
    assert passed <= 0.02 < np.mean(negatives >= attacker.threshold)  # the lowest such
    one_positives, one_negatives = metrics.verification_pairs(embeddings, identities)
    assert np.mean(one_negatives > attacker.one_photo_threshold) <= 0.02
    assert rates["calibration_tar"] == np.mean(positives > attacker.threshold)
    # The mean of 3 photos is a cleaner picture of the person than any one photo.
    assert rates["calibration_tar"] > rates["calibration_tar_one_photo"] + 0.1, rates


def test_attacker_attributes_beat_the_majority_guess(tiny_attacker):
    attacker, images, _, attributes, held_out = tiny_attacker
    probabilities = attacker.attributes(from_uint8(images[held_out]))
    assert probabilities.shape == (held_out.sum(), attr_lib.NUM_ATTRIBUTES)
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    truth = attributes[held_out]
    varied = truth.any(0) & ~truth.all(0)  # attributes that vary among these photos
    accuracy = ((probabilities > 0.5) == truth).mean(0)[varied]
    majority = np.maximum(truth.mean(0), 1 - truth.mean(0))[varied]
    assert accuracy.mean() > majority.mean() + 0.03, (accuracy.mean(), majority.mean())


def test_embed_does_not_depend_on_the_batch(tiny_attacker):
    attacker, images, *_ = tiny_attacker
    x = from_uint8(images[:70])  # more than one batch of 64, padded
    together = attacker.embed(x)
    np.testing.assert_allclose(attacker.embed(x[65:67]), together[65:67], atol=1e-5)
    same = attacker.same_person(together[:3], together[:3])
    assert same.dtype == bool and same.all()
    assert attacker.embed(x[:0]).shape == (0, together.shape[1])
    with pytest.raises(ValueError, match="images in"):
        attacker.embed(x[0])


@pytest.fixture(scope="module")
def run_settings(tiny_data_dir) -> settings_lib.Settings:
    """The tiny run's settings with the session's small attacker (trained_attacker)."""
    return evaluation_settings(tiny_data_dir)


@pytest.fixture(scope="module")
def trained_cache(trained_attacker):
    return trained_attacker


@pytest.fixture
def workdir_with_cache(trained_cache, tmp_path) -> str:
    """A workdir of this test's own holding a copy of the trained attacker's cache."""
    workdir = tmp_path / "run"
    shutil.copytree(trained_cache[0] / "eval" / "attacker", workdir / "eval" / "attacker")
    return str(workdir)


def test_get_attacker_trains_once_then_loads_from_the_cache(
    trained_cache, run_settings, workdir_with_cache, caplog
):
    trained_in, first, log_text = trained_cache
    assert "Training the attacker" in log_text and "Loaded the attacker" not in log_text
    cache = os.path.join(workdir_with_cache, "eval", "attacker")
    assert sorted(os.listdir(cache)) == ["attacker.json", "params.msgpack"]
    caplog.set_level(logging.INFO, logger="sdn_jax")
    second = attacker_lib.get_attacker(run_settings, workdir_with_cache)
    assert "Training the attacker" not in caplog.text and "Loaded the attacker" in caplog.text
    assert second.threshold == first.threshold
    assert second.one_photo_threshold == first.one_photo_threshold
    x = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(second.embed(x), first.embed(x))
    np.testing.assert_array_equal(second.attributes(x), first.attributes(x))


def corrupt_params(cache):
    path = os.path.join(cache, "params.msgpack")
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


def truncate_info(cache):
    path = os.path.join(cache, "attacker.json")
    open(path, "w").write(open(path).read()[:20])


def _load(cache, settings):
    attacker = attacker_lib.resolved_settings(settings)
    fingerprint = attacker_lib.cache_fingerprint(settings, attacker)
    return attacker_lib._load(str(cache), attacker, fingerprint)


@pytest.mark.parametrize(
    "damage,reason",
    [(corrupt_params, "does not match the hash"), (truncate_info, "unreadable")],
)
def test_a_damaged_cache_is_refused(run_settings, workdir_with_cache, damage, reason):
    cache = os.path.join(workdir_with_cache, "eval", "attacker")
    _load(cache, run_settings)  # sound before
    damage(cache)
    with pytest.raises(attacker_lib.CorruptCacheError, match=reason):
        _load(cache, run_settings)


def test_other_settings_or_data_are_not_served_from_the_cache(
    run_settings, workdir_with_cache, tiny_data_dir
):
    cache = os.path.join(workdir_with_cache, "eval", "attacker")
    _load(cache, run_settings)  # sound for its own settings
    other_attacker = evaluation_settings(tiny_data_dir, **{"eval.attacker.margin": 0.3})
    other_data = dataclasses.replace(
        run_settings, data=dataclasses.replace(run_settings.data, dataset_seed=1)
    )
    other_keys = dataclasses.replace(
        run_settings, model=dataclasses.replace(run_settings.model, key_attributes=("Smiling",))
    )
    for changed in (other_attacker, other_data, other_keys):
        with pytest.raises(attacker_lib.CorruptCacheError, match="trained with other"):
            _load(cache, changed)


def test_get_attacker_retrains_over_a_damaged_cache_with_a_warning(
    run_settings, workdir_with_cache, caplog
):
    cache = os.path.join(workdir_with_cache, "eval", "attacker")
    corrupt_params(cache)
    caplog.set_level(logging.INFO, logger="sdn_jax")
    attacker = attacker_lib.get_attacker(run_settings, workdir_with_cache)
    assert "Not using the cached attacker" in caplog.text and "Training the attacker" in caplog.text
    # The cache was replaced by a sound one.
    with open(os.path.join(cache, "attacker.json")) as f:
        assert json.load(f)["threshold"] == attacker.threshold
    caplog.clear()
    attacker_lib.get_attacker(run_settings, workdir_with_cache)
    assert "Loaded the attacker" in caplog.text


def test_resolved_settings_fill_the_attribute_input_size():
    """None: the data's resolution; a size given is kept."""
    config = tiny_config(**{"eval.attacker.attribute_input_size": None})
    settings = settings_lib.from_config(config)
    assert settings.eval.attacker.attribute_input_size is None
    assert attacker_lib.resolved_settings(settings).attribute_input_size == 32
    sized = settings_lib.from_config(tiny_config(**{"eval.attacker.attribute_input_size": 16}))
    assert attacker_lib.resolved_settings(sized).attribute_input_size == 16


def test_unknown_attacker_fields_are_refused():
    config = tiny_config()
    with config.unlocked():
        config.eval.attacker.no_such_field = 1
    with pytest.raises(settings_lib.SettingsError, match=r"eval.attacker.no_such_field"):
        settings_lib.from_config(config)


def test_people_with_too_few_photos_for_a_batch_are_skipped_and_counted():
    identities = np.array([5, 5, 5, 5, 7, 7, 9, 9, 9, 9, 9, 3, 3])  # 3 and 7: 2 photos each
    order, starts, counts, skipped = attacker_training._photo_index(identities, 4)
    assert counts.tolist() == [4, 5] and skipped == 2
    assert sorted(identities[order][starts].tolist()) == [5, 9]
    with pytest.raises(ValueError, match="at least 2 people with 5 or more photos"):
        attacker_training._photo_index(identities, 5)


def test_a_capped_attacker_set_is_whole_people_the_same_every_time(tiny_data_dir):
    run = evaluation_settings(tiny_data_dir)
    everything = attacker_lib.load_train_images(run, "unused", 16)
    capped = attacker_lib.load_train_images(run, "unused", 16, max_images=30)
    assert len(everything["images"]) == 72 and everything["images"].shape[1:] == (16, 16, 3)
    assert 0 < len(capped["images"]) <= 30
    kept, counts = np.unique(capped["identities"], return_counts=True)
    whole = dict(zip(*np.unique(everything["identities"], return_counts=True), strict=True))
    assert all(whole[person] == count for person, count in zip(kept, counts, strict=True))
    again = attacker_lib.load_train_images(run, "unused", 16, max_images=30)
    np.testing.assert_array_equal(again["identities"], capped["identities"])
