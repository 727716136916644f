"""What the TFDS builders share: the file format, PNG-encoded images, common features.

Examples are yielded as PNG bytes: TFDS would otherwise call TensorFlow to encode
numpy images.
"""

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from sdn_jax.data import attributes

FILE_FORMAT = "array_record"  # Readable without TensorFlow.


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of an (H, W, 3) uint8 image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png", compress_level=1)
    return buffer.getvalue()


def image_feature(size: int) -> tfds.features.Image:
    """An (size, size, 3) uint8 image, stored as PNG."""
    return tfds.features.Image(shape=(size, size, 3), encoding_format="png")


def attributes_feature() -> tfds.features.Tensor:
    """CelebA's 40 attributes as bools, in CelebA's order."""
    return tfds.features.Tensor(shape=(attributes.NUM_ATTRIBUTES,), dtype=np.bool_)
