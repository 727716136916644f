"""Copies of 8-bit images as they leave a user's hands: PNG, JPEG and resized.

Every copy is encoded in memory by Pillow and decoded again; uint8 (N, S, S, 3) in and out.
"""

import io

import numpy as np
from PIL import Image


def _through_pillow(images: np.ndarray, save) -> np.ndarray:
    """Each uint8 image saved to memory by `save(image, file)` and decoded again."""
    copies = []
    for image in images:
        buffer = io.BytesIO()
        save(Image.fromarray(image), buffer)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            copies.append(np.asarray(decoded.convert("RGB")))
    return np.stack(copies)


def png_copies(images: np.ndarray) -> np.ndarray:
    return _through_pillow(images, lambda im, f: im.save(f, format="PNG"))


def jpeg_copies(images: np.ndarray, quality: int) -> np.ndarray:
    """Pillow JPEG at `quality` (its default chroma subsampling, 4:2:0 below 100)."""
    return _through_pillow(images, lambda im, f: im.save(f, format="JPEG", quality=int(quality)))


def resized_copies(images: np.ndarray, factor: int) -> np.ndarray:
    """Down by `factor` and back up, bicubic both ways (Pillow), as a site's thumbnail."""
    size = images.shape[1]
    small = max(1, size // int(factor))

    def save(image, file):
        bicubic = Image.Resampling.BICUBIC
        image.resize((small, small), bicubic).resize((size, size), bicubic).save(file, "PNG")

    return _through_pillow(images, save)
