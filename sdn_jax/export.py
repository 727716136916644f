"""Writes an inference-only copy of a trained run, for sharing: E and G, nothing else.

    python -m sdn_jax.export --workdir RUN --output DIR [--step N]

DIR then holds what `anonymize` / `deanonymize --checkpoint DIR` need, and gives the very
outputs of the run itself:
  state/       E's and G's parameters (their moving averages where the run keeps them,
               as inference.restore_generator picks them) and the step, laid out as in a
               checkpoint step folder (Orbax), so inference loads it unchanged;
  config.json  the run's data, model and train settings (its local data paths left out);
  export.json  the step, the weights' fingerprint (inference.weights_fingerprint) and
               what the copy holds.
Left out: the key predictor Q (trained to read key bits from an image pair), D, C, CLUB
and every optimiser state. DIR is written beside its final place and renamed into it, so
it is complete or absent; an existing DIR that is not empty is refused.
Exit status: 0 written; 1 writing failed (nothing left behind); 2 nothing done (a bad
flag, a run that cannot be loaded, an output in the way).
"""

import argparse
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

import sdn_jax
from sdn_jax import config_upgrade, inference
from sdn_jax import state as state_lib

EXPORT_FILE = inference.EXPORT_FILE
FORMAT = "sdn-jax inference export"
_LOCAL_PATHS = ("data_dir", "manual_dir")  # the trainer's folders: not for sharing


class UsageError(Exception):
    """Nothing was written (exit 2); str() says why."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sdn_jax.export", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--workdir", required=True, metavar="RUN", help="a trained run's folder")
    parser.add_argument("--output", required=True, metavar="DIR", help="a new or empty folder")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    return parser


def _check_output(output: Path) -> None:
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise UsageError(f"--output {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()):
        raise UsageError(f"--output {output} is not empty: choose a new folder (export never "
                         "overwrites)")  # fmt: skip
    if not output.parent.is_dir():
        raise UsageError(f"the folder of --output, {output.parent}, does not exist")


def _shared_config(config_path: Path) -> dict:
    """The data, model and train sections inference reads, without the local paths."""
    raw = json.loads(config_path.read_text())
    config = config_upgrade.upgrade({name: raw[name] for name in ("data", "model", "train")})
    config["data"].update(dict.fromkeys(_LOCAL_PATHS))
    return config


def _write(folder: Path, config: dict, run, params: dict, step: int, fingerprint: str) -> None:
    """The export's three parts into `folder` (a new empty folder)."""
    group = "ema_params" if run.ema else "params"  # what restore_generator reads
    tree = {group: {name: params[name] for name in state_lib.INFERENCE_NETWORKS},
            "step": np.int32(step)}  # fmt: skip
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
        checkpointer.save(folder / "state", args=ocp.args.PyTreeSave(tree))
    (folder / inference.CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    record = {
        "format": FORMAT,
        "version": sdn_jax.__version__,
        "step": step,
        "fingerprint": fingerprint,
        "networks": list(state_lib.INFERENCE_NETWORKS),
        "moving_averages": run.ema,
        "image_size": run.data.image_size,
        "key_attributes": list(run.model.key_attributes),
    }
    (folder / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")


def export(workdir, output, step: int | None = None) -> dict:
    """Writes the export of `workdir`'s checkpoint `step` (default: newest) as `output`;
    returns export.json's record. UsageError if nothing could be started; OSError,
    RuntimeError or LoadError if writing failed (the temporary folder is removed)."""
    output = Path(output).absolute()
    _check_output(output)
    try:
        config_path, step_dir = inference.find_checkpoint(workdir, None, step)
        run = inference.read_config(config_path)
        params, saved_step = inference.restore_generator(run, step_dir)
        config = _shared_config(config_path)
    except inference.LoadError as error:
        raise UsageError(str(error)) from None
    fingerprint = inference.weights_fingerprint(params)
    # A new folder beside DIR (mkdir fails on anything already there, symlinks included),
    # with the permissions the umask gives: mkdtemp's would be private.
    temporary = output.parent / f".{output.name}.export-{secrets.token_hex(8)}"
    temporary.mkdir()
    try:
        _write(temporary, config, run, params, saved_step, fingerprint)
        # Read back as the file commands will: the copy must be the very weights.
        copy, copy_step = inference.restore_generator(inference.read_config(
            temporary / inference.CONFIG_FILE), temporary)  # fmt: skip
        if (inference.weights_fingerprint(copy), copy_step) != (fingerprint, saved_step):
            raise RuntimeError(f"the written copy in {temporary} does not read back the same")
        os.rename(temporary, output)  # replaces an empty folder; fails on a filled one
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return json.loads((output / EXPORT_FILE).read_text())


def main(argv: list[str] | None = None) -> int:
    """Runs the command on argv (default: sys.argv[1:]); returns the exit status."""
    prog = "python -m sdn_jax.export"
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:  # --help (0) or a bad flag (2, message printed)
        return int(exit_.code or 0)
    start = time.perf_counter()
    try:
        record = export(args.workdir, args.output, args.step)
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, inference.LoadError) as error:  # LoadError: reading back
        print(f"{prog}: error: writing {args.output} failed, nothing was left: {error}",
              file=sys.stderr)  # fmt: skip
        return 1
    weights = "moving averages of E and G" if record["moving_averages"] else "E and G"
    print(
        f"exported step {record['step']} of {args.workdir} ({weights}; fingerprint "
        f"{record['fingerprint']}) into {args.output} in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
