"""Building blocks shared by the networks.

No BatchNorm anywhere: batch statistics would make an image's output depend on the
rest of its batch and on how the batch is sharded. GroupNorm normalises per example.
Upsampling is nearest-neighbour resize + conv: XLA:CPU computes a transposed
convolution's kernel gradient ~50x slower than an equivalent convolution.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups of at least 4 channels."""
    groups = max(1, min(8, channels // 4))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(num_groups=groups)


class ConvNormAct(nn.Module):
    """conv -> GroupNorm -> leaky ReLU. The conv has no bias: the norm would remove it."""

    features: int
    kernel: int = 3
    stride: int = 1

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, (self.kernel,) * 2, (self.stride,) * 2, use_bias=False)(x)
        return nn.leaky_relu(group_norm(self.features)(x), 0.2)


class ResBlock(nn.Module):
    """Two 3x3 convs with GroupNorm; optional FiLM (per-example scale and shift).

    film: (batch, 2 * features) or None. FiLM after each norm is how the key (password,
    attributes, direction) reaches every resolution of the decoder.
    """

    features: int

    @nn.compact
    def __call__(self, x, film=None):
        residual = x
        if x.shape[-1] != self.features:
            residual = nn.Conv(self.features, (1, 1), use_bias=False)(x)
        for i in range(2):
            x = nn.Conv(self.features, (3, 3), use_bias=False)(x)
            x = group_norm(self.features)(x)
            if film is not None:
                scale, shift = jnp.split(film[:, i], 2, axis=-1)
                x = x * (1 + scale[:, None, None, :]) + shift[:, None, None, :]
            x = nn.leaky_relu(x, 0.2) if i == 0 else x
        return nn.leaky_relu(residual + x, 0.2)


class FiLMConv(nn.Module):
    """3x3 conv -> GroupNorm -> FiLM (per-example scale, shift) -> leaky ReLU.

    film: (batch, 2 * features). The decoder's one block per resolution above the deepest.
    """

    features: int

    @nn.compact
    def __call__(self, x, film):
        x = nn.Conv(self.features, (3, 3), use_bias=False)(x)
        x = group_norm(self.features)(x)
        scale, shift = jnp.split(film, 2, axis=-1)
        x = x * (1 + scale[:, None, None, :]) + shift[:, None, None, :]
        return nn.leaky_relu(x, 0.2)


def upsample(x: jax.Array) -> jax.Array:
    """x2 nearest-neighbour upsampling (a conv after it does the learning)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def downsample(x: jax.Array) -> jax.Array:
    """x2 average pooling."""
    return nn.avg_pool(x, (2, 2), (2, 2))
