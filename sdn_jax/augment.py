"""Image augmentations shared by SDN's classifier and the independent attacker."""

import jax
import jax.numpy as jnp

from sdn_jax.images import from_unit, to_unit


def damage_patch(key: jax.Array, images: jax.Array, probability: float) -> jax.Array:
    """Overwrites a random box around the face centre in `probability` of the images.

    The box (15-45% of the height, 20-60% of the width, centred in the middle 40% of the
    frame) becomes a * x + c (a in [0, 0.6], c a random colour): erased, darkened, banded
    or tinted. An anonymizer that scrambles the eyes and mouth but keeps the outline, the
    hair and the pose must still be caught, so the attacker learns to use them too.
    """
    b, h, w, _ = images.shape
    k = jax.random.split(key, 5)
    centre = jax.random.uniform(k[0], (b, 2), minval=0.3, maxval=0.7) * jnp.array([h, w])
    half = jax.random.uniform(
        k[1], (b, 2), minval=jnp.array([0.075, 0.1]), maxval=jnp.array([0.225, 0.3])
    )
    half = half * jnp.array([h, w])
    rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
    inside = (jnp.abs(rows + 0.5 - centre[:, 0, None, None]) < half[:, 0, None, None]) & (
        jnp.abs(cols + 0.5 - centre[:, 1, None, None]) < half[:, 1, None, None]
    )
    chosen = jax.random.bernoulli(k[2], probability, (b, 1, 1))
    gain = jax.random.uniform(k[3], (b, 1, 1, 1), maxval=0.6)
    colour = jax.random.uniform(k[4], (b, 1, 1, 3), minval=-0.8, maxval=0.8)
    patched = jnp.clip(images * gain + colour, -1.0, 1.0)
    return jnp.where((inside & chosen)[..., None], patched, images)


def _hue_rotation(theta: jax.Array) -> jax.Array:
    """(B,) angles -> (B, 3, 3) rotations of RGB about the grey axis (hue shifts)."""
    c, s = jnp.cos(theta)[:, None, None], jnp.sin(theta)[:, None, None]
    cross = jnp.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / jnp.sqrt(3.0)
    return c * jnp.eye(3) + (1.0 - c) * jnp.full((3, 3), 1.0 / 3.0) + s * cross


def recolour(key: jax.Array, images: jax.Array, probability: float) -> jax.Array:
    """Random colour changes of `probability` of the images (float [-1, 1] NHWC).

    Each chosen image gets a hue rotation (any angle), a per-channel gain (x0.6 to x1.65),
    a brightness factor (x0.5 to x1.3) and, one time in five, grey; the change covers the
    whole image or, half of the time, a smooth random region of it (as a retouched face
    in an unchanged background).
    """
    b, h, w, _ = images.shape
    k = jax.random.split(key, 7)
    x = to_unit(images)
    y = jnp.einsum("bhwc,bdc->bhwd", x, _hue_rotation(jax.random.uniform(k[0], (b,)) * 2 * jnp.pi))
    y = y * jnp.exp(jax.random.uniform(k[1], (b, 1, 1, 3), minval=-0.5, maxval=0.5))
    y = y * jnp.exp(jax.random.uniform(k[2], (b, 1, 1, 1), minval=-0.7, maxval=0.25))
    grey = jax.random.bernoulli(k[3], 0.2, (b, 1, 1, 1))
    y = jnp.clip(jnp.where(grey, y.mean(-1, keepdims=True), y), 0.0, 1.0)
    region = jax.random.uniform(k[4], (b, 3, 3, 1))
    region = jax.image.resize(region, (b, h, w, 1), "linear")
    everywhere = jax.random.bernoulli(k[5], 0.5, (b, 1, 1, 1))
    chosen = jax.random.bernoulli(k[6], probability, (b, 1, 1, 1))
    weight = jnp.where(everywhere, 1.0, region) * chosen
    return from_unit(x + weight * (y - x))
