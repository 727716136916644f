"""Decoder G: (latent, condition) -> image, conditioned through FiLM at every resolution.

The condition (direction flag, password vector, attribute vector) and the latent vector z
go through one MLP; per-block linear heads turn its output into FiLM scales and shifts.
With `residual_output` the decoder predicts a change to its input image (in tanh's
pre-activation space, or one with a linear interior: `linear_range`), so background and
pose come for free and only what the key asks for has to be drawn.

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
- `warp_pixels` > 0 (with "inverse"): G also draws a smooth displacement field f (at most
  this many pixels) and anonymizes as warp(u, f) + r, recovers as warp(u - r, -f): the
  face's geometry, where identity lives, can move instead of only its colours.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdn_jax.models.encoder import Latent
from sdn_jax.models.layers import FiLMConv, ResBlock, downsample, upsample
from sdn_jax.models.warp import warp

# Inputs are pulled inside (-1, 1) before `to_change_space` so saturated pixels stay finite.
_INPUT_SQUASH = 0.98


def from_change_space(u: jax.Array, linear_range: float) -> jax.Array:
    """R -> (-1, 1), the map from the space G draws its change in to pixels: the identity
    on [-a, a] (a = linear_range) and a tanh rim beyond it, joined with slope 1; a = 0 is
    plain tanh. With tanh, moving a pixel near +-1 costs G several times the change that
    moves a mid-grey one, so bright skin and black hair barely change. Measured (e33 in
    docs/experiments.md, "What the attacker still links"): at a = 0.8 they changed as
    much as the rest, but the attacker linked more faces, so the default stays tanh."""
    if linear_range == 0:
        return jnp.tanh(u)
    a = linear_range
    rim = a + (1.0 - a) * jnp.tanh((jnp.abs(u) - a) / (1.0 - a))
    return jnp.where(jnp.abs(u) <= a, u, jnp.sign(u) * rim)


def to_change_space(x: jax.Array, linear_range: float) -> jax.Array:
    """The inverse of `from_change_space`, for pixels strictly inside (-1, 1)."""
    if linear_range == 0:
        return jnp.arctanh(x)
    a = linear_range
    # Clipped so that the branch jnp.where discards stays finite (no NaN gradients).
    inner = jnp.clip((jnp.abs(x) - a) / (1.0 - a), 0.0, 1.0 - 1e-6)
    rim = a + (1.0 - a) * jnp.arctanh(inner)
    return jnp.where(jnp.abs(x) <= a, x, jnp.sign(x) * rim)


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
    warp_pixels: float = 0.0  # largest displacement of the key's warp (0: no warp)
    # Pixels within +-linear_range change at a cost that does not depend on their value
    # (from_change_space); 0: tanh's pre-activation space.
    linear_range: float = 0.0

    @nn.compact
    def __call__(self, latent: Latent, condition: jax.Array, inputs: jax.Array) -> jax.Array:
        if self.recovery not in ("conditioned", "inverse"):
            raise ValueError(f"recovery must be 'conditioned' or 'inverse', got {self.recovery!r}")
        if self.recovery == "inverse" and not self.residual_output:
            raise ValueError("recovery='inverse' subtracts a change: it needs residual_output")
        if self.warp_pixels and self.recovery != "inverse":
            raise ValueError("warp_pixels needs recovery='inverse' (recovery warps back)")
        direction, key = condition[:, :1], condition[:, 1:]
        if self.key_features:
            attributes = key[:, key.shape[-1] - self.num_attributes :]
            key = jnp.concatenate([self._fourier_key(key), attributes], axis=-1)
        parts = [key, latent.vector]
        if self.recovery == "conditioned":
            parts.insert(0, direction)
        embedding = jnp.concatenate(parts, axis=-1)
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
        to_pixels = functools.partial(from_change_space, linear_range=self.linear_range)
        base = to_change_space(_INPUT_SQUASH * inputs, self.linear_range)
        if self.recovery == "inverse":
            # The flag is ANONYMIZE (+0.5) or RECOVER (-0.5): add or subtract the change.
            forward = (jnp.sign(direction) > 0)[:, :, None, None]
            if self.warp_pixels:
                flow = self._flow(h, inputs.shape[1:3])
                anonymized = warp(base, flow) + out
                recovered = warp(base - out, -flow)
                return to_pixels(jnp.where(forward, anonymized, recovered))
            out = jnp.where(forward, out, -out)
        if self.residual_output:
            out = out + base
        return to_pixels(out)

    def _flow(self, h: jax.Array, size) -> jax.Array:
        """A smooth (B, H, W, 2) field in pixels: drawn at 1/4 resolution, then upsampled."""
        coarse = downsample(downsample(h))
        coarse = nn.Conv(
            2,
            (3, 3),
            kernel_init=nn.initializers.variance_scaling(0.1, "fan_in", "truncated_normal"),
        )(coarse)
        coarse = self.warp_pixels * jnp.tanh(coarse)
        return jax.image.resize(coarse, (h.shape[0], *size, 2), "linear")

    def _fourier_key(self, key: jax.Array) -> jax.Array:
        """W is drawn at init and never trained (stop_gradient): a fixed key schedule."""
        init = nn.initializers.normal(self.key_frequency)
        projection = self.param("key_projection", init, (key.shape[-1], self.key_features // 2))
        return fourier_features(key, jax.lax.stop_gradient(projection))


def fourier_features(key: jax.Array, projection: jax.Array) -> jax.Array:
    """[sin(k W), cos(k W)]: (batch, key size) x (key size, F/2) -> (batch, F)."""
    phase = key @ projection
    return jnp.concatenate([jnp.sin(phase), jnp.cos(phase)], axis=-1)
