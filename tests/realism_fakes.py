"""Stand-ins for the realism judge's tests: a cheap feature function in place of the
Inception network (its wiring is tested without running the 299 px network), and
face-like pictures."""

import numpy as np


class FakeFeatures:
    """uint8 (N, H, W, 3) -> float64 (N, 12): per-channel means and standard deviations
    of the whole image and of its centre. Records how many images each call saw."""

    def __init__(self):
        self.calls = []

    def __call__(self, images):
        images = np.asarray(images)
        assert images.dtype == np.uint8 and images.ndim == 4, (images.dtype, images.shape)
        self.calls.append(len(images))
        x = images.astype(np.float64) / 255.0
        h, w = x.shape[1:3]
        centre = x[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
        parts = [x.mean((1, 2)), x.std((1, 2)), centre.mean((1, 2)), centre.std((1, 2))]
        return np.concatenate(parts, axis=1)


def faces(count: int, seed: int, size: int = 32) -> np.ndarray:
    """uint8 face-like pictures: a random background and a random ellipse in the middle,
    with sharp 2-pixel texture (so blur shows)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    images = np.empty((count, size, size, 3), np.float64)
    for i in range(count):
        inside = (xx / rng.uniform(0.2, 0.35)) ** 2 + (yy / rng.uniform(0.3, 0.45)) ** 2 < 1
        images[i] = rng.uniform(0, 255, 3)
        images[i][inside] = rng.uniform(60, 230, 3)
    texture = rng.normal(0, 25, (count, size // 2, size // 2, 1))
    images += np.repeat(np.repeat(texture, 2, axis=1), 2, axis=2)
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)
