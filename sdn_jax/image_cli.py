"""What `python -m sdn_jax.anonymize` and `python -m sdn_jax.deanonymize` share.

Both read image files, run one direction of a trained model under the user's key, write
`<output>/<stem>.png` per input and `<output>/manifest.json`. The flags and exit status
are the contract of INTERFACES.md ("Anonymizing files"):
  0  every input succeeded;
  1  some inputs failed (each named on stderr and in the manifest), or none was found;
  2  nothing was done: a usage error (bad flag, unknown attribute, missing key), a run
     that cannot be loaded, or an output folder that cannot be used.
argparse rather than absl flags (main.py's choice): `main(argv)` is called more than once
in one process by the tests, and argparse exits 2 on a bad flag as the contract asks.

Secrecy: the passphrase and anything derived from it are never printed, logged, written
or put in an error message; the manifest holds no fingerprint of the key either (one
would let an attacker test guesses offline without the model).
"""

import argparse
import getpass
import json
import os
import stat
import sys
import time

import tqdm

import sdn_jax
from sdn_jax import image_files, inference
from sdn_jax import passphrase as passphrase_lib
from sdn_jax.images import from_uint8, to_uint8

PASSWORD_ENV = "SDN_PASSWORD"
MANIFEST = "manifest.json"
PROGRESS_BAR_MIN_IMAGES = 5  # a bar on a terminal from this many images on


class UsageError(Exception):
    """The command cannot run as given (exit 2); str() says why."""


def build_parser(prog: str, description: str, anonymizing: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    run = parser.add_mutually_exclusive_group(required=True)
    run.add_argument("--workdir", metavar="RUN", help="a trained run's folder")
    run.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="a checkpoint step folder (RUN/checkpoints/STEP) or checkpoints folder; its "
        "config.json is looked up in DIR, DIR/.. and DIR/../..",
    )
    parser.add_argument(
        "--step", type=int, help="checkpoint step to use (default: the newest); recovery "
        "needs the step that anonymized",
    )  # fmt: skip
    parser.add_argument(
        "--password-file",
        metavar="FILE",
        help=f"file holding the passphrase (one line); else ${PASSWORD_ENV}, else a prompt",
    )
    parser.add_argument(
        "--attributes",
        default="",
        metavar="NAME=0/1,...",
        help="values of the run's key attributes (part of the key); omitted ones are 0",
    )
    parser.add_argument(
        "--input", nargs="+", required=True, metavar="PATH", help="image files and/or folders"
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the results")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing outputs (and manifest.json)"
    )
    if anonymizing:
        parser.add_argument(
            "--fit",
            choices=image_files.FITS,
            default="crop",
            help="crop: the largest centred square, resized (default); pad: the whole "
            "picture, resized, white borders",
        )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=image_files.DEFAULT_MAX_PIXELS,
        help="refuse pictures with more pixels (decompression bombs); default %(default)s",
    )
    parser.add_argument(
        "--batch-size", type=int, default=inference.DEFAULT_BATCH_SIZE, help="images per step"
    )
    return parser


def read_passphrase(password_file: str | None, confirm: bool) -> str:
    """From --password-file, else $SDN_PASSWORD, else a prompt (twice when `confirm`)."""
    if password_file is not None:
        return _passphrase_from_file(password_file)
    if PASSWORD_ENV in os.environ:
        if not os.environ[PASSWORD_ENV]:
            raise UsageError(f"${PASSWORD_ENV} is empty")
        return os.environ[PASSWORD_ENV]
    if not sys.stdin.isatty():
        raise UsageError(
            f"no passphrase: give --password-file FILE or set ${PASSWORD_ENV} "
            "(or run in a terminal to be asked)"
        )
    passphrase = getpass.getpass("Passphrase: ")
    if not passphrase:
        raise UsageError("the passphrase is empty")
    if confirm and getpass.getpass("Passphrase again: ") != passphrase:
        raise UsageError("the two passphrases differ")
    return passphrase


