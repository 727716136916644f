"""The passphrase KDF, bit vectors, weak passphrases and the command line's attributes.

Only the tests of KDF versions 2 and 3 (their pinned vectors, their cost) pay for their
N = 2^17 (~0.4 s a derivation); the others use version 1 (N = 2^14) or bad arguments.
"""

import functools
import logging

import numpy as np
import pytest

from sdn_jax import passphrase

# scrypt(b"correct horse battery staple", salt=b"sdn-jax/password-key/v1", n=2**14, r=8, p=1),
# first 32 bytes. If this changes, every image anonymized so far can no longer be recovered.
PINNED_PASSPHRASE = "correct horse battery staple"
PINNED_HEX = "d09589abb2e7235447e078738f65a500f83260054935a578fd41326d055424e0"
# The same at version 2 with the salt bytes 0..15 (n=2**17, r=8, p=1), first 8 bytes.
PINNED_SALT = bytes(range(16))
PINNED_V2_HEX = "1b2946da71f41179"

KEY_ATTRS = ("Male", "Smiling", "Mustache", "Eyeglasses")
v1_bits = functools.partial(passphrase.password_bits, version=1)


def test_password_bits_pinned_vectors_and_params():
    bits = v1_bits(PINNED_PASSPHRASE, 256)
    assert np.packbits(bits).tobytes().hex() == PINNED_HEX
    v1, v2 = passphrase.KDF_VERSIONS[1], passphrase.KDF_VERSIONS[2]
    assert passphrase.KDF_VERSION == 3 and v1["salt"] == b"sdn-jax/password-key/v1"
    assert (v1["n"], v1["r"], v1["p"]) == (2**14, 8, 1)
    assert v2["salt"] is None and (v2["n"], v2["r"], v2["p"]) == (2**17, 8, 1)
    assert passphrase.KDF_VERSIONS[3] == {**v2, "unchosen_attributes": "key"}
    bits = passphrase.password_bits(PINNED_PASSPHRASE, 64, PINNED_SALT, version=2)
    assert np.packbits(bits).tobytes().hex() == PINNED_V2_HEX


def test_version_3_draws_the_unchosen_attributes_from_the_same_derivation():
    """Its password is version 2's (one scrypt, same parameters); the drawn attribute bits
    are the ones after the password's bytes (pinned: byte 9 of the derivation is 0xe8)."""
    bits, drawn = passphrase.key_bits(PINNED_PASSPHRASE, 64, 6, PINNED_SALT)  # the default: v3
    assert np.packbits(bits).tobytes().hex() == PINNED_V2_HEX
    assert drawn.tolist() == [1, 1, 1, 0, 1, 0]
    assert passphrase.key_bits(PINNED_PASSPHRASE, 64, 6, PINNED_SALT, version=2)[1] is None
    names = ("Smiling", "Mustache", "Eyeglasses")
    choices = {"Smiling": None, "Mustache": False, "Eyeglasses": None}
    vector = passphrase.attributes_to_vector(choices, names, drawn[:3])
    assert vector.tolist() == [0.5, -0.5, 0.5]  # chosen values win; unchosen ones drawn
    assert passphrase.attributes_to_vector(choices, names).tolist() == [-0.5] * 3  # v1, v2: 0
    with pytest.raises(ValueError, match="2 drawn attribute bits for 3 attributes"):
        passphrase.attributes_to_vector(choices, names, drawn[:2])
    with pytest.raises(ValueError, match="at most 64 key attributes"):
        passphrase.key_bits(PINNED_PASSPHRASE, 64, 65, PINNED_SALT)


def test_salts_and_versions_are_checked():
    salt = passphrase.new_salt()
    assert len(salt) == passphrase.SALT_BYTES == 16 and salt != passphrase.new_salt()
    with pytest.raises(ValueError, match="needs a 16-byte salt"):
        passphrase.password_bits("a good long passphrase", 64)
    with pytest.raises(ValueError, match="needs a 16-byte salt"):
        passphrase.password_bits("a good long passphrase", 64, salt[:8])
    with pytest.raises(ValueError, match="has a fixed salt"):
        v1_bits("a good long passphrase", 64, salt)
    with pytest.raises(ValueError, match="unknown key derivation version 4"):
        passphrase.password_bits("a good long passphrase", 64, salt, version=4)
    record = passphrase.kdf_record(2)
    assert record == {"version": 2, "algorithm": "scrypt", "n": 2**17, "r": 8, "p": 1}
    assert passphrase.check_kdf_record(record) == 2
    assert passphrase.check_kdf_record(passphrase.kdf_record(1)) == 1
    assert passphrase.kdf_record() == {**record, "version": 3, "unchosen_attributes": "key"}
    assert passphrase.check_kdf_record(passphrase.kdf_record()) == 3
    with pytest.raises(ValueError, match="unchosen_attributes is None, but key derivation"):
        passphrase.check_kdf_record({**record, "version": 3})  # a v3 record without its field
    # A file cannot lower the cost: its parameters must be its version's.
    for bad, match in (
        ({**record, "n": 2**10}, "n is 1024, but key derivation version 2 is n=131072: refused"),
        ({**record, "n": True}, "n is True"),
        ({**record, "version": "2"}, "version is '2', not a number"),
        ({**record, "version": 9}, "unknown key derivation version 9"),
        (["scrypt"], "is a list, not an object"),
    ):
        with pytest.raises(ValueError, match=match):
            passphrase.check_kdf_record(bad)


