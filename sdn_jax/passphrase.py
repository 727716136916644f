"""A user's key on the host: passphrase (+ salt) -> password bits, and attribute choices.

A user's passphrase becomes K password bits through scrypt (a standard, memory-hard KDF,
so a guess costs real time); the user also picks values for the configured key
attributes (parsed here from the command line's NAME=VALUE list). The network sees every
bit as -0.5 / +0.5 (METHOD.md section 2); sdn_jax.keys builds the decoder's condition
from these vectors and samples the keys of training.

KDF versions: 1 (one constant salt for everyone, N = 2^14) is kept only so that images
anonymized with it still recover; 2 (a fresh random 128-bit salt per image, N = 2^17)
makes every guess cost ~0.4 s here and every image its own dictionary attack; 3 (2's
scrypt) also draws the key attributes the user leaves unchosen from the same derivation,
so each image (each album) gets its own, secret attribute values: a folder then shares
no attribute choice whose common change an attacker could average and subtract (README
"The key"). Under versions 1 and 2 an unchosen attribute is 0.

Secrecy: nothing derived from a passphrase is logged, printed, stored or put into an
exception message by this module.
"""

import hashlib
import secrets
import time
import types
import unicodedata
from collections.abc import Mapping, Sequence

import numpy as np

from sdn_jax.data.attributes import attribute_indices

# Each version's scrypt parameters are fixed for good: changing one changes every key of
# that version, so the images anonymized with it no longer recover. A new cost is a new
# version. The parameters are looked up by version number, never read from a file: a
# file naming a weak N would turn a recovered image that someone sees into a cheap test
# of passphrase guesses, and a huge one would exhaust memory (README "The key").
KDF_VERSION = 3  # what new outputs use
SALT_BYTES = 16  # 128 bits, from the OS's CSPRNG (new_salt)
KDF_VERSIONS: Mapping[int, Mapping[str, object]] = types.MappingProxyType(
    {
        # The salt is one constant: outputs from before per-image salts.
        1: types.MappingProxyType({"salt": b"sdn-jax/password-key/v1", "n": 2**14, "r": 8, "p": 1}),
        # salt None: each image's own (SALT_BYTES); 128 * r * n = 128 MiB per guess.
        2: types.MappingProxyType({"salt": None, "n": 2**17, "r": 8, "p": 1}),
        # 2, and the unchosen key attributes drawn from the key (UNCHOSEN_FROM_KEY).
        3: types.MappingProxyType(
            {"salt": None, "n": 2**17, "r": 8, "p": 1, "unchosen_attributes": "key"}
        ),
    }
)
UNCHOSEN_FROM_KEY = "key"  # a version's "unchosen_attributes": drawn from the derivation
MAX_PASSWORD_BITS = 512
MAX_KEY_ATTRIBUTES = 64  # what one derivation can draw (CelebA has 40 attributes)
MIN_PASSPHRASE_CHARS = 12  # below this, or with fewer than MIN_DISTINCT_CHARS, a warning
MIN_DISTINCT_CHARS = 5

_TRUE_WORDS = ("1", "true", "yes")
_FALSE_WORDS = ("0", "false", "no")


def kdf_params(version: int) -> Mapping[str, object]:
    """scrypt's parameters of a KDF version; ValueError for a version this code lacks."""
    if isinstance(version, bool) or version not in KDF_VERSIONS:
        raise ValueError(
            f"unknown key derivation version {version!r} (this sdn_jax knows "
            f"{', '.join(map(str, KDF_VERSIONS))}; a newer sdn_jax wrote it?)"
        )
    return KDF_VERSIONS[version]


def kdf_record(version: int = KDF_VERSION) -> dict:
    """What outputs record of how their key was derived (not the salt): public."""
    params = kdf_params(version)
    record = {"version": version, "algorithm": "scrypt", **{k: params[k] for k in "nrp"}}
    if draws_attributes(version):
        record["unchosen_attributes"] = params["unchosen_attributes"]
    return record


def draws_attributes(version: int) -> bool:
    """Whether a KDF version draws the unchosen key attributes from the key (else 0)."""
    return kdf_params(version).get("unchosen_attributes") == UNCHOSEN_FROM_KEY


def check_kdf_record(record) -> int:
    """The version of a kdf_record read from a file; ValueError (naming the field) unless
    its scrypt parameters are exactly that version's (a weaker N is never used)."""
    if not isinstance(record, dict):
        raise ValueError(f"is a {type(record).__name__}, not an object")
    version = record.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"version is {version!r}, not a number")
    expected = kdf_record(version)
    for field, value in expected.items():
        if record.get(field) != value or type(record.get(field)) is not type(value):
            raise ValueError(
                f"{field} is {record.get(field)!r}, but key derivation version {version} "
                f"is {field}={value!r}: refused (a damaged or edited file)"
            )
    return version


def new_salt() -> bytes:
    """A fresh random salt (not secret: it is stored beside the image it salts)."""
    return secrets.token_bytes(SALT_BYTES)


def password_bits(
    passphrase: str, num_bits: int, salt: bytes | None = None, version: int = KDF_VERSION
) -> np.ndarray:
    """scrypt(NFC-normalised UTF-8 passphrase, salt) as num_bits uint8 {0,1}, most
    significant first, at a KDF version: 1 takes no salt (its constant), 2 and 3 need
    one of SALT_BYTES bytes.

    A shorter key is a prefix of a longer one for the same passphrase and salt (scrypt's
    output does not depend on its length), which is harmless: the passphrase is the secret.
    """
    return key_bits(passphrase, num_bits, 0, salt, version)[0]


