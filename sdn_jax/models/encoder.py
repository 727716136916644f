"""Encoder E: image -> latent (a spatial map at H/8, skips, and a pooled vector z)."""

from collections.abc import Sequence

import flax.linen as nn
import flax.struct
import jax

from sdn_jax.models.layers import ConvNormAct, ResBlock


@flax.struct.dataclass
class Latent:
    """What the decoder reads. `vector` (z) is what latent-space editing moves."""

    features: jax.Array  # (B, H/8, W/8, widths[-1])
    skips: tuple[jax.Array, ...]  # finest first: (B, H, W, widths[0]), (B, H/2, ...), ...
    vector: jax.Array  # (B, latent_dim)


class Encoder(nn.Module):
    """Conv stem at full resolution, strided convs down to H/2^(len(widths)-1), res blocks."""

    widths: Sequence[int] = (16, 32, 64, 128)
    num_res_blocks: int = 2
    latent_dim: int = 128

    @nn.compact
    def __call__(self, images: jax.Array) -> Latent:
        h = ConvNormAct(self.widths[0])(images)
        skips = [h]
        for width in self.widths[1:]:
            h = ConvNormAct(width, kernel=4, stride=2)(h)
            skips.append(h)
        skips.pop()  # The deepest level is the latent map itself.
        for _ in range(self.num_res_blocks):
            h = ResBlock(self.widths[-1])(h)
        vector = nn.Dense(self.latent_dim)(h.mean(axis=(1, 2)))
        return Latent(features=h, skips=tuple(skips), vector=vector)
