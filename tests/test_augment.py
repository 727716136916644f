"""Views of generated faces for the critic: whole-pixel shifts and mirrors."""

import jax
import jax.numpy as jnp
import numpy as np

from sdn_jax import augment


def _images(batch=6, size=8):
    return jax.random.uniform(jax.random.key(0), (batch, size, size, 3), minval=-1.0, maxval=1.0)


def test_shift_and_flip_off_is_the_identity():
    images = _images()
    np.testing.assert_array_equal(augment.shift_and_flip(jax.random.key(1), images, 0, 0.0), images)


def test_flip_always_mirrors_every_image():
    images = _images()
    mirrored = augment.shift_and_flip(jax.random.key(1), images, 0, 1.0)
    np.testing.assert_array_equal(mirrored, images[:, :, ::-1])


def test_each_view_is_its_image_moved_by_whole_pixels_within_the_limit():
    """Every output is its own input shifted by some (dy, dx) with |dy|, |dx| <= 2,
    the uncovered border repeating the edge; over a batch the shifts differ."""
    images = np.asarray(_images(batch=32))
    views = np.asarray(augment.shift_and_flip(jax.random.key(2), jnp.asarray(images), 2, 0.0))
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    found = []
    for image, view in zip(padded, views):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if np.array_equal(image[dy : dy + 8, dx : dx + 8], view)
        ]
        assert len(matches) == 1, matches
        found.append(matches[0])
    assert len(set(found)) > 5  # the offsets are drawn per image


def test_shift_and_flip_passes_gradients_to_every_visible_pixel():
    images = _images(batch=2)
    grad = jax.grad(lambda x: augment.shift_and_flip(jax.random.key(3), x, 2, 0.5).sum())(images)
    # Each output pixel reads one input pixel: the gradient counts how often each is read.
    np.testing.assert_allclose(float(grad.sum()), images.size)
    assert float(grad.min()) >= 0.0
