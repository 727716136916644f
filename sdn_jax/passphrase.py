"""A user's key on the host: passphrase -> password bits, and attribute choices.

A user's passphrase becomes K password bits through scrypt (a standard, memory-hard KDF,
so a guess costs real time); the user also picks values for the configured key
attributes (parsed here from the command line's NAME=VALUE list). The network sees every
bit as -0.5 / +0.5 (METHOD.md section 2); sdn_jax.keys builds the decoder's condition
from these vectors and samples the keys of training.

Secrecy: nothing derived from a passphrase is logged, printed, stored or put into an
exception message by this module.
"""

import hashlib
import time
import types
import unicodedata
from collections.abc import Mapping, Sequence

import numpy as np

from sdn_jax.data.attributes import attribute_indices

# Changing the version, salt or cost changes every passphrase's bits, so every image
# anonymized before can no longer be recovered: bump KDF_VERSION (and the salt) on purpose.
KDF_VERSION = 1
KDF_PARAMS: Mapping[str, object] = types.MappingProxyType(
    {
        "salt": b"sdn-jax/password-key/v1",
        "n": 2**14,  # CPU/memory cost: scrypt needs 128 * r * n bytes = 16 MiB per guess
        "r": 8,
        "p": 1,
        "maxmem": 64 * 2**20,  # room for the 16 MiB above; OpenSSL's default is 32 MiB
    }
)
MAX_PASSWORD_BITS = 512

_TRUE_WORDS = ("1", "true", "yes")
_FALSE_WORDS = ("0", "false", "no")


def password_bits(passphrase: str, num_bits: int) -> np.ndarray:
    """scrypt(NFC-normalised UTF-8 passphrase) as num_bits uint8 {0,1}, most significant first.

    A shorter key is a prefix of a longer one for the same passphrase (scrypt's output
    does not depend on its length), which is harmless: the passphrase is the secret.
    """
    if (
        isinstance(num_bits, bool)
        or not isinstance(num_bits, int | np.integer)
        or not 0 < num_bits <= MAX_PASSWORD_BITS
        or num_bits % 8
    ):
        raise ValueError(
            f"num_bits must be a positive multiple of 8 up to {MAX_PASSWORD_BITS}, got {num_bits!r}"
        )
    if not isinstance(passphrase, str):
        raise TypeError(f"passphrase must be a str, not {type(passphrase).__name__}")
    if not passphrase:
        raise ValueError("passphrase must not be empty")
    try:
        secret = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate; the error object would hold the passphrase
        secret = None
    if secret is None:  # raised outside `except` so no exception chains to the one above
        raise ValueError("passphrase is not valid Unicode text (it holds a lone surrogate)")
    derived = hashlib.scrypt(secret, dklen=num_bits // 8, **KDF_PARAMS)
    return np.unpackbits(np.frombuffer(derived, np.uint8))


def kdf_seconds_per_guess(repeats: int = 3) -> float:
    """Fastest of `repeats` derivations of a public dummy passphrase: a brute-force cost."""
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        password_bits("kdf timing dummy", 64)
        times.append(time.perf_counter() - start)
    return min(times)


def bits_to_vector(bits) -> np.ndarray:
    """{0,1} bits (any shape) as the network's float32 {-0.5, +0.5}."""
    bits = np.asarray(bits)
    if not np.isin(bits, (0, 1)).all():
        raise ValueError("bits must all be 0 or 1")
    return np.where(bits.astype(bool), 0.5, -0.5).astype(np.float32)


def vector_to_bits(vector) -> np.ndarray:
    """float {-0.5, +0.5} (any shape) back to uint8 {0,1}."""
    vector = np.asarray(vector)
    if not (np.abs(vector) == 0.5).all():
        raise ValueError("key vectors must hold only -0.5 and +0.5")
    return (vector > 0).astype(np.uint8)


def _key_attribute_names(key_attributes: Sequence[str]) -> tuple[str, ...]:
    names = tuple(key_attributes)
    attribute_indices(names)  # unknown CelebA names -> ValueError listing the valid ones
    if len(set(names)) != len(names):
        raise ValueError(f"key_attributes has duplicates: {list(names)}")
    return names


def _parse_bool(name: str, value) -> bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    word = str(value).strip().lower()
    if word not in _TRUE_WORDS + _FALSE_WORDS:
        raise ValueError(
            f"Bad value {value!r} for attribute {name}; use one of "
            f"{'/'.join(_TRUE_WORDS)} (true) or {'/'.join(_FALSE_WORDS)} (false)"
        )
    return word in _TRUE_WORDS


def parse_attribute_choices(
    text: str, key_attributes: Sequence[str], defaults: Mapping[str, bool] | None = None
) -> dict[str, bool]:
    """'Smiling=1, Mustache=no' -> {name: bool} for every key attribute, in their order.

    Names match case-insensitively; values are 1/0, true/false or yes/no. The result is
    part of the key, so nothing is silently assumed: a key attribute not in `text` is an
    error unless `defaults` gives its value.
    """
    names = _key_attribute_names(key_attributes)
    canonical = {name.lower(): name for name in names}
    given: dict[str, bool] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        raw_name, sep, raw_value = item.partition("=")
        name = canonical.get(raw_name.strip().lower())
        if not sep:
            raise ValueError(f"Attribute choice {item.strip()!r} is not NAME=VALUE")
        if name is None:
            valid = ", ".join(names)
            raise ValueError(
                f"Unknown attribute {raw_name.strip()!r}; the key attributes are: {valid}"
            )
        if name in given:
            raise ValueError(f"Attribute {name} is given twice")
        given[name] = _parse_bool(name, raw_value)
    defaults = dict(defaults or {})
    unknown = sorted(set(defaults) - set(names))
    if unknown:
        raise ValueError(f"defaults name non-key attributes {unknown}; key attributes: {names}")
    missing = [n for n in names if n not in given and n not in defaults]
    if missing:
        raise ValueError(f"No value given for key attribute(s) {missing} (and no default)")
    return {n: given[n] if n in given else _parse_bool(n, defaults[n]) for n in names}


def attributes_to_vector(choices: Mapping[str, bool], key_attributes: Sequence[str]) -> np.ndarray:
    """{name: bool} with exactly the key attributes -> float32 {-0.5, +0.5} in their order."""
    names = _key_attribute_names(key_attributes)
    missing, extra = [n for n in names if n not in choices], sorted(set(choices) - set(names))
    if missing or extra:
        raise ValueError(
            f"choices must name exactly {list(names)}; missing {missing}, extra {extra}"
        )
    return np.array([0.5 if _parse_bool(n, choices[n]) else -0.5 for n in names], np.float32)


def vector_to_attributes(vector, key_attributes: Sequence[str]) -> dict[str, bool]:
    """float {-0.5, +0.5} (A,) -> {name: bool} in key_attributes order."""
    names = _key_attribute_names(key_attributes)
    bits = vector_to_bits(vector)
    if bits.shape != (len(names),):
        raise ValueError(f"Expected a ({len(names)},) vector, got shape {bits.shape}")
    return {n: bool(b) for n, b in zip(names, bits, strict=True)}
