"""The synthetic face renderer: determinism, labels, attributes that show, errors."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from sdn_jax.data import attributes, synth
from sdn_jax.data.synth import preview, world

# A frontal pose: face coordinates map to fixed pixels, so "where" a change is can be tested.
FRONTAL = dict(angle=0.0, scale=1.2, tx=0.0, ty=0.0)

# Rows (at 64 px, frontal pose) that must hold >= 98% of the pixels a per-photo attribute
# changes: mouth and chin features below the eyes, glasses at eye level, hats on top.
EXPECTED_ROWS = {
    "Smiling": (26, 50),  # the mouth, and the eyes narrowing
    "Mouth_Slightly_Open": (36, 51),
    "Mustache": (37, 49),
    "Goatee": (43, 57),
    "5_o_Clock_Shadow": (36, 57),
    "Eyeglasses": (25, 41),
    "Bangs": (16, 41),
    "Wearing_Hat": (0, 28),
    "Wearing_Lipstick": (37, 51),
    "Rosy_Cheeks": (34, 49),
    "Wearing_Earrings": (31, 42),
}
NEVER_DRAWN = (
    "Attractive",
    "Blurry",
    "Double_Chin",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Oval_Face",
    "Pointy_Nose",
    "Sideburns",
    "Wearing_Necklace",
    "Wearing_Necktie",
)


def test_same_keys_give_the_same_pixels_alone_or_in_any_batch():
    ids, photos = np.array([4, 4, 9, 17, 250]), np.array([0, 1, 3, 0, 22])
    for size in synth.IMAGE_SIZES:
        batch, labels = synth.render_faces(ids, photos, size, seed=3)
        again, _ = synth.render_faces(ids, photos, size, seed=3)
        np.testing.assert_array_equal(batch, again)
        for i in (0, 3):  # Alone, and in another batch (other bounding boxes, subsets).
            alone, alone_labels = synth.render_faces(ids[i : i + 1], photos[i : i + 1], size, 3)
            np.testing.assert_array_equal(alone[0], batch[i])
            np.testing.assert_array_equal(alone_labels[0], labels[i])
        shuffled, _ = synth.render_faces(ids[::-1], photos[::-1], size, seed=3)
        np.testing.assert_array_equal(shuffled[::-1], batch)


def test_pixels_are_pinned():
    """Pixels are part of the data format: an intended change must bump SynthFaces.VERSION."""
    images, labels = synth.render_faces([0, 5, 123, 7], [0, 3, 7, 11], 32)
    assert hashlib.sha256(images.tobytes()).hexdigest() == (
        "f80f00ebb49c46f802437c2c1f9910807a0831fc59feead5ee1fc1bfe55444ef"
    )
    assert hashlib.sha256(np.packbits(labels).tobytes()).hexdigest() == (
        "7776f073e05dd3985d4b1cde02912d6f6baa20554653600f2935d47869996598"
    )


def test_seeds_people_and_photos_all_change_the_image():
    base, _ = synth.render_faces([1], [0], 32, seed=0)
    for ids, photos, seed in (([2], [0], 0), ([1], [1], 0), ([1], [0], 1)):
        other, _ = synth.render_faces(ids, photos, 32, seed=seed)
        assert np.abs(other.astype(int) - base.astype(int)).mean() > 5


def test_identity_attributes_are_fixed_per_person_and_photo_attributes_vary():
    people = np.repeat(np.arange(40), 12)
    _, labels = synth.render_faces(people, np.tile(np.arange(12), 40), 32)
    labels = labels.reshape(40, 12, -1)
    for name in ("Male", "Young", "Big_Nose", "Bald", "Black_Hair", "Wavy_Hair"):
        column = labels[:, :, attributes.ATTRIBUTE_INDEX[name]]
        assert (column == column[:, :1]).all(), name
        assert 0 < column.mean() < 1, name
    for name in ("Smiling", "Mouth_Slightly_Open", "Eyeglasses"):
        column = labels[:, :, attributes.ATTRIBUTE_INDEX[name]]
        assert (column != column[:, :1]).any(axis=1).mean() > 0.8, name


def test_undrawn_attributes_are_always_false_and_drawn_ones_take_both_values():
    _, labels = synth.render_faces(np.arange(600), np.arange(600) % 7, 32)
    for name in NEVER_DRAWN:
        assert not labels[:, attributes.ATTRIBUTE_INDEX[name]].any(), name
    drawn = [n for n in attributes.CELEBA_ATTRIBUTES if n not in NEVER_DRAWN]
    for name in drawn:
        rate = labels[:, attributes.ATTRIBUTE_INDEX[name]].mean()
        assert 0.01 < rate < 0.99, (name, rate)
    hair = labels[:, [attributes.ATTRIBUTE_INDEX[n] for n in world._HAIR_NAMES]]
    bald = labels[:, attributes.ATTRIBUTE_INDEX["Bald"]]
    np.testing.assert_array_equal(hair.sum(1), ~bald)  # One hair colour, unless bald.


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_each_photo_attribute_changes_the_pixels_where_it_should(name):
    ids, photos = np.arange(16), np.zeros(16, int)
    off, off_labels = synth.render_faces(ids, photos, 64, overrides={**FRONTAL, name: False})
    on, on_labels = synth.render_faces(ids, photos, 64, overrides={**FRONTAL, name: True})
    column = attributes.ATTRIBUTE_INDEX[name]
    assert not off_labels[:, column].any()
    shown = on_labels[:, column]
    assert shown.mean() > 0.75  # Only what cannot show (bangs on a bald head) is not labelled.
    changed = np.abs(on.astype(int) - off.astype(int)).sum(-1) > 10
    assert changed[shown].reshape(shown.sum(), -1).sum(1).min() >= 5  # Visible on every face.
    assert not changed[~shown].any()
    rows = np.nonzero(changed)[1]
    low, high = EXPECTED_ROWS[name]
    assert ((rows >= low) & (rows <= high)).mean() >= 0.98, np.percentile(rows, [1, 99])
    # Other labels stay, but for the ones derived from this one: No_Beard, and stubble,
    # which a goatee replaces.
    derived = {"No_Beard"} | ({"5_o_Clock_Shadow"} if name == "Goatee" else set())
    others = [i for i, n in enumerate(attributes.CELEBA_ATTRIBUTES) if n not in derived | {name}]
    np.testing.assert_array_equal(on_labels[:, others], off_labels[:, others])
    if name in ("Mustache", "Goatee", "5_o_Clock_Shadow"):
        assert not on_labels[shown, attributes.ATTRIBUTE_INDEX["No_Beard"]].any()


def test_pose_overrides_move_the_face():
    left, _ = synth.render_faces([3], [0], 64, overrides={**FRONTAL, "tx": -0.2})
    right, _ = synth.render_faces([3], [0], 64, overrides={**FRONTAL, "tx": 0.2})
    shifted = np.roll(left[0], round(0.4 * 64 / 2), axis=1)  # 0.4 image units = 12.8 px
    inner = np.s_[8:56, 20:44]
    assert np.abs(shifted[inner].astype(int) - right[0][inner].astype(int)).mean() < 12
    assert np.abs(left[0][inner].astype(int) - right[0][inner].astype(int)).mean() > 20


def test_nuisance_is_returned_and_drawn_independently_of_identity():
    ids = np.repeat(np.arange(200), 2)
    _, _, nuisance = synth.render_faces(ids, np.tile([0, 1], 200), 32, return_nuisance=True)
    assert set(nuisance) == {"pose", "lighting", "background", "clothing"}
    pose = nuisance["pose"].reshape(200, 2, 4)
    # Two photos of one person are no more alike in pose than photos of two people.
    same = np.abs(pose[:, 0] - pose[:, 1]).mean()
    other = np.abs(pose[:, 0] - np.roll(pose[:, 1], 1, axis=0)).mean()
    assert same > 0.8 * other


def test_uniform_draws_are_uniform_deterministic_and_keyed():
    draws = synth.uniform_draws(7, np.arange(5000), width=8)
    assert draws.dtype == np.float32 and (draws >= 0).all() and (draws < 1).all()
    np.testing.assert_array_equal(draws, synth.uniform_draws(7, np.arange(5000), width=8))
    assert abs(draws.mean() - 0.5) < 0.01 and abs(draws.var() - 1 / 12) < 0.005
    assert np.histogram(draws, bins=10, range=(0, 1))[0].min() > 3600  # ~4000 per bin
    other = synth.uniform_draws(8, np.arange(5000), width=8)
    assert np.mean(np.abs(other - draws)) > 0.3
    # Appending draws keeps the earlier ones (so the trait table can grow).
    np.testing.assert_array_equal(
        synth.uniform_draws(7, np.arange(10), width=12)[:, :8], draws[:10]
    )


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="image_size must be one of"):
        synth.render_faces([0], [0], 48)
    with pytest.raises(ValueError, match="differ in length"):
        synth.render_faces([0, 1], [0], 32)
    with pytest.raises(ValueError, match="non-negative"):
        synth.render_faces([-1], [0], 32)
    with pytest.raises(ValueError, match="Cannot override 'Male'"):
        synth.render_faces([0], [0], 32, overrides={"Male": True})


def test_preview_writes_a_grid_of_people(tmp_path):
    out = tmp_path / "preview.png"
    preview.main(["--preview", str(out), "--people", "3", "--photos", "4", "--image_size", "32"])
    grid = np.asarray(Image.open(out))
    assert grid.shape == (3 * 32, 4 * 32, 3)
    rows = grid.reshape(3, 32, 4, 32, 3).transpose(0, 2, 1, 3, 4)
    expected, _ = synth.render_faces([1, 1, 1, 1], [0, 1, 2, 3], 32)
    np.testing.assert_array_equal(rows[1], expected)


def test_the_documented_preview_command_still_runs_the_preview():
    from sdn_jax.data import synth_faces  # python -m sdn_jax.data.synth_faces --preview ...

    assert synth_faces.main is preview.main