def test_weak_passphrases():
    for weak in (" ", "   \t   ", "short", "aaaaaaaaaaaaaaaaaaaa", "abababababababab", "11112222"):
        assert passphrase.is_weak(weak), weak
    for strong in ("correct horse battery staple", "Tr0ub4dor&3xyz", "ünïcödé pässphräse"):
        assert not passphrase.is_weak(strong), strong


def test_password_bits_deterministic_shape_and_range():
    a = v1_bits("hunter2 is not a good passphrase", 64)
    b = v1_bits("hunter2 is not a good passphrase", 64)
    assert a.shape == (64,) and a.dtype == np.uint8 and set(np.unique(a)) <= {0, 1}
    np.testing.assert_array_equal(a, b)
    assert v1_bits("x", 8).shape == (8,)
    assert v1_bits("x", 512).shape == (512,)


def test_password_bits_separation():
    phrases = ["alpha", "alphb", "Alpha", "alpha ", "correct horse", "correct horsf"]
    bits = [v1_bits(p, 64) for p in phrases]
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
        assert np.packbits(v1_bits(text, 64)).tobytes().hex() == "2b93058c0e150c7c"


@pytest.mark.parametrize("num_bits", [0, -8, 7, 12, 520, 1024, 64.0, True])
def test_password_bits_bad_num_bits(num_bits):
    with pytest.raises(ValueError, match="multiple of 8") as err:
        v1_bits("my secret phrase", num_bits)
    assert "my secret phrase" not in str(err.value)


def test_password_bits_bad_passphrase_never_in_error(capsys, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ValueError, match="empty"):
        v1_bits("", 64)
    with pytest.raises(TypeError) as err:
        v1_bits(b"bytes secret", 64)
    assert "bytes secret" not in str(err.value)
    surrogate = "top secret \ud800 phrase"
    with pytest.raises(ValueError) as err:
        v1_bits(surrogate, 64)
    assert "top secret" not in str(err.value) and err.value.__context__ is None
    v1_bits("quiet secret", 64)
    out = capsys.readouterr()
    assert "secret" not in out.out + out.err and not caplog.records


def test_kdf_seconds_per_guess():
    """A guess at the current version costs at least 0.1 s (~0.4 s measured here)."""
    seconds = passphrase.kdf_seconds_per_guess(repeats=1)
    assert 0.1 <= seconds < 10.0


def test_bits_vector_round_trip_and_errors():
    bits = v1_bits("round trip", 64)
    vector = passphrase.bits_to_vector(bits)
    assert vector.dtype == np.float32 and set(np.unique(vector)) == {-0.5, 0.5}
    np.testing.assert_array_equal(vector, np.where(bits == 1, 0.5, -0.5))
    np.testing.assert_array_equal(passphrase.vector_to_bits(vector), bits)
    with pytest.raises(ValueError):
        passphrase.bits_to_vector([0, 1, 2])
    with pytest.raises(ValueError):
        passphrase.vector_to_bits([0.5, 0.0])


def test_parse_attribute_choices():
    parsed = passphrase.parse_attribute_choices(
        " smiling = yes,Male=0 , MUSTACHE=True,Eyeglasses=no, ", KEY_ATTRS
    )
    assert parsed == {"Male": False, "Smiling": True, "Mustache": True, "Eyeglasses": False}
    assert list(parsed) == list(KEY_ATTRS)
    with_defaults = passphrase.parse_attribute_choices(
        "Smiling=1", KEY_ATTRS, defaults={"Male": True, "Mustache": False, "Eyeglasses": False}
    )
    assert with_defaults == {"Male": True, "Smiling": True, "Mustache": False, "Eyeglasses": False}
    unchosen = passphrase.parse_attribute_choices("Smiling=1", KEY_ATTRS, dict.fromkeys(KEY_ATTRS))
    assert unchosen == {"Male": None, "Smiling": True, "Mustache": None, "Eyeglasses": None}


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
        passphrase.parse_attribute_choices(text, KEY_ATTRS, defaults=defaults)


def test_parse_attribute_choices_bad_key_attributes():
    with pytest.raises(ValueError, match="Unknown attribute"):
        passphrase.parse_attribute_choices("Smiling=1", ("Smiling", "Smilling"))
    with pytest.raises(ValueError, match="duplicates"):
        passphrase.parse_attribute_choices("Smiling=1", ("Smiling", "Smiling"))


def test_attributes_vector_round_trip_and_errors():
    choices = {"Smiling": True, "Male": False, "Mustache": True, "Eyeglasses": False}
    vector = passphrase.attributes_to_vector(choices, KEY_ATTRS)
    assert vector.dtype == np.float32
    np.testing.assert_array_equal(vector, [-0.5, 0.5, 0.5, -0.5])  # in KEY_ATTRS order
    assert passphrase.vector_to_attributes(vector, KEY_ATTRS) == choices
    with pytest.raises(ValueError, match="missing"):
        passphrase.attributes_to_vector({"Smiling": True}, KEY_ATTRS)
    with pytest.raises(ValueError, match="extra"):
        passphrase.attributes_to_vector(dict(choices, Young=True), KEY_ATTRS)
    with pytest.raises(ValueError):
        passphrase.vector_to_attributes(vector[:3], KEY_ATTRS)
