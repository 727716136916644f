"""compiler.jit: the project's compiler options, checked once, applied at the first call."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdn_jax import compiler


def _conv(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.fixture
def fresh_options():
    compiler.default_options.cache_clear()
    yield
    compiler.default_options.cache_clear()


def test_convolutions_leave_ynn_and_give_the_same_result():
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 16))  # large enough for YNN
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 16, 32))
    # Full optimisation, as users compile (the tests' XLA_FLAGS turn it off, and YNN with it).
    optimised = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False}
    ours = compiler.jit(_conv, compiler_options=optimised)
    plain = jax.jit(_conv, compiler_options=optimised)
    assert "ynn_fusion" in plain.lower(x, kernel).compile().as_text()  # XLA:CPU's default
    assert "ynn_fusion" not in ours.lower(x, kernel).compile().as_text()
    np.testing.assert_allclose(ours(x, kernel), plain(x, kernel), rtol=1e-5, atol=1e-5)


def test_given_compiler_options_sit_on_top_and_jit_options_pass_through():
    double = compiler.jit(lambda x, n: x * n, static_argnums=1,
                          compiler_options={"xla_backend_optimization_level": 0})  # fmt: skip
    assert float(double(jnp.float32(3.0), 2)) == 6.0
    assert double.__name__ == "<lambda>"


def test_an_option_this_xla_does_not_know_is_dropped_with_one_warning(
    fresh_options, monkeypatch, caplog
):
    monkeypatch.setattr(compiler, "CPU_CONVOLUTIONS_OUTSIDE_YNN", {"xla_cpu_no_such_flag": "1"})
    with caplog.at_level(logging.WARNING, logger="sdn_jax"):
        assert compiler.default_options() == {}
        assert float(compiler.jit(lambda x: x + 1)(jnp.float32(1.0))) == 2.0
    assert len([r for r in caplog.records if "xla_cpu_no_such_flag" in r.message]) == 1


def test_nothing_compiles_before_the_first_call(fresh_options):
    compiler.jit(lambda x: x)
    assert compiler.default_options.cache_info().currsize == 0
