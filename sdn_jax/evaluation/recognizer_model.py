"""The attacker's network: a conv trunk with an identity-embedding and an attribute head.

The attacker trains two of them (attacker_training): a recognizer at 32 px that uses the
embedding and an attribute classifier at the data's resolution that uses the logits; each
leaves its other head untrained. It is not SDN's classifier C: other widths, a flattened
(position-keeping) head instead of pooling, its own seed, trained only on original
images. Flattening keeps where things are on the face (eye spacing, jaw, hairline), which
is what still gives a person away when an anonymizer only recolours them; global mean
pooling collapsed in a test run (docs/experiments.md).

Inputs are images in [-1, 1] at any size; they are box-downsampled to `input_size`
first, because a CPU budget buys many more training images at 32 px than at 64 px.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdn_jax.models.layers import ConvNormAct, ResBlock


def resize_to(images: jax.Array, size: int) -> jax.Array:
    """(B, H, W, C) -> (B, size, size, C): a box average for whole factors, else linear."""
    b, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    if h == w and h % size == 0:
        f = h // size
        return images.reshape(b, size, f, size, f, c).mean(axis=(2, 4))
    return jax.image.resize(images, (b, size, size, c), "linear", antialias=True)


class Recognizer(nn.Module):
    """images -> (unit identity embedding (B, D), attribute logits (B, A))."""

    input_size: int = 32
    widths: Sequence[int] = (32, 64, 128)  # a stride-2 stage per width, then res blocks
    res_blocks: int = 1  # per stage after the first
    embedding_dim: int = 128
    num_attributes: int = 40

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = resize_to(images.astype(jnp.float32), self.input_size)
        for i, width in enumerate(self.widths):
            h = ConvNormAct(width, kernel=3, stride=2)(h)
            for _ in range(self.res_blocks if i else 0):
                h = ResBlock(width)(h)
        h = h.reshape(h.shape[0], -1)
        embedding = nn.Dense(self.embedding_dim)(h)
        embedding = embedding / (jnp.linalg.norm(embedding, axis=-1, keepdims=True) + 1e-6)
        return embedding, nn.Dense(self.num_attributes)(h)
