"""Discriminator D: a PatchGAN at several scales (full and half resolution by default)."""

from collections.abc import Sequence

import flax.linen as nn
import jax

from sdn_jax.models.layers import downsample


class PatchDiscriminator(nn.Module):
    """Strided convs to a map of real/fake scores, one per overlapping patch."""

    widths: Sequence[int] = (32, 64, 128)

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.widths):
            x = nn.Conv(width, (4, 4), (2, 2))(x)
            if i > 0:
                x = nn.GroupNorm(num_groups=min(8, width // 4))(x)
            x = nn.leaky_relu(x, 0.2)
        return nn.Conv(1, (3, 3))(x)[..., 0]


class Discriminator(nn.Module):
    """One PatchGAN per scale; returns a list of score maps (LSGAN targets 1 real, 0 fake)."""

    widths: Sequence[int] = (32, 64, 128)
    num_scales: int = 2

    @nn.compact
    def __call__(self, images: jax.Array) -> list[jax.Array]:
        scores = []
        for scale in range(self.num_scales):
            if scale:
                images = downsample(images)
            scores.append(PatchDiscriminator(self.widths, name=f"scale_{scale}")(images))
        return scores
