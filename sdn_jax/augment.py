"""Image augmentations shared by SDN's classifier and the independent attacker."""

import jax
import jax.numpy as jnp


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
