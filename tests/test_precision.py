"""model.dtype = "bfloat16": the networks compute in bfloat16 on float32 parameters and
optimiser states; losses and metrics stay float32 (sdn_jax.models.precision)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from runs import train_lines
from tiny_model import tiny_settings

from sdn_jax import settings as settings_lib
from sdn_jax.models import precision, sdn

# bfloat16 keeps 8 bits of mantissa (~0.4% per rounding); over the tiny run's 6 steps the
# loss totals stayed within 0.5% and the recovery loss within 2% of float32's (measured
# on random batches, 8 steps): twice that is allowed.
TOLERANCE = {"loss/g_total": 0.01, "loss/d_total": 0.01, "loss/c_total": 0.01,
             "loss/recovery": 0.04}  # fmt: skip


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


@pytest.mark.slow
def test_the_tiny_run_trains_in_bfloat16_as_in_float32(bfloat16_job, trained_run):
    workdir, result = bfloat16_job.result()
    assert result.returncode == 0, result.stderr[-3000:]  # a NaN would have stopped it
    bf16, f32 = train_lines(workdir), train_lines(trained_run)
    assert sorted(bf16) == sorted(f32) == [2, 4, 6]
    for step in f32:
        for key, tolerance in TOLERANCE.items():
            assert math.isfinite(bf16[step][key])
            assert math.isclose(bf16[step][key], f32[step][key], rel_tol=tolerance), (
                f"step {step} {key}: bfloat16 {bf16[step][key]} vs float32 {f32[step][key]}"
            )