def _passphrase_from_file(path: str) -> str:
    try:
        mode = os.stat(path).st_mode
        data = open(path, "rb").read()
    except OSError as error:
        raise UsageError(f"cannot read the password file {path}: {error.strerror}") from None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        print(
            f"warning: the password file {path} is readable by other users "
            f"(mode {stat.filemode(mode)}); `chmod 600 {path}` makes it private",
            file=sys.stderr,
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:  # its message would quote bytes of the passphrase
        text = None
    if text is None:
        raise UsageError(f"the password file {path} is not UTF-8 text")
    if text.endswith("\n"):  # one line terminator is not part of the passphrase
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    if "\n" in text:
        raise UsageError(f"the password file {path} holds more than one line")
    if not text:
        raise UsageError(f"the password file {path} is empty")
    return text


def parse_attributes(text: str, key_attributes) -> dict[str, bool]:
    """--attributes for this run's key attributes; omitted ones are False."""
    defaults = {name: False for name in key_attributes}
    try:
        return passphrase_lib.parse_attribute_choices(text, key_attributes, defaults)
    except ValueError as error:
        raise UsageError(f"--attributes: {error}") from None


def _check_flags(args) -> None:
    """What argparse cannot check: numbers' ranges, an output folder in use."""
    for flag, value in (("--batch-size", args.batch_size), ("--max-pixels", args.max_pixels)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1")
    output = args.output
    if os.path.exists(os.path.join(output, MANIFEST)) and not args.overwrite:
        raise UsageError(
            f"{output} already holds the results of a run ({MANIFEST}); choose another "
            "--output, or --overwrite to replace them"
        )
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"--output {output} is a file, not a folder")


def _make_output(output: str) -> None:
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the output folder {output}: {error.strerror}") from None


def _load_model(args) -> inference.Model:
    try:
        return inference.load(
            args.workdir, checkpoint=args.checkpoint, step=args.step, batch_size=args.batch_size
        )
    except inference.LoadError as error:
        raise UsageError(str(error)) from None


def _check_config(args) -> list[str]:
    """The run's key attributes, read before anything slow (a bad flag fails at once)."""
    try:
        config_path, _ = inference.find_checkpoint(args.workdir, args.checkpoint, args.step)
        return list(inference.read_config(config_path).model.key_attributes)
    except inference.LoadError as error:
        raise UsageError(str(error)) from None


def run(argv, *, prog: str, description: str, anonymizing: bool, transform) -> int:
    """Parses argv and processes the inputs; returns the exit status.

    transform(model, images, key) is Model.anonymize or Model.recover.
    """
    parser = build_parser(prog, description, anonymizing)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a bad flag (2, message printed)
        return int(exit_.code or 0)
    try:
        model, key, choices = _prepare(args, anonymizing)
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2

    items, notes = image_files.collect_inputs(args.input, ignore=(MANIFEST,))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    image_files.assign_outputs(items, args.output)
    if not anonymizing:
        _warn_about_input_manifests(args.input, model, choices)
        lossy = [i.path for i in items if i.path.lower().endswith((".jpg", ".jpeg", ".jpe"))]
        if lossy:
            print(
                f"warning: {len(lossy)} JPEG input(s), e.g. {lossy[0]}: anonymize writes PNG, "
                "and a lossy copy recovers only part of the original (README)",
                file=sys.stderr,
            )
    start = time.perf_counter()
    model.compile()
    compiled = time.perf_counter()
    _process(items, model, key, args, transform, fit=args.fit if anonymizing else None)
    seconds = time.perf_counter() - compiled

    done = sum(item.error is None for item in items)
    failed = len(items) - done
    try:
        _write_manifest(args, model, choices, items, anonymizing)
    except OSError as error:
        print(f"{prog}: error: cannot write {MANIFEST}: {error.strerror}", file=sys.stderr)
        return 1
    verb, rate = "anonymized" if anonymizing else "recovered", done / max(seconds, 1e-9)
    print(
        f"{verb} {done} image(s) into {args.output} in {seconds:.1f} s ({rate:.1f} images/s, "
        f"after {compiled - start:.1f} s compiling); {failed} failed",
        file=sys.stderr,
    )
    if not items:
        print(f"{prog}: error: no image files found in {args.input}", file=sys.stderr)
        return 1
    return 1 if failed else 0


def _prepare(args, anonymizing: bool) -> tuple[inference.Model, inference.Key, dict]:
    """Checks the flags, reads the passphrase, loads the model: everything that can fail
    as a whole (UsageError) before any input is read. Cheap checks come first."""
    choices = parse_attributes(args.attributes, _check_config(args))
    _check_flags(args)
    passphrase = read_passphrase(args.password_file, confirm=anonymizing)
    model = _load_model(args)
    try:
        key = inference.make_key(passphrase, choices, model.model_settings)
    except ValueError as error:  # passphrase.py's messages hold nothing of the passphrase
        raise UsageError(str(error)) from None
    _make_output(args.output)
    return model, key, choices


def _process(items, model, key, args, transform, fit: str | None) -> None:
    """Reads, transforms and writes the items batch by batch; a failure is recorded in
    its item (and printed), and the others go on."""
    bar = tqdm.tqdm(
        total=len(items),
        unit="img",
        file=sys.stderr,
        disable=len(items) < PROGRESS_BAR_MIN_IMAGES or not sys.stderr.isatty(),
        dynamic_ncols=True,
    )

    def fail(item, message):
        item.error, item.output = message, None
        bar.write(f"error: {item.path}: {message}", file=sys.stderr)

    with bar:
        for first in range(0, len(items), model.batch_size):
            batch = items[first : first + model.batch_size]
            loaded, pixels = [], []
            for item in batch:
                if item.error is not None:
                    fail(item, item.error)
                    continue
                try:
                    size = model.image_size
                    pixels.append(image_files.read_image(item.path, size, fit, args.max_pixels))
                    loaded.append(item)
                except image_files.ImageError as error:
                    fail(item, str(error))
            if loaded:
                outputs = to_uint8(transform(model, from_uint8(pixels), key))
                for item, pixels_out in zip(loaded, outputs):
                    path = os.path.join(args.output, item.output)
                    try:
                        image_files.write_png(path, pixels_out, args.overwrite)
                    except image_files.ImageError as error:
                        fail(item, str(error))
            bar.update(len(batch))


def _write_manifest(args, model, choices, items, anonymizing) -> None:
    """Per input its output or its error, and what a later recovery needs to match
    (run, step, attributes, versions). Nothing derived from the passphrase."""
    manifest = {
        "tool": "sdn_jax.anonymize" if anonymizing else "sdn_jax.deanonymize",
        "version": sdn_jax.__version__,
        "kdf_version": passphrase_lib.KDF_VERSION,
        "run": model.source,
        "step": model.step,
        "image_size": model.image_size,
        "attributes": choices,
        **({"fit": args.fit} if anonymizing else {}),
        "num_succeeded": sum(item.error is None for item in items),
        "num_failed": sum(item.error is not None for item in items),
        "images": [
            {"input": item.path, "output": item.output}
            if item.error is None
            else {"input": item.path, "error": item.error}
            for item in items
        ],
    }
    path = os.path.join(args.output, MANIFEST)
    partial = os.path.join(args.output, f".{MANIFEST}.partial")
    with open(partial, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    os.replace(partial, path)


def _warn_about_input_manifests(inputs, model, choices) -> None:
    """Recovery needs the anonymizing run's step and attributes: a manifest next to the
    inputs says which they were, so a mismatch is named before it silently fails."""
    folders = {p if os.path.isdir(p) else os.path.dirname(p) or "." for p in inputs}
    for folder in sorted(folders):
        try:
            with open(os.path.join(folder, MANIFEST)) as f:
                recorded = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(recorded, dict) or recorded.get("tool") != "sdn_jax.anonymize":
            continue
        where = os.path.join(folder, MANIFEST)
        if recorded.get("step") != model.step:
            print(
                f"warning: {where} says step {recorded.get('step')} anonymized these images; "
                f"this is step {model.step} (--step chooses)",
                file=sys.stderr,
            )
        if recorded.get("attributes") not in (None, choices):
            given = ",".join(f"{k}={int(v)}" for k, v in recorded["attributes"].items())
            print(
                f"warning: {where} says they were anonymized with --attributes {given}; "
                "other attributes recover other faces",
                file=sys.stderr,
            )
        if recorded.get("kdf_version", passphrase_lib.KDF_VERSION) != passphrase_lib.KDF_VERSION:
            print(
                f"warning: {where} was written with key derivation version "
                f"{recorded['kdf_version']}; this is version {passphrase_lib.KDF_VERSION}",
                file=sys.stderr,
            )
