"""The key: passphrase KDF, bit/attribute vectors, and the right/wrong key samplers."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdn_jax import keys

# scrypt(b"correct horse battery staple", salt=b"sdn-jax/password-key/v1", n=2**14, r=8, p=1),
# first 32 bytes. If this changes, every image anonymized so far can no longer be recovered.
PINNED_PASSPHRASE = "correct horse battery staple"
PINNED_HEX = "d09589abb2e7235447e078738f65a500f83260054935a578fd41326d055424e0"

KEY_ATTRS = ("Male", "Smiling", "Mustache", "Eyeglasses")
# Every sampler test uses these shapes, so each jitted core compiles once for the module.
BATCH, K, A = 4096, 64, len(KEY_ATTRS)
FEW_BITS = (1, 2, 3, 4)


def test_password_bits_pinned_vector_and_params():
    bits = keys.password_bits(PINNED_PASSPHRASE, 256)
    assert np.packbits(bits).tobytes().hex() == PINNED_HEX
    assert keys.KDF_VERSION == 1 and keys.KDF_PARAMS["salt"] == b"sdn-jax/password-key/v1"
    assert (keys.KDF_PARAMS["n"], keys.KDF_PARAMS["r"], keys.KDF_PARAMS["p"]) == (2**14, 8, 1)


def test_password_bits_deterministic_shape_and_range():
    a = keys.password_bits("hunter2 is not a good passphrase", 64)
    b = keys.password_bits("hunter2 is not a good passphrase", 64)
    assert a.shape == (64,) and a.dtype == np.uint8 and set(np.unique(a)) <= {0, 1}
    np.testing.assert_array_equal(a, b)
    assert keys.password_bits("x", 8).shape == (8,)
    assert keys.password_bits("x", 512).shape == (512,)


def test_password_bits_separation():
    phrases = ["alpha", "alphb", "Alpha", "alpha ", "correct horse", "correct horsf"]
    bits = [keys.password_bits(p, 64) for p in phrases]
    distances = [
        int(np.sum(bits[i] != bits[j])) for i in range(len(bits)) for j in range(i + 1, len(bits))
    ]
    assert all(16 <= d <= 48 for d in distances), distances  # expected 32, sd 4
    assert 26 <= np.mean(distances) <= 38


def test_password_bits_nfc_normalisation():
    composed, decomposed = "caf\u00e9 au lait", "cafe\u0301 au lait"
    assert composed != decomposed
    for text in (composed, decomposed):
        # scrypt of the NFC UTF-8 bytes b"caf\xc3\xa9 au lait" (NFD would give e0f7267a...).
        assert np.packbits(keys.password_bits(text, 64)).tobytes().hex() == "2b93058c0e150c7c"


@pytest.mark.parametrize("num_bits", [0, -8, 7, 12, 520, 1024, 64.0, True])
def test_password_bits_bad_num_bits(num_bits):
    with pytest.raises(ValueError, match="multiple of 8") as err:
        keys.password_bits("my secret phrase", num_bits)
    assert "my secret phrase" not in str(err.value)


def test_password_bits_bad_passphrase_never_in_error(capsys, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ValueError, match="empty"):
        keys.password_bits("", 64)
    with pytest.raises(TypeError) as err:
        keys.password_bits(b"bytes secret", 64)
    assert "bytes secret" not in str(err.value)
    surrogate = "top secret \ud800 phrase"
    with pytest.raises(ValueError) as err:
        keys.password_bits(surrogate, 64)
    assert "top secret" not in str(err.value) and err.value.__context__ is None
    keys.password_bits("quiet secret", 64)
    out = capsys.readouterr()
    assert "secret" not in out.out + out.err and not caplog.records


def test_kdf_seconds_per_guess():
    seconds = keys.kdf_seconds_per_guess(repeats=1)
    assert 1e-4 < seconds < 10.0


def test_bits_vector_round_trip_and_errors():
    bits = keys.password_bits("round trip", 64)
    vector = keys.bits_to_vector(bits)
    assert vector.dtype == np.float32 and set(np.unique(vector)) == {-0.5, 0.5}
    np.testing.assert_array_equal(vector, np.where(bits == 1, 0.5, -0.5))
    np.testing.assert_array_equal(keys.vector_to_bits(vector), bits)
    with pytest.raises(ValueError):
        keys.bits_to_vector([0, 1, 2])
    with pytest.raises(ValueError):
        keys.vector_to_bits([0.5, 0.0])


def test_parse_attribute_choices():
    parsed = keys.parse_attribute_choices(
        " smiling = yes,Male=0 , MUSTACHE=True,Eyeglasses=no, ", KEY_ATTRS
    )
    assert parsed == {"Male": False, "Smiling": True, "Mustache": True, "Eyeglasses": False}
    assert list(parsed) == list(KEY_ATTRS)
    with_defaults = keys.parse_attribute_choices(
        "Smiling=1", KEY_ATTRS, defaults={"Male": True, "Mustache": False, "Eyeglasses": False}
    )
    assert with_defaults == {"Male": True, "Smiling": True, "Mustache": False, "Eyeglasses": False}


@pytest.mark.parametrize(
    ("text", "defaults", "match"),
    [
        ("Smiling=1,Male=0,Mustache=0,Eyeglasses=0,Bald=1", None, "Unknown attribute.*Male"),
        ("Smiling=maybe,Male=0,Mustache=0,Eyeglasses=0", None, "Bad value.*true.*false"),
        ("Smiling,Male=0,Mustache=0,Eyeglasses=0", None, "NAME=VALUE"),
        ("Smiling=1,smiling=0,Male=0,Mustache=0,Eyeglasses=0", None, "twice"),
        ("Smiling=1,Male=0", None, "Mustache"),
        ("Smiling=1,Male=0", {"Mustache": False}, "Eyeglasses"),
        ("Smiling=1", {"Male": 0, "Mustache": 0, "Eyeglasses": 0, "Young": 1}, "Young"),
    ],
)
def test_parse_attribute_choices_errors(text, defaults, match):
    with pytest.raises(ValueError, match=match):
        keys.parse_attribute_choices(text, KEY_ATTRS, defaults=defaults)


def test_parse_attribute_choices_bad_key_attributes():
    with pytest.raises(ValueError, match="Unknown attribute"):
        keys.parse_attribute_choices("Smiling=1", ("Smiling", "Smilling"))
    with pytest.raises(ValueError, match="duplicates"):
        keys.parse_attribute_choices("Smiling=1", ("Smiling", "Smiling"))


def test_attributes_vector_round_trip_and_errors():
    choices = {"Smiling": True, "Male": False, "Mustache": True, "Eyeglasses": False}
    vector = keys.attributes_to_vector(choices, KEY_ATTRS)
    assert vector.dtype == np.float32
    np.testing.assert_array_equal(vector, [-0.5, 0.5, 0.5, -0.5])  # in KEY_ATTRS order
    assert keys.vector_to_attributes(vector, KEY_ATTRS) == choices
    with pytest.raises(ValueError, match="missing"):
        keys.attributes_to_vector({"Smiling": True}, KEY_ATTRS)
    with pytest.raises(ValueError, match="extra"):
        keys.attributes_to_vector(dict(choices, Young=True), KEY_ATTRS)
    with pytest.raises(ValueError):
        keys.vector_to_attributes(vector[:3], KEY_ATTRS)


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
