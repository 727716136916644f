"""Image value conversions: uint8 pixels, the model's float [-1, 1], and [0, 1].

uint8 0 and 255 map to exactly -1 and 1 (127.5 is exact in float32); `to_uint8` rounds
half to even and clips, so `to_uint8(from_uint8(p))` gives every pixel back.

`to_uint8` and `round_to_uint8` return numpy. `from_uint8`, `to_unit` and `from_unit`
return what they are given: numpy for numpy (or lists), a jax array for a jax array
(or a tracer, inside jit). The two are not always equal to the last bit: XLA turns the
division by 127.5 into a multiplication by its reciprocal, so `from_uint8` of a jax
array differs from numpy's for most pixel values by one float32 ulp. Keep code that
converted with jax doing so (pass it a jax array), and numpy code with numpy.
"""

import sys

import numpy as np


def _array_module(x):
    """jax.numpy for a jax array or tracer, else numpy (jax is not imported for this)."""
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(x, jax.Array):
        import jax.numpy as jnp  # noqa: PLC0415 (already imported with jax)

        return jnp
    return np


def round_to_uint8(values) -> np.ndarray:
    """Values on the 0..255 scale -> uint8: rounded half to even, clipped to [0, 255]."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def to_uint8(images) -> np.ndarray:
    """Float images in [-1, 1] -> uint8, as an 8-bit image file stores them (computed in
    float32; values outside [-1, 1] clip to 0 or 255)."""
    return round_to_uint8((np.asarray(images, np.float32) + 1.0) * 127.5)


def from_uint8(pixels):
    """uint8 [0, 255] -> float32 [-1, 1], as the input pipeline scales images."""
    xp = _array_module(pixels)
    return xp.asarray(pixels).astype(xp.float32) / 127.5 - 1.0


def to_unit(images):
    """Float [-1, 1] -> float32 [0, 1]."""
    xp = _array_module(images)
    return (xp.asarray(images, xp.float32) + 1.0) / 2.0


def from_unit(images):
    """Float [0, 1] -> float32 [-1, 1]."""
    xp = _array_module(images)
    return xp.asarray(images, xp.float32) * 2.0 - 1.0


def gaussian_blur(pixels, sigma: float) -> np.ndarray:
    """uint8 (..., H, W, C) images blurred with a Gaussian of `sigma` pixels, each channel
    on its own (scipy.ndimage, edges reflected), rounded back to uint8: the realism
    report's "visibly degraded, still a face" reference."""
    import scipy.ndimage  # noqa: PLC0415 (only the evaluation blurs; keeps this module light)

    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim < 3:
        raise ValueError(f"Expected uint8 images (..., H, W, C), got {pixels.dtype} {pixels.shape}")
    axes = (0,) * (pixels.ndim - 3) + (sigma, sigma, 0)
    blurred = scipy.ndimage.gaussian_filter(pixels.astype(np.float64), axes, mode="reflect")
    return round_to_uint8(blurred)
