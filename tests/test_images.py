"""Image value conversions: uint8 <-> [-1, 1] <-> [0, 1]."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdn_jax import images

PIXELS = np.arange(256, dtype=np.uint8)


def test_every_uint8_value_round_trips_exactly():
    x = images.from_uint8(PIXELS)
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    assert x[0] == -1.0 and x[255] == 1.0 and np.all(np.diff(x) > 0)
    np.testing.assert_array_equal(images.to_uint8(x), PIXELS)
    # Through jax too (its float values may differ from numpy's in the last bit).
    x_jax = images.from_uint8(jnp.asarray(PIXELS))
    assert isinstance(x_jax, jax.Array) and x_jax.dtype == jnp.float32
    np.testing.assert_array_equal(images.to_uint8(x_jax), PIXELS)
    np.testing.assert_array_equal(images.to_uint8(jax.jit(images.from_uint8)(PIXELS)), PIXELS)


def test_to_uint8_clips_and_rounds_half_to_even():
    x = np.array([-3.0, -1.0001, -1.0, 1.0, 1.0001, 7.0, -np.inf, np.inf])
    np.testing.assert_array_equal(images.to_uint8(x), [0, 0, 0, 255, 255, 255, 0, 255])
    np.testing.assert_array_equal(images.to_uint8([0.5 / 127.5 - 1, 0.0]), [0, 128])  # 127.5
    assert images.to_uint8(np.zeros((2, 3, 3, 3))).dtype == np.uint8
    np.testing.assert_array_equal(
        images.round_to_uint8([-0.6, 0.5, 1.5, 254.4, 255.6, 1e9]), [0, 0, 2, 254, 255, 255]
    )


def test_unit_range_round_trip():
    x = np.random.default_rng(0).uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
    unit = images.to_unit(x)
    assert unit.dtype == np.float32 and unit.min() >= 0.0 and unit.max() <= 1.0
    np.testing.assert_array_equal(images.to_unit(np.array([-1.0, 0.0, 1.0])), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(images.from_unit(np.array([0.0, 0.5, 1.0])), [-1.0, 0.0, 1.0])
    np.testing.assert_allclose(images.from_unit(unit), x, atol=1e-7)
    assert isinstance(images.to_unit(jnp.asarray(x)), jax.Array)
    assert isinstance(images.from_unit(jnp.asarray(unit)), jax.Array)


def test_gaussian_blur_is_scipys_per_channel_filter_rounded_to_uint8():
    import scipy.ndimage

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 9, 11, 3), dtype=np.uint8)
    blurred = images.gaussian_blur(pixels, 1.0)
    assert blurred.dtype == np.uint8 and blurred.shape == pixels.shape
    channel = scipy.ndimage.gaussian_filter(pixels[1, :, :, 2].astype(float), 1.0, mode="reflect")
    np.testing.assert_array_equal(blurred[1, :, :, 2], images.round_to_uint8(channel))
    # Flat images stay flat (edges reflect, nothing leaks in); a blur lowers contrast and
    # keeps the mean; channels and images do not mix.
    flat = np.full((2, 6, 6, 3), [10, 200, 77], np.uint8)
    np.testing.assert_array_equal(images.gaussian_blur(flat, 1.0), flat)
    assert blurred.std() < pixels.std() and abs(blurred.mean() - pixels.mean()) < 1.0
    one = images.gaussian_blur(pixels[:1], 1.0)
    np.testing.assert_array_equal(one, blurred[:1])
    np.testing.assert_array_equal(images.gaussian_blur(pixels[0], 1.0), blurred[0])  # one image
    with pytest.raises(ValueError, match="uint8"):
        images.gaussian_blur(pixels.astype(np.float32), 1.0)
