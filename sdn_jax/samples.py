"""Sample grids: one row per example, columns original | anonymized | recovered |
recovered with a wrong password | recovered with the right password, wrong attributes.

Faces are enlarged with nearest neighbour to about DISPLAY_SIZE pixels (a 32 px face
becomes 128 px), so a person can look at them without an image viewer's smoothing.
"""

import os

import numpy as np
from PIL import Image

from sdn_jax.evaluation.heldout import OUTPUTS
from sdn_jax.images import to_uint8

COLUMNS = ("original", *OUTPUTS)
DISPLAY_SIZE = 128  # pixels a face is enlarged to (an integer factor, at least 1)


def display_scale(size: int) -> int:
    """The integer factor that brings a `size` px face to about DISPLAY_SIZE."""
    return max(1, DISPLAY_SIZE // size)


def enlarge(images: np.ndarray, scale: int) -> np.ndarray:
    """(..., H, W, C) -> (..., H * scale, W * scale, C), each pixel a scale x scale block."""
    return np.repeat(np.repeat(images, scale, axis=-3), scale, axis=-2)


def tile(images: np.ndarray, gap: int = 2, column_gap: int | None = None) -> np.ndarray:
    """uint8 (rows, columns, H, W, 3) -> one picture on white, `gap` pixels apart (between
    columns `column_gap`, if given)."""
    rows, columns, h, w, _ = images.shape
    column_gap = gap if column_gap is None else column_gap
    grid = np.full(
        (rows * (h + gap) - gap, columns * (w + column_gap) - column_gap, 3), 255, np.uint8
    )
    for r in range(rows):
        for c in range(columns):
            top, left = r * (h + gap), c * (w + column_gap)
            grid[top : top + h, left : left + w] = images[r, c]
    return grid


def sample_grid(original, outputs: dict, gap: int = 2) -> np.ndarray:
    columns = [to_uint8(original)] + [to_uint8(outputs[name]) for name in OUTPUTS]
    faces = np.stack(columns, axis=1)  # (rows, columns, H, W, 3)
    return tile(enlarge(faces, display_scale(faces.shape[2])), gap)


def write_samples(workdir: str, step: int, original, outputs: dict) -> str:
    path = os.path.join(workdir, "samples", f"step_{step:06d}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(sample_grid(original, outputs)).save(path)
    return path
