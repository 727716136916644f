"""Classifier two-sample tests: people-disjoint halves, balanced classes, ~0.5 for two
draws of one distribution and ~1.0 for clearly different ones, fixed by the seed."""

import types

import numpy as np
import pytest
from realism_fakes import faces

from sdn_jax.evaluation import two_sample
from sdn_jax.images import gaussian_blur

# 120 people with 3 photos each, at 32 px (under the tests' XLA flags, 16 px convolutions
# train ~10x slower than 32 px ones).
PEOPLE, PHOTOS, SIZE = 120, 3, 32
OWNERS = np.repeat(np.arange(PEOPLE), PHOTOS)
FAST = types.SimpleNamespace(
    seed=3, cnn_steps=100, cnn_batch_size=32, logistic_steps=200, logistic_l2=1e-2
)


@pytest.fixture(scope="module")
def real():
    return faces(PEOPLE * PHOTOS, seed=0, size=SIZE)


def test_split_people_is_a_fixed_half():
    owners = np.repeat(np.arange(10, 31), 2)  # 21 people
    half = two_sample.split_people(owners, seed=1)
    assert len(half) == 10 and set(half) <= set(range(10, 31))
    np.testing.assert_array_equal(half, two_sample.split_people(owners, seed=1))
    assert not np.array_equal(half, two_sample.split_people(owners, seed=2))
    with pytest.raises(ValueError, match="at least 2 people"):
        two_sample.split_people([4, 4, 4], seed=0)


def test_halves_are_people_disjoint_and_balanced():
    # Each image is filled with its person's id (outputs: 128 + id). Fewer outputs than
    # real photos, of some of the people only: each half is still balanced.
    real = np.broadcast_to(OWNERS[:, None, None, None], (len(OWNERS), 4, 4, 3)).astype(np.uint8)
    keep = np.flatnonzero(OWNERS % 3 != 0)[::2]
    fake, fake_owner = real[keep] + 128, OWNERS[keep]
    sets = two_sample.halves(real, fake, OWNERS, fake_owner, seed=5)
    train, test = sets["train"], sets["test"]
    assert not set(train["people"]) & set(test["people"])
    for part in (train, test):
        assert np.sum(part["y"] == 0) == np.sum(part["y"] == 1) > 0
        assert part["x"].dtype == np.float32 and -1.0 <= part["x"].min() <= part["x"].max() <= 1.0
        value = np.rint((part["x"][:, 0, 0, 0] + 1) * 127.5).astype(int)
        # Real photos are labelled 0, outputs 1, and each is of one of its half's people.
        np.testing.assert_array_equal(value >= 128, part["y"] == 1)
        assert set(value % 128) <= set(part["people"])
    assert set(train["people"]) | set(test["people"]) <= set(range(PEOPLE))
    np.testing.assert_array_equal(
        sets["train"]["x"], two_sample.halves(real, fake, OWNERS, fake_owner, seed=5)["train"]["x"]
    )


def test_same_distribution_is_indistinguishable(real):
    other = faces(PEOPLE * PHOTOS, seed=1, size=SIZE)
    result = two_sample.two_sample_tests(real, other, OWNERS, OWNERS, FAST)
    assert set(result) == {"cnn", "pixel_logistic"}
    assert all(isinstance(v, float) for v in result.values())
    assert abs(result["cnn"] - 0.5) < 0.1, result
    assert abs(result["pixel_logistic"] - 0.5) < 0.1, result


def test_clearly_different_sets_are_told_apart(real):
    sets = two_sample.halves(real, gaussian_blur(real, 1.0), OWNERS, OWNERS, seed=3)
    assert two_sample.cnn_accuracy(sets, steps=100, batch_size=32, seed=3) > 0.9
    # Black blobs for eyes, always in the same place: a linear judge on pixels sees them.
    blobs = real.copy()
    blobs[:, 10:14, 8:12] = blobs[:, 10:14, 20:24] = 0
    sets = two_sample.halves(real, blobs, OWNERS, OWNERS, seed=3)
    assert two_sample.logistic_accuracy(sets, steps=200, l2=1e-2) > 0.95


def test_the_seed_fixes_the_result(real):
    other = np.clip(real.astype(int) + 6, 0, 255).astype(np.uint8)
    sets = two_sample.halves(real, other, OWNERS, OWNERS, seed=3)
    first = two_sample.cnn_accuracy(sets, steps=20, batch_size=16, seed=7)
    assert first == two_sample.cnn_accuracy(sets, steps=20, batch_size=16, seed=7)
    logistic = two_sample.logistic_accuracy(sets, steps=50, l2=1e-2)
    assert logistic == two_sample.logistic_accuracy(sets, steps=50, l2=1e-2)
