"""Small auxiliary networks: the key predictor Q and the CLUB variational network q.

Q(x_in, x_out) predicts the password bits from an input/output pair: training the
generator to make them predictable maximises a Barber-Agakov lower bound on the
mutual information between the password and the output (different keys must give
different faces).

q(y | x) is a diagonal Gaussian over the anonymized image's identity embedding y given
the original's x; CLUB (Cheng et al. 2020) turns it into an upper bound on I(x; y)
that the generator minimises to remove identity.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdn_jax.models.layers import ConvNormAct


class KeyPredictor(nn.Module):
    num_bits: int
    widths: tuple[int, ...] = (32, 64, 128)

    @nn.compact
    def __call__(self, inputs: jax.Array, outputs: jax.Array) -> jax.Array:
        h = jnp.concatenate([inputs, outputs], axis=-1)
        for width in self.widths:
            h = ConvNormAct(width, kernel=4, stride=2)(h)
        return nn.Dense(self.num_bits)(h.mean(axis=(1, 2)))  # logits of bit = 1


class ClubNetwork(nn.Module):
    hidden: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, dim: int) -> tuple[jax.Array, jax.Array]:
        h = nn.relu(nn.Dense(self.hidden)(x))
        mean = nn.Dense(dim)(h)
        log_var = jnp.tanh(nn.Dense(dim)(h)) * 4.0  # bounded: keeps the bound stable
        return mean, log_var
