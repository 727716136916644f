"""Decoder G: (latent, condition) -> image, conditioned through FiLM at every resolution.

The condition (direction flag, password vector, attribute vector) and the latent vector z
go through one MLP; per-block linear heads turn its output into FiLM scales and shifts.
With `residual_output` the decoder predicts a change to its input image (in tanh's
pre-activation space), so background and pose come for free and only what the key asks
for has to be drawn.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdn_jax.models.encoder import Latent
from sdn_jax.models.layers import FiLMConv, ResBlock, upsample

# Inputs are pulled inside (-1, 1) before arctanh so that saturated pixels stay finite.
_INPUT_SQUASH = 0.98


class Decoder(nn.Module):
    widths: Sequence[int] = (16, 32, 64, 128)  # finest first, as in the encoder
    num_res_blocks: int = 2  # at the deepest level
    condition_hidden: int = 128
    use_skips: Sequence[bool] = (True, True, True)  # per level, finest first
    residual_output: bool = True
    # Scale of the output layer's initial weights. Small but not zero: at zero the first
    # steps' outputs ignore the key, and the key-dependent losses have nothing to grip.
    output_init_scale: float = 0.1

    @nn.compact
    def __call__(self, latent: Latent, condition: jax.Array, inputs: jax.Array) -> jax.Array:
        embedding = jnp.concatenate([condition, latent.vector], axis=-1)
        embedding = nn.leaky_relu(nn.Dense(self.condition_hidden)(embedding), 0.2)
        embedding = nn.leaky_relu(nn.Dense(self.condition_hidden)(embedding), 0.2)

        def film(width):
            return nn.Dense(2 * 2 * width)(embedding).reshape(-1, 2, 2 * width)

        h = latent.features
        for _ in range(self.num_res_blocks):
            h = ResBlock(self.widths[-1])(h, film(self.widths[-1]))
        for level in reversed(range(len(self.widths) - 1)):
            width = self.widths[level]
            # Channels shrink before upsampling (cheap at low resolution); one FiLM conv
            # per level keeps the full-resolution work small.
            h = upsample(nn.Conv(width, (1, 1))(h))
            if self.use_skips[level]:
                h = jnp.concatenate([h, latent.skips[level]], axis=-1)
            h = FiLMConv(width)(h, nn.Dense(2 * width)(embedding))
        out = nn.Conv(
            3,
            (3, 3),
            kernel_init=nn.initializers.variance_scaling(
                self.output_init_scale, "fan_in", "truncated_normal"
            ),
        )(h)
        if self.residual_output:
            out = out + jnp.arctanh(_INPUT_SQUASH * inputs)
        return jnp.tanh(out)
