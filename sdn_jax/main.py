"""Trains and evaluates SDN: `python -m sdn_jax.main --config configs/default.py --workdir DIR`.

Flags, multi-host start-up (sdn_jax.distributed: explicit flags, Slurm, TPU VM slices)
and version logging; the work is in sdn_jax.train.
Exit status 0 on success; otherwise one line on stderr says why: 2 when nothing was done
(a bad config value, a config that changes the run's model or key settings, a workdir
another process is writing or that cannot be written), 130 when stopped by a signal (a
checkpoint saved), 1 for other failures.
"""

import logging
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from sdn_jax import (
    checkpointing,
    compilation_cache,
    distributed,
    run_identity,
    settings,
    train,
    workdir_lock,
)

log = logging.getLogger("sdn_jax")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (resumes if it has checkpoints).")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "evaluate"], "Train then evaluate, or only evaluate."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for multi-process runs."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "off"],
    "auto: join a multi-process job when the flags above, JAX_COORDINATOR_ADDRESS, an srun "
    "step of several tasks or a Cloud TPU VM say so; off: always one process.",
)


# Nothing was done: the config or the workdir cannot be used as given.
_REFUSALS = (settings.SettingsError, run_identity.RunIdentityError, workdir_lock.WorkdirError)


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("--config and --workdir are required")
    try:
        launch = distributed.plan(
            _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, mode=_DISTRIBUTED.value
        )
    except distributed.LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        distributed.start(launch)
    except (RuntimeError, ValueError) as error:  # no coordinator, a platform without its details
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        print(f"error: cannot join the multi-process job ({launch.kind} start): {reason}",
              file=sys.stderr)  # fmt: skip
        return 1
    if jax.process_index() != 0:  # One progress log per job: process 0's.
        log.setLevel(logging.WARNING)
    cache = compilation_cache.enable()
    if cache:
        log.info("Compiled programs are cached in %s", cache)
    try:
        if _MODE.value == "train":
            train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
        else:
            train.evaluate_only(_CONFIG.value, _WORKDIR.value)
    except train.Interrupted as stop:
        print(f"Stopped: {stop}", file=sys.stderr)
        return 130
    except _REFUSALS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (
        train.NonFiniteLossError,
        checkpointing.NoValidCheckpointError,
        FileNotFoundError,
        ValueError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        distributed.stop(launch)
    return 0


def _setup_logging() -> None:
    """Our progress at INFO on stderr; libraries (Orbax's many INFO lines) at WARNING."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    ours = logging.getLogger("sdn_jax")
    ours.setLevel(logging.INFO)
    ours.addHandler(handler)
    ours.propagate = False


def run() -> None:
    """The `sdn-train` console script: the same as `python -m sdn_jax.main` (exits)."""
    # absl's --help lists the flags of the main module, which for a console script is the
    # script itself: show this module's flags there too (a no-op under `python -m`).
    for flag in flags.FLAGS.get_key_flags_for_module(__name__):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    _setup_logging()
    app.run(main, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a mistyped config field (`--config.train.num_step=5`) as one
    line and exit 2: ml_collections raises AttributeError there, which absl lets through
    as a traceback."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as error:
        # ml_collections' message (an AttributeError around a KeyError around a string):
        # "'field'", then maybe 'Did you mean "fields" ...?'.
        while isinstance(error, BaseException) and error.args:
            error = error.args[0]
        field, _, hint = str(error).partition("\n")
        field = field.strip("\"'")
        names = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        named = [n for n in names if field in n.split(".")] or names or ["--config"]
        hint = f" ({hint.strip()})" if hint.strip() else ""
        print(f"error: {named[0]}: no such config field{hint}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
