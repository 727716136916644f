"""The key that conditions the decoder: password bits, attribute choices and a direction.

A user's passphrase becomes K password bits through scrypt (a standard, memory-hard KDF,
so a guess costs real time); the user also picks values for the configured key
attributes. The network sees every bit as -0.5 / +0.5 (METHOD.md section 2). The JAX
samplers draw the right and wrong keys of the dual training step (METHOD.md section 3).

Secrecy: nothing derived from a passphrase is logged, printed, stored or put into an
exception message by this module.
"""

import functools
import hashlib
import time
import types
import unicodedata
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
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

ANONYMIZE = 0.5  # the public direction flag, first entry of the condition vector
RECOVER = -0.5
FEW_BITS_MAX = 4  # "few-bit" wrong passwords differ from the right one in 1..4 bits
KIND_ATTRIBUTES_ONLY, KIND_FEW_BITS, KIND_RANDOM = 0, 1, 2  # wrong-key kinds, per row

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


# ----------------------------------------------------------------- JAX samplers (jittable)
# Public samplers check their arguments in Python, then call a jitted core: eager calls
# compile once per shape instead of op by op, and inside a caller's jit the cores inline.
# Each core draws all its randomness with ONE jax.random.bits call and slices it: every
# random op is a separate threefry kernel for XLA, and those dominate compile time on CPU.


def _check_key(rng) -> None:
    if not jax.dtypes.issubdtype(getattr(rng, "dtype", None), jax.dtypes.prng_key):
        raise TypeError("rng must be a typed key from jax.random.key, not a raw uint32 PRNGKey")


def _columns(rng, batch: int, widths: Sequence[int]) -> list[jax.Array]:
    """One (batch, sum(widths)) uint32 draw, cut into column blocks of the given widths."""
    bits = jax.random.bits(rng, (batch, sum(widths)), jnp.uint32)
    return jnp.split(bits, np.cumsum(widths)[:-1].tolist(), axis=-1)


def _signs(bits: jax.Array) -> jax.Array:
    """Uniform {-0.5, +0.5} from the top bit of random uint32s."""
    return jnp.where(bits >> 31 == 1, 0.5, -0.5).astype(jnp.float32)


