"""What the tests share: the tiny config's settings, networks and a jit that compiles fast,
modified tiny configs, and the environment of `python -m sdn_jax.*` subprocesses.

Importable from pytest (tests/ is on sys.path) and from test_steps.py run as a script.
"""

import functools
import os
import sys
from pathlib import Path

import jax

from configs import tiny
from sdn_jax import settings as settings_lib
from sdn_jax.models import sdn

ROOT = Path(__file__).resolve().parents[1]
NUM_IDENTITIES = 12  # people in the tiny config's train split
# LLVM's optimisations dominate CPU compile time (init: ~35 s -> ~6 s, a train step:
# ~45 s -> ~20 s) and change nothing these tests check (SPMD partitioning comes before).
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
# The same for subprocesses, through XLA_FLAGS.
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def tiny_config(**changes):
    """configs/tiny.py with `changes` ("section.field": value, dots for nested sections)."""
    config = tiny.get_config()
    with config.unlocked():
        for path, value in changes.items():
            *sections, field = path.split(".")
            block = config
            for name in sections:
                block = block[name]
            block[field] = value
    return config


def tiny_settings(**changes) -> settings_lib.Settings:
    """Settings of `tiny_config(**changes)`."""
    return settings_lib.from_config(tiny_config(**changes))


def tiny_setup():
    """(settings, networks, params) of the tiny config, params from key 0."""
    settings = tiny_settings()
    networks = sdn.build_networks(settings.model)
    size = settings.data.image_size
    init = fast_jit(lambda rng: sdn.init_params(rng, networks, settings.model, size))
    return settings, networks, init(jax.random.key(0))


def subprocess_env(cache_dir=None, **extra) -> dict:
    """The environment of a `python -m sdn_jax.*` subprocess: JAX on the CPU, XLA's
    expensive passes off, and (with `cache_dir`) a persistent compilation cache, so a
    program that another subprocess compiled before is loaded, not compiled again."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    xla_flags = os.environ.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = xla_flags if FAST_XLA in xla_flags else f"{xla_flags} {FAST_XLA}".strip()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    if cache_dir is not None:
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(cache_dir),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
        )
    env.update(extra)
    return env


def main_command(workdir, data_dir, *flags, config="configs/tiny.py") -> list[str]:
    """`python -m sdn_jax.main` on the tiny config with the session's prepared data."""
    command = [sys.executable, "-m", "sdn_jax.main", "--config", config]
    if workdir is not None:
        command.append(f"--workdir={workdir}")
    return [*command, f"--config.data.data_dir={data_dir}", *flags]
