"""What the model tests share: the tiny config's networks, and a jit that compiles fast.

Importable from pytest (tests/ is on sys.path) and from test_steps.py run as a script.
"""

import functools

import jax

from configs import tiny
from sdn_jax import state as state_lib

NUM_IDENTITIES = 12
# LLVM's optimisations dominate CPU compile time (init: ~35 s -> ~6 s, a train step:
# ~45 s -> ~20 s) and change nothing these tests check (SPMD partitioning comes before).
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def tiny_setup():
    """(config, networks, params) of the tiny config, params from key 0."""
    config = tiny.get_config()
    networks = state_lib.build_networks(config, NUM_IDENTITIES)
    params = fast_jit(lambda rng: state_lib.init_params(rng, networks, config))(jax.random.key(0))
    return config, networks, params