def key_bits(
    passphrase: str,
    num_bits: int,
    num_attributes: int,
    salt: bytes | None = None,
    version: int = KDF_VERSION,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(password bits, drawn attribute bits) of one scrypt derivation: the password is
    its first num_bits bits; at a version that draws_attributes, the num_attributes bits
    after the password's bytes are the values of unchosen key attributes (else None)."""
    if (
        isinstance(num_bits, bool)
        or not isinstance(num_bits, int | np.integer)
        or not 0 < num_bits <= MAX_PASSWORD_BITS
        or num_bits % 8
    ):
        raise ValueError(
            f"num_bits must be a positive multiple of 8 up to {MAX_PASSWORD_BITS}, got {num_bits!r}"
        )
    if not 0 <= num_attributes <= MAX_KEY_ATTRIBUTES:
        raise ValueError(f"at most {MAX_KEY_ATTRIBUTES} key attributes, got {num_attributes}")
    secret = encode_passphrase(passphrase)
    params = kdf_params(version)
    if params["salt"] is not None:
        if salt is not None:
            raise ValueError(f"key derivation version {version} has a fixed salt; give none")
        salt = params["salt"]
    elif not isinstance(salt, bytes) or len(salt) != SALT_BYTES:
        raise ValueError(f"key derivation version {version} needs a {SALT_BYTES}-byte salt")
    n, r, p = params["n"], params["r"], params["p"]
    drawn = draws_attributes(version) and num_attributes > 0
    attribute_bytes = -(-num_attributes // 8) if drawn else 0
    # maxmem: twice scrypt's 128 * r * n bytes (OpenSSL's default, 32 MiB, is too little)
    dklen = num_bits // 8 + attribute_bytes
    derived = hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * r * n, dklen=dklen)
    bits = np.unpackbits(np.frombuffer(derived, np.uint8))
    if not draws_attributes(version):
        return bits[:num_bits], None
    return bits[:num_bits], bits[num_bits : num_bits + num_attributes]


def encode_passphrase(passphrase: str) -> bytes:
    """The bytes scrypt gets: NFC-normalised UTF-8 (the same text typed on any system
    gives the same key); TypeError/ValueError, holding nothing of it, if unusable."""
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
    return secret


def kdf_seconds_per_guess(repeats: int = 3, version: int = KDF_VERSION) -> float:
    """Fastest of `repeats` derivations of a public dummy passphrase at a KDF version (the
    current one by default): what one brute-force guess costs."""
    salt = None if kdf_params(version)["salt"] is not None else bytes(SALT_BYTES)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        password_bits("kdf timing dummy", 64, salt, version)
        times.append(time.perf_counter() - start)
    return min(times)


def is_weak(passphrase: str) -> bool:
    """Shorter than MIN_PASSPHRASE_CHARS, or fewer than MIN_DISTINCT_CHARS different
    characters (one repeated character, whitespace only): a warning, never a refusal."""
    text = unicodedata.normalize("NFC", passphrase)
    distinct = set(text.casefold())
    return (
        len(text) < MIN_PASSPHRASE_CHARS or len(distinct) < MIN_DISTINCT_CHARS or not text.strip()
    )


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
    error unless `defaults` gives its value (None: unchosen, attributes_to_vector).
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
    return {
        n: given[n] if n in given else None if defaults[n] is None else _parse_bool(n, defaults[n])
        for n in names
    }


def attributes_to_vector(
    choices: Mapping[str, bool | None], key_attributes: Sequence[str], drawn_bits=None
) -> np.ndarray:
    """{name: bool, or None: unchosen} with exactly the key attributes -> float32
    {-0.5, +0.5} in their order. An unchosen attribute takes its bit of `drawn_bits`
    (key_bits' drawn attributes, in key_attributes order) or, without them, 0."""
    names = _key_attribute_names(key_attributes)
    missing, extra = [n for n in names if n not in choices], sorted(set(choices) - set(names))
    if missing or extra:
        raise ValueError(
            f"choices must name exactly {list(names)}; missing {missing}, extra {extra}"
        )
    if drawn_bits is not None and len(drawn_bits) != len(names):
        raise ValueError(f"{len(drawn_bits)} drawn attribute bits for {len(names)} attributes")
    drawn = [False] * len(names) if drawn_bits is None else [bool(b) for b in drawn_bits]
    values = [drawn[i] if choices[n] is None else _parse_bool(n, choices[n])
              for i, n in enumerate(names)]  # fmt: skip
    return np.array([0.5 if v else -0.5 for v in values], np.float32)


def vector_to_attributes(vector, key_attributes: Sequence[str]) -> dict[str, bool]:
    """float {-0.5, +0.5} (A,) -> {name: bool} in key_attributes order."""
    names = _key_attribute_names(key_attributes)
    bits = vector_to_bits(vector)
    if bits.shape != (len(names),):
        raise ValueError(f"Expected a ({len(names)},) vector, got shape {bits.shape}")
    return {n: bool(b) for n, b in zip(names, bits, strict=True)}
