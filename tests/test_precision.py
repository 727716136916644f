"""model.dtype = "bfloat16": the networks compute in bfloat16 on float32 parameters and
optimiser states; losses and metrics stay float32 (sdn_jax.models.precision)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_model import fast_jit, tiny_settings

from sdn_jax import objectives
from sdn_jax import settings as settings_lib
from sdn_jax.models import precision, sdn

# bfloat16 keeps 8 bits of mantissa (~0.4% per rounding); over the tiny run's 6 steps the
# loss totals stayed within 0.5% and the recovery loss within 2% of float32's (measured
# on random batches, 8 steps, `--config.model.dtype=bfloat16`): twice that is allowed.
TOLERANCE = {"loss/g_total": 0.01, "loss/recovery": 0.04}


def test_a_network_computes_in_bfloat16_and_keeps_float32_parameters_and_gradients():
    mixed = precision.MixedPrecision(nn.Dense(4), jnp.bfloat16)
    x = jnp.ones((2, 3), jnp.float32)
    params = mixed.init(jax.random.key(0), x)["params"]
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    loss = lambda p: jnp.sum(mixed.apply({"params": p}, x) ** 2)  # noqa: E731
    jaxpr = str(jax.make_jaxpr(loss)(params))
    assert "dot_general" in jaxpr and "bf16[2,4]" in jaxpr  # the product runs in bfloat16
    assert mixed.apply({"params": params}, x).dtype == jnp.float32
    grads = jax.grad(loss)(params)
    assert {leaf.dtype for leaf in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}


def test_float32_leaves_the_networks_as_they_are():
    model = tiny_settings().model
    assert model.dtype == "float32"
    assert all(isinstance(n, nn.Module) for n in sdn.build_networks(model).values())
    with pytest.raises(settings_lib.SettingsError, match="model.dtype"):
        tiny_settings(**{"model.dtype": "float16"})


def test_the_generator_loss_in_bfloat16_follows_float32(settings, networks, params):
    """The tiny model's generator loss, every term on (after the ramp), on one batch of the
    tiny data's size: bfloat16 networks give float32 losses within the tolerances above.
    (In-process: a bfloat16 training run in a subprocess cost CI ~60 CPU s of compiles.)"""
    rng = np.random.default_rng(0)
    size = settings.data.image_size
    batch = {"image": jnp.asarray(rng.uniform(-1, 1, (8, size, size, 3)), jnp.float32),
             "identity": jnp.arange(8) // 2,
             "attributes": jnp.asarray(rng.integers(0, 2, (8, 40)), jnp.int32)}  # fmt: skip
    key = objectives.sample_keys(jax.random.key(5), 8, settings)
    half = precision.with_compute_dtype(networks, "bfloat16")

    def loss(nets):
        step = jnp.int32(10**6)
        return fast_jit(
            lambda: objectives.generator_loss({}, params, nets, batch, key, step, settings)
        )()

    (f32, f32_aux), (bf16, bf16_aux) = loss(networks), loss(half)
    assert math.isfinite(float(bf16))
    assert float(bf16) != float(f32)  # the networks did compute in bfloat16
    assert math.isclose(float(bf16), float(f32), rel_tol=TOLERANCE["loss/g_total"])
    recovery = float(bf16_aux["terms"]["recovery"]), float(f32_aux["terms"]["recovery"])
    assert math.isclose(*recovery, rel_tol=TOLERANCE["loss/recovery"]), recovery
