"""Mixed precision: a network that computes in bfloat16 on float32 parameters.

`model.dtype = "bfloat16"` wraps each network in `MixedPrecision`: its parameters and
inputs are cast to bfloat16 where they enter it and its outputs cast back to float32
where they leave it. The parameters, their gradients (the cast's gradient casts back)
and the optimiser states stay float32, and so does everything outside the networks:
the losses, the key sampling, the metrics. On TPUs and recent GPUs bfloat16 convolutions
and matrix products run at about twice the float32 rate with half the activation memory;
float32 weights keep small Adam updates from rounding away.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _cast_floats(tree, dtype):
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x,
        tree,
    )


@dataclasses.dataclass(frozen=True)
class MixedPrecision:
    """`network` with `apply` in `dtype` (float32 in and out); `init` as the network's."""

    network: nn.Module
    dtype: jnp.dtype

    def init(self, *args, **kwargs):
        return self.network.init(*args, **kwargs)  # float32 parameters

    def apply(self, variables, *args, **kwargs):
        variables, args, kwargs = _cast_floats((variables, args, kwargs), self.dtype)
        return _cast_floats(self.network.apply(variables, *args, **kwargs), jnp.float32)


def with_compute_dtype(networks: dict, dtype: str) -> dict:
    """The networks as they are for float32 (the same objects: nothing changes), else each
    wrapped in MixedPrecision."""
    if dtype == "float32":
        return networks
    return {name: MixedPrecision(network, DTYPES[dtype]) for name, network in networks.items()}
