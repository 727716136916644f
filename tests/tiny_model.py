"""What the tests share: the tiny config's settings, networks and a jit that compiles fast,
modified tiny configs, and the environment of `python -m sdn_jax.*` subprocesses.

Importable from pytest (tests/ is on sys.path) and from test_steps.py run as a script.
"""

import contextlib
import functools
import logging
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
# The same for subprocesses, through XLA_FLAGS, with XLA's older CPU fusion emitters
# (a tiny train step compiles in ~6 s instead of ~9 s).
FAST_XLA = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    " --xla_cpu_use_fusion_emitters=false"
)


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


# A small attacker, briefly trained (seconds), and a small report: what the evaluation
# and attacker-cache tests run on the session's tiny run (conftest.trained_attacker).
SMALL_EVALUATION = {
    "eval.attacker.input_size": 32,
    "eval.attacker.widths": (16, 32, 64),
    "eval.attacker.num_steps": 20,
    "eval.attacker.people_per_batch": 8,
    "eval.attacker.photos_per_person": 3,
    "eval.attacker.attribute_input_size": 32,
    "eval.attacker.attribute_widths": (16, 32, 64),
    "eval.attacker.attribute_steps": 10,
    "eval.attacker.attribute_batch_size": 32,
    "eval.attacker.calibration_people": 4,
    "eval.attacker.log_every_steps": 10,
    "eval.attacker.batch_size": 64,
    "eval.report.max_people": 4,
    "eval.report.probes_per_person": 2,
    "eval.report.validation_people": 3,
    "eval.security.num_faces": 4,
    "eval.security.num_random_keys": 8,
    "eval.security.random_attack_faces": 2,
    "eval.security.keys_per_call": 8,
    "eval.security.kdf_repeats": 1,
}


def evaluation_settings(data_dir, **changes) -> settings_lib.Settings:
    """The tiny run's settings with SMALL_EVALUATION, its data in `data_dir`."""
    return tiny_settings(**{**SMALL_EVALUATION, "data.data_dir": str(data_dir), **changes})


def tiny_setup():
    """(settings, networks, params) of the tiny config, params from key 0."""
    settings = tiny_settings()
    networks = sdn.build_networks(settings.model)
    size = settings.data.image_size
    init = fast_jit(lambda rng: sdn.init_params(rng, networks, settings.model, size))
    return settings, networks, init(jax.random.key(0))


def subprocess_env(cache_dir=None, *, fast_compile=True, **extra) -> dict:
    """The environment of a `python -m sdn_jax.*` subprocess: JAX on the CPU, XLA's
    expensive passes off (`fast_compile`; a run that trains for real rather than compiles
    is faster with them on), and (with `cache_dir`) a persistent compilation cache, so a
    program that another subprocess compiled before is loaded, not compiled again."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    xla_flags = os.environ.get("XLA_FLAGS", "").replace(FAST_XLA, "").strip()
    env["XLA_FLAGS"] = f"{xla_flags} {FAST_XLA}".strip() if fast_compile else xla_flags
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


@contextlib.contextmanager
def logged(name: str = "sdn_jax"):
    """Collects what the `name` logger says at INFO inside the block, into the yielded
    list (caplog is function-scoped; module-scoped fixtures use this)."""
    messages = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger(name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
