"""Bilinear image warping: how the decoder can move features instead of repainting them.

Identity lives largely in geometry (eye spacing, jaw, mouth shape); a residual colour
change leaves it in place. A smooth displacement field moves it, and moving back by the
negated field nearly undoes a small smooth move, which the inverse recovery relies on.
"""

import jax
import jax.numpy as jnp


def warp(images: jax.Array, flow: jax.Array) -> jax.Array:
    """images (B, H, W, C) sampled at (y + flow_y, x + flow_x), bilinearly, edges clamped.

    flow: (B, H, W, 2) displacements in pixels, (dy, dx). Differentiable in both.
    """
    b, h, w, c = images.shape
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=images.dtype), jnp.arange(w, dtype=images.dtype),
                          indexing="ij")  # fmt: skip
    y = jnp.clip(ys[None] + flow[..., 0], 0.0, h - 1.0)
    x = jnp.clip(xs[None] + flow[..., 1], 0.0, w - 1.0)
    y0 = jnp.floor(y)
    x0 = jnp.floor(x)
    wy, wx = (y - y0)[..., None], (x - x0)[..., None]
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
    flat = images.reshape(b, h * w, c)

    def gather(yi, xi):
        index = (yi * w + xi).reshape(b, h * w, 1)
        return jnp.take_along_axis(flat, index, axis=1).reshape(b, h, w, c)

    top = gather(y0, x0) * (1 - wx) + gather(y0, x1) * wx
    bottom = gather(y1, x0) * (1 - wx) + gather(y1, x1) * wx
    return top * (1 - wy) + bottom * wy
