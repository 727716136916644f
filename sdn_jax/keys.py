"""The key that conditions the decoder: password bits, attribute choices and a direction.

The network sees every password bit and attribute choice as -0.5 / +0.5 (METHOD.md
section 2); a user's key comes from a passphrase (sdn_jax.passphrase). The JAX samplers
here draw the right and wrong keys of the dual training step (METHOD.md section 3) and
build the decoder's condition vector.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

ANONYMIZE = 0.5  # the public direction flag, first entry of the condition vector
RECOVER = -0.5
FEW_BITS_MAX = 4  # "few-bit" wrong passwords differ from the right one in 1..4 bits
KIND_ATTRIBUTES_ONLY, KIND_FEW_BITS, KIND_RANDOM = 0, 1, 2  # wrong-key kinds, per row


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