def _uniform_int(bits: jax.Array, low, high) -> jax.Array:
    """Uniform integers in [low, high] (bias below (high - low + 1) / 2**32)."""
    return low + (bits % jnp.asarray(high - low + 1, jnp.uint32)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _random_signs(rng, batch: int, width: int) -> jax.Array:
    return _signs(_columns(rng, batch, (width,))[0])


def random_passwords(rng, batch: int, num_bits: int) -> jax.Array:
    """(batch, num_bits) uniform random password bits in {-0.5, +0.5}."""
    _check_key(rng)
    return _random_signs(rng, batch, num_bits)


def random_attributes(rng, batch: int, num_attributes: int) -> jax.Array:
    """(batch, num_attributes) uniform random attribute choices in {-0.5, +0.5}."""
    _check_key(rng)
    return _random_signs(rng, batch, num_attributes)


@jax.jit
def hamming_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """Number of positions where two {-0.5, +0.5} vectors differ, per row (int32)."""
    return jnp.sum((a > 0) != (b > 0), axis=-1).astype(jnp.int32)


def _flip_rows(noise: jax.Array, vectors: jax.Array, distances) -> jax.Array:
    """Negates exactly distances[i] distinct, uniformly chosen positions of row i.

    `noise` (random uint32, vectors' shape) gets each position's index in its low bits,
    so a row's values are distinct and its d smallest are exactly d positions (one
    integer sort: far cheaper on CPU than two float argsorts). Ties in the random high
    bits, which favour lower indices, have probability < width**2 / 2**24 per row.
    """
    width = vectors.shape[-1]
    index_bits = max(1, (width - 1).bit_length())
    tags = noise >> index_bits << index_bits | jnp.arange(width, dtype=jnp.uint32)
    distances = jnp.broadcast_to(jnp.asarray(distances, jnp.int32), vectors.shape[:-1])
    last = jnp.clip(distances - 1, 0, width - 1)[..., None]
    kth = jnp.take_along_axis(jnp.sort(tags, axis=-1), last, axis=-1)
    return jnp.where((tags <= kth) & (distances[..., None] > 0), -vectors, vectors)


@jax.jit
def _flip_bits(rng, vectors, distance):
    return _flip_rows(jax.random.bits(rng, vectors.shape, jnp.uint32), vectors, distance)


def flip_bits(rng, vectors: jax.Array, distance) -> jax.Array:
    """Flips exactly `distance` distinct random positions in every row (0 <= distance <= width)."""
    _check_key(rng)
    if isinstance(distance, int) and not 0 <= distance <= vectors.shape[-1]:
        raise ValueError(f"distance must be in [0, {vectors.shape[-1]}], got {distance}")
    return _flip_bits(rng, vectors, distance)


def _random_other(sign_bits, fix_bits, right: jax.Array, min_distance: int = 1) -> jax.Array:
    """Uniform random rows; the rare one closer than min_distance to `right` is replaced."""
    draw = _signs(sign_bits)
    too_close = hamming_distance(draw, right) < min_distance
    return jnp.where(too_close[:, None], _flip_rows(fix_bits, right, min_distance), draw)


def _assign_kinds(order_bits: jax.Array, offset_bits: jax.Array, fractions) -> jax.Array:
    """Row kinds 0..len(fractions) (the last takes the rest) by systematic sampling.

    Each kind's count is floor or ceil of fraction * batch, with the exact expectation at
    any batch size; the rows holding each kind are then shuffled (argsort of order_bits).
    """
    batch = order_bits.shape[0]
    offset = (offset_bits >> 8).astype(jnp.float32) / 2**24  # uniform in [0, 1)
    u = (jnp.arange(batch) + offset) / batch
    edges = jnp.cumsum(jnp.stack([jnp.asarray(f, jnp.float32) for f in fractions]))
    kinds = jnp.sum(u[:, None] >= edges[None, :], axis=-1).astype(jnp.int32)
    return kinds[jnp.argsort(order_bits)]


def _check_fractions(*fractions) -> None:
    if all(isinstance(f, int | float) for f in fractions):
        if min(fractions) < 0 or sum(fractions) > 1:
            raise ValueError(f"fractions must be >= 0 and sum to <= 1, got {fractions}")


def wrong_passwords(rng, right: jax.Array, min_distance=1, *, few_bits_fraction=0.5):
    """(batch, K) passwords each >= min_distance bits away from its row of `right`.

    A `few_bits_fraction` of rows flip min_distance..max(min_distance, 4) bits of the right
    password (the near misses a cliff in recovery quality must reject); the others are
    uniform random passwords, the rare one too close to `right` replaced by a flip.
    """
    _check_key(rng)
    width = right.shape[-1]
    if isinstance(min_distance, int) and not 1 <= min_distance <= width:
        raise ValueError(f"min_distance must be in [1, {width}], got {min_distance}")
    _check_fractions(few_bits_fraction)
    return _wrong_passwords(rng, right, min_distance, few_bits_fraction)


@jax.jit
def _wrong_passwords(rng, right, min_distance, few_bits_fraction):
    batch, width = right.shape
    order, offset, dist, few_noise, signs, fix = _columns(rng, batch, (1, 1, 1) + (width,) * 3)
    is_few = _assign_kinds(order[:, 0], offset[0, 0], (few_bits_fraction,)) == 0
    top = jnp.minimum(jnp.maximum(min_distance, FEW_BITS_MAX), width)
    few = _flip_rows(few_noise, right, _uniform_int(dist[:, 0], min_distance, top))
    return jnp.where(is_few[:, None], few, _random_other(signs, fix, right, min_distance))


def wrong_keys_with_kinds(
    rng, password, attributes, *, attribute_only_fraction=0.25, few_bits_fraction=0.25
):
    """Wrong (password, attributes) per row, never equal to the right key, and each row's kind.

    KIND_ATTRIBUTES_ONLY rows keep the password and flip d ~ U{1..A} attribute bits (the
    right password with a wrong attribute choice); KIND_FEW_BITS rows keep the attributes
    and flip d ~ U{1..4} password bits; KIND_RANDOM rows get a random password (never the
    right one) and random attributes. Kind counts follow the fractions (see _assign_kinds).
    """
    _check_key(rng)
    _check_fractions(attribute_only_fraction, few_bits_fraction)
    if attributes.shape[-1] == 0 and not (
        isinstance(attribute_only_fraction, int | float) and attribute_only_fraction == 0
    ):
        raise ValueError("attribute-only wrong keys need at least one key attribute")
    return _wrong_keys(rng, password, attributes, attribute_only_fraction, few_bits_fraction)


@jax.jit
def _wrong_keys(rng, password, attributes, attribute_only_fraction, few_bits_fraction):
    (batch, k), a = password.shape, attributes.shape[-1]
    order, offset, d_attr, d_bits, pw_noise, attr_noise, pw_signs, pw_fix, attr_signs = _columns(
        rng, batch, (1, 1, 1, 1, k, a, k, k, a)
    )
    kinds = _assign_kinds(order[:, 0], offset[0, 0], (attribute_only_fraction, few_bits_fraction))
    few_pw = _flip_rows(pw_noise, password, _uniform_int(d_bits[:, 0], 1, min(FEW_BITS_MAX, k)))
    other_attr = _flip_rows(attr_noise, attributes, _uniform_int(d_attr[:, 0], 1, max(a, 1)))
    rand_pw = _random_other(pw_signs, pw_fix, password)
    rand_attr = _signs(attr_signs)
    kind = kinds[:, None]
    attr_only, few = kind == KIND_ATTRIBUTES_ONLY, kind == KIND_FEW_BITS
    wrong_pw = jnp.where(attr_only, password, jnp.where(few, few_pw, rand_pw))
    wrong_attr = jnp.where(attr_only, other_attr, jnp.where(few, attributes, rand_attr))
    return wrong_pw, wrong_attr, kinds


def wrong_keys(rng, password, attributes, *, attribute_only_fraction=0.25, few_bits_fraction=0.25):
    """wrong_keys_with_kinds without the kinds: (wrong_password, wrong_attributes)."""
    fractions = dict(
        attribute_only_fraction=attribute_only_fraction, few_bits_fraction=few_bits_fraction
    )
    return wrong_keys_with_kinds(rng, password, attributes, **fractions)[:2]


def condition_vector(direction, password: jax.Array, attributes: jax.Array) -> jax.Array:
    """(batch, 1 + K + A) float32: [direction, password, attributes], the decoder's condition.

    `direction` is ANONYMIZE or RECOVER, a scalar or one per row.
    """
    batch = password.shape[0]
    direction = jnp.asarray(direction, jnp.float32)
    direction = jnp.broadcast_to(
        direction[:, None] if direction.ndim == 1 else direction, (batch, 1)
    )
    parts = (direction, password.astype(jnp.float32), attributes.astype(jnp.float32))
    return jnp.concatenate(parts, axis=-1)
