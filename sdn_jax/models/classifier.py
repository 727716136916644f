"""Feature extractor / classifier C, trained from scratch on real images.

Three heads on one trunk: identity logits over the training people, attribute logits
(40, multi-label), and an L2-normalised identity embedding f(x) that the identity
losses compare (it also works for people C never saw).
"""

from collections.abc import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from sdn_jax.models.layers import ConvNormAct, ResBlock


@flax.struct.dataclass
class ClassifierOutput:
    identity_logits: jax.Array  # (B, num_identities)
    attribute_logits: jax.Array  # (B, num_attributes)
    embedding: jax.Array  # (B, embedding_dim), unit norm


class Classifier(nn.Module):
    num_identities: int
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
        # Cosine logits with a fixed scale (a normalised softmax): identity decisions and
        # the embedding then agree, so the embedding identifies people C never saw.
        weights = self.param(
            "identity_weights",
            nn.initializers.normal(1.0),
            (self.embedding_dim, self.num_identities),
        )
        weights = weights / (jnp.linalg.norm(weights, axis=0, keepdims=True) + 1e-6)
        identity_logits = 16.0 * embedding @ weights
        attribute_logits = nn.Dense(self.num_attributes)(pooled)
        return ClassifierOutput(identity_logits, attribute_logits, embedding)
