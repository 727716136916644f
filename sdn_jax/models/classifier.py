"""Feature extractor / classifier C, trained from scratch on real images.

Two heads on one trunk: attribute logits (40, multi-label) and an L2-normalised
identity embedding f(x) that the identity losses compare. The embedding learns from
pairs (a contrastive loss), so it also works for people C never saw; a softmax over the
training people learned nothing in a short run (docs/experiments.md, session 3).
"""

from collections.abc import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from sdn_jax.models.layers import ConvNormAct, ResBlock


@flax.struct.dataclass
class ClassifierOutput:
    attribute_logits: jax.Array  # (B, num_attributes)
    embedding: jax.Array  # (B, embedding_dim), unit norm


class Classifier(nn.Module):
    num_attributes: int = 40
    widths: Sequence[int] = (16, 32, 64)
    embedding_dim: int = 64
    # The identity embedding reads every position of the last feature map (as the
    # attacker's recognizer does) instead of the mean and max over positions: it then
    # knows where things are (hairline, jaw, eye spacing), so a face that keeps its layout
    # and changes only what lies inside it no longer fools it.
    flatten_embedding: bool = False

    @nn.compact
    def __call__(self, images: jax.Array) -> ClassifierOutput:
        # Strided conv first: identity lives in shapes and colours that survive H/2.
        h = ConvNormAct(self.widths[0], kernel=4, stride=2)(images)
        for width in self.widths[1:]:
            h = ConvNormAct(width, kernel=4, stride=2)(h)
            h = ResBlock(width)(h)
        # Mean and max pooling: the mean says who it is; the max finds small local
        # features (glasses frames, a mustache) that averaging over the face drowns:
        # mean-pooled heads stayed at the attribute prior for 800 steps, max-pooled
        # ones reached ~0.94 (docs/experiments.md).
        pooled = jnp.concatenate([h.mean(axis=(1, 2)), h.max(axis=(1, 2))], axis=-1)
        features = h.reshape(h.shape[0], -1) if self.flatten_embedding else pooled
        embedding = nn.Dense(self.embedding_dim)(features)
        embedding = embedding / (jnp.linalg.norm(embedding, axis=-1, keepdims=True) + 1e-6)
        attribute_logits = nn.Dense(self.num_attributes)(pooled)
        return ClassifierOutput(attribute_logits, embedding)
