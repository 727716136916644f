"""Decoder G: (latent, condition) -> image, conditioned through FiLM at every resolution.

The condition (direction flag, password vector, attribute vector) and the latent vector z
go through one MLP; per-block linear heads turn its output into FiLM scales and shifts.
With `residual_output` the decoder predicts a change to its input image (in tanh's
pre-activation space), so background and pose come for free and only what the key asks
for has to be drawn.

Two options make the key hard to ignore (docs/experiments.md, "the key pathway"):
- `recovery="inverse"`: the direction flag no longer enters the MLP; the decoder draws
  one key-dependent change r(latent, key) and *adds* it to anonymize, *subtracts* it to
  recover. A wrong key then subtracts another key's change, u + r(p) - r(p'), which is
  as far from the original as two anonymizations are from each other; with
  `recovery="conditioned"` (the paper's) a recovery that ignores the key is as good as
  any, and the wrong-key output came back to the original.
- `key_features` > 0: the password and attribute vector first pass through a fixed
  random Fourier map [sin(Wk), cos(Wk)] with W ~ N(0, key_frequency^2): one flipped bit
  moves every feature's phase by ~key_frequency radians, so a near-miss key looks to
  the network like any other key (a key schedule, not a smooth code). The last
  `num_attributes` key entries (the attribute choices) are also passed as they are, so
  "draw a smile" stays one readable input.
"""

from collections.abc import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from sdn_jax.models.encoder import Latent
from sdn_jax.models.layers import FiLMConv, ResBlock, upsample

# Inputs are pulled inside (-1, 1) before arctanh so saturated pixels stay finite.
_INPUT_SQUASH = 0.98


@flax.struct.dataclass
class DecoderEdit:
    """Additive changes inside G for latent-space editing (sdn_jax.latent): `inputs` is
    added to the condition MLP's input [key features, attribute choices, z], `embedding`
    to its output (what every FiLM head reads). Either may be None (no change)."""

    inputs: jax.Array | None = None  # (B, MLP input size) or broadcastable
    embedding: jax.Array | None = None  # (B, condition_hidden) or broadcastable


class Decoder(nn.Module):
    widths: Sequence[int] = (16, 32, 64, 128)  # finest first, as in the encoder
    num_res_blocks: int = 2  # at the deepest level
    condition_hidden: int = 128
    use_skips: Sequence[bool] = (True, True, True)  # per level, finest first
    residual_output: bool = True
    # Scale of the output layer's initial weights. Small but not zero: at zero the first
    # steps' outputs ignore the key, and the key-dependent losses have nothing to grip.
    output_init_scale: float = 0.1
    recovery: str = "conditioned"  # or "inverse": recover = minus the anonymizing change
    key_features: int = 0  # size of the fixed Fourier key map (0: the raw key vector)
    key_frequency: float = 3.0  # std of the Fourier map's frequencies, radians per bit
    num_attributes: int = 0  # trailing key entries that are attribute choices

    @nn.compact
    def __call__(
        self,
        latent: Latent,
        condition: jax.Array,
        inputs: jax.Array,
        edit: DecoderEdit | None = None,
    ) -> jax.Array:
        direction, key = condition[:, :1], condition[:, 1:]
        if self.key_features:
            attributes = key[:, key.shape[-1] - self.num_attributes :]
            key = jnp.concatenate([self._fourier_key(key), attributes], axis=-1)
        parts = [key, latent.vector]
        if self.recovery == "conditioned":
            parts.insert(0, direction)
        embedding = jnp.concatenate(parts, axis=-1)
        if edit is not None and edit.inputs is not None:
            embedding = embedding + edit.inputs
        embedding = nn.leaky_relu(nn.Dense(self.condition_hidden)(embedding), 0.2)
        embedding = nn.leaky_relu(nn.Dense(self.condition_hidden)(embedding), 0.2)
        if edit is not None and edit.embedding is not None:
            embedding = embedding + edit.embedding

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
        if self.recovery == "inverse":
            # The flag is ANONYMIZE (+0.5) or RECOVER (-0.5): add or subtract the change.
            forward = (jnp.sign(direction) > 0)[:, :, None, None]
            out = jnp.where(forward, out, -out)
        if self.residual_output:
            out = out + jnp.arctanh(_INPUT_SQUASH * inputs)
        return jnp.tanh(out)

    def _fourier_key(self, key: jax.Array) -> jax.Array:
        """W is drawn at init and never trained (stop_gradient): a fixed key schedule."""
        init = nn.initializers.normal(self.key_frequency)
        projection = self.param("key_projection", init, (key.shape[-1], self.key_features // 2))
        return fourier_features(key, jax.lax.stop_gradient(projection))


def fourier_features(key: jax.Array, projection: jax.Array) -> jax.Array:
    """[sin(k W), cos(k W)]: (batch, key size) x (key size, F/2) -> (batch, F)."""
    phase = key @ projection
    return jnp.concatenate([jnp.sin(phase), jnp.cos(phase)], axis=-1)
