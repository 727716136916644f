"""The right/wrong key samplers and the decoder's condition vector."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdn_jax import keys

KEY_ATTRS = ("Male", "Smiling", "Mustache", "Eyeglasses")
# Every sampler test uses these shapes, so each jitted core compiles once for the module.
BATCH, K, A = 4096, 64, len(KEY_ATTRS)
FEW_BITS = (1, 2, 3, 4)


def _right_keys(fixed: bool):
    """(BATCH, K) passwords and (BATCH, A) attributes: one key repeated, or all random."""
    pw = keys.random_passwords(jax.random.key(3), BATCH, K)
    attrs = keys.random_attributes(jax.random.key(4), BATCH, A)
    if fixed:
        return jnp.broadcast_to(pw[:1], pw.shape), jnp.broadcast_to(attrs[:1], attrs.shape)
    return pw, attrs


def test_random_samplers_shape_and_balance():
    pw, attrs = _right_keys(fixed=False)
    assert pw.shape == (BATCH, K) and pw.dtype == jnp.float32
    assert attrs.shape == (BATCH, A) and attrs.dtype == jnp.float32
    for x in (pw, attrs):
        assert set(np.unique(np.asarray(x))) == {-0.5, 0.5}
        assert abs(float(jnp.mean(x > 0)) - 0.5) < 0.02
        assert abs(float(jnp.mean(x[:, 0] > 0)) - 0.5) < 0.04  # per position too
    other = keys.random_passwords(jax.random.key(5), BATCH, K)
    assert 30 < float(jnp.mean(keys.hamming_distance(pw, other))) < 34  # independent draws
    with pytest.raises(TypeError, match="typed key"):
        keys.random_passwords(jax.random.PRNGKey(0), BATCH, K)


def test_flip_bits_exact_distance():
    vectors, _ = _right_keys(fixed=False)
    flip = jax.jit(keys.flip_bits)
    for d in (0, 1, 2, 4, 8, 16, 32, 64):
        flipped = flip(jax.random.key(d), vectors, d)
        np.testing.assert_array_equal(keys.hamming_distance(flipped, vectors), d)
        assert set(np.unique(np.asarray(flipped))) <= {-0.5, 0.5}
    # The flipped positions are spread evenly over the width (expected 512 hits each).
    hits = np.asarray(flip(jax.random.key(9), vectors, 8) != vectors).sum(axis=0)
    assert hits.min() >= 400 and hits.max() <= 624, hits
    with pytest.raises(ValueError):
        keys.flip_bits(jax.random.key(0), vectors, K + 1)


def test_hamming_distance():
    a = jnp.array([[0.5, -0.5, 0.5], [0.5, 0.5, 0.5]])
    b = jnp.array([[0.5, 0.5, -0.5], [0.5, 0.5, 0.5]])
    np.testing.assert_array_equal(keys.hamming_distance(a, b), [2, 0])


@pytest.mark.parametrize("fixed", [True, False])
def test_wrong_passwords_never_right(fixed):
    right, _ = _right_keys(fixed)
    wrong = keys.wrong_passwords(jax.random.key(7), right)
    d = np.asarray(keys.hamming_distance(wrong, right))
    assert d.min() >= 1
    few = d <= 4
    assert abs(few.mean() - 0.5) < 1.5 / BATCH  # half near misses, half random (distance ~32)
    assert set(np.unique(d[few])) == set(FEW_BITS)
    assert 30 < d[~few].mean() < 34


def test_wrong_passwords_min_distance_and_tiny_width():
    right, _ = _right_keys(fixed=False)
    wrong = keys.wrong_passwords(jax.random.key(9), right, 6, few_bits_fraction=1.0)
    np.testing.assert_array_equal(keys.hamming_distance(wrong, right), 6)
    wrong = keys.wrong_passwords(jax.random.key(9), right, 20, few_bits_fraction=0.0)
    assert np.asarray(keys.hamming_distance(wrong, right)).min() >= 20
    # With 2-bit "passwords" a uniform draw equals the right one a quarter of the time.
    _, tiny = _right_keys(fixed=False)
    tiny = tiny[:, :2]
    wrong = keys.wrong_passwords(jax.random.key(11), tiny, few_bits_fraction=0.0)
    assert np.asarray(keys.hamming_distance(wrong, tiny)).min() >= 1
    for bad in (0, K + 1):
        with pytest.raises(ValueError, match="min_distance"):
            keys.wrong_passwords(jax.random.key(0), right, bad)


@pytest.mark.parametrize("fixed", [True, False])
def test_wrong_keys_kinds(fixed):
    pw, attrs = _right_keys(fixed)
    wrong_pw, wrong_attr, kinds = keys.wrong_keys_with_kinds(jax.random.key(12), pw, attrs)
    d_pw = np.asarray(keys.hamming_distance(wrong_pw, pw))
    d_attr = np.asarray(keys.hamming_distance(wrong_attr, attrs))
    kinds = np.asarray(kinds)
    assert (d_pw + d_attr).min() >= 1  # never the right key
    counts = np.bincount(kinds, minlength=3)
    np.testing.assert_allclose(counts / BATCH, [0.25, 0.25, 0.5], atol=1.5 / BATCH)
    attr_only = kinds == keys.KIND_ATTRIBUTES_ONLY
    few = kinds == keys.KIND_FEW_BITS
    rand = kinds == keys.KIND_RANDOM
    assert (d_pw[attr_only] == 0).all() and (d_attr[attr_only] >= 1).all()
    assert set(np.unique(d_attr[attr_only])) == set(range(1, A + 1))
    assert (d_attr[few] == 0).all() and set(np.unique(d_pw[few])) == set(FEW_BITS)
    assert (d_pw[rand] >= 1).all() and 30 < d_pw[rand].mean() < 34
    assert 1.8 < d_attr[rand].mean() < 2.2  # fresh uniform attributes: A = 4 bits, mean 2
    # Kinds are shuffled over the rows, not blocks at fixed positions.
    assert 0.15 < attr_only[: BATCH // 2].mean() < 0.35


def test_wrong_keys_fractions_and_errors():
    pw, attrs = _right_keys(fixed=False)
    _, _, kinds = keys.wrong_keys_with_kinds(
        jax.random.key(14), pw, attrs, attribute_only_fraction=0.1, few_bits_fraction=0.5
    )
    counts = np.bincount(np.asarray(kinds), minlength=3) / BATCH
    np.testing.assert_allclose(counts, [0.1, 0.5, 0.4], atol=1.5 / BATCH)
    with pytest.raises(ValueError, match="fractions"):
        keys.wrong_keys(jax.random.key(0), pw, attrs, attribute_only_fraction=0.8)
    with pytest.raises(ValueError, match="fractions"):
        keys.wrong_keys(jax.random.key(0), pw, attrs, few_bits_fraction=-0.1)
    with pytest.raises(ValueError, match="key attribute"):
        keys.wrong_keys(jax.random.key(0), pw, attrs[:, :0])


def test_wrong_keys_jit_small_batches():
    """Under jax.jit, with 2 rows: never the right key, and the kinds' shares on average."""
    pw, attrs = _right_keys(fixed=False)
    pw, attrs = pw[:2], attrs[:2]
    sample = jax.jit(keys.wrong_keys)
    draws = [sample(jax.random.key(seed), pw, attrs) for seed in range(400)]
    d_pw = np.asarray(keys.hamming_distance(jnp.stack([w[0] for w in draws]), pw))
    d_attr = np.asarray(keys.hamming_distance(jnp.stack([w[1] for w in draws]), attrs))
    assert d_pw.shape == (400, 2) and (d_pw + d_attr).min() >= 1
    attr_only = d_pw == 0
    few = (d_pw >= 1) & (d_pw <= 4) & (d_attr == 0)  # a random row this close: p ~ 1e-14
    np.testing.assert_allclose([attr_only.mean(), few.mean()], [0.25, 0.25], atol=0.04)


def test_keys_are_deterministic_in_rng():
    pw, attrs = _right_keys(fixed=False)
    a = keys.wrong_keys(jax.random.key(15), pw, attrs)
    b = keys.wrong_keys(jax.random.key(15), pw, attrs)
    c = keys.wrong_keys(jax.random.key(16), pw, attrs)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_condition_vector():
    pw, attrs = _right_keys(fixed=False)
    cond = keys.condition_vector(keys.ANONYMIZE, pw, attrs)
    assert cond.shape == (BATCH, 1 + K + A) and cond.dtype == jnp.float32
    np.testing.assert_array_equal(cond[:, 0], 0.5)
    np.testing.assert_array_equal(cond[:, 1 : 1 + K], pw)
    np.testing.assert_array_equal(cond[:, 1 + K :], attrs)
    direction = jnp.where(jnp.arange(BATCH) % 2 == 0, keys.ANONYMIZE, keys.RECOVER)
    per_row = keys.condition_vector(direction, pw, attrs)
    np.testing.assert_array_equal(per_row[:4, 0], [0.5, -0.5, 0.5, -0.5])
    assert keys.RECOVER == -keys.ANONYMIZE
