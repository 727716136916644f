"""Sample grids: one row per example, columns original | anonymized | recovered |
recovered with a wrong password | recovered with the right password, wrong attributes."""

import os

import numpy as np
from PIL import Image

from sdn_jax.evaluation.heldout import OUTPUTS
from sdn_jax.images import to_uint8

COLUMNS = ("original", *OUTPUTS)


def sample_grid(original, outputs: dict, gap: int = 2) -> np.ndarray:
    columns = [to_uint8(original)] + [to_uint8(outputs[name]) for name in OUTPUTS]
    n, h, w, _ = columns[0].shape
    grid = np.full((n * (h + gap) - gap, len(columns) * (w + gap) - gap, 3), 255, np.uint8)
    for c, images in enumerate(columns):
        for r in range(n):
            grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = images[r]
    return grid


def write_samples(workdir: str, step: int, original, outputs: dict) -> str:
    path = os.path.join(workdir, "samples", f"step_{step:06d}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(sample_grid(original, outputs)).save(path)
    return path
