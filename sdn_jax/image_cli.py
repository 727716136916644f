"""What `python -m sdn_jax.anonymize` and `python -m sdn_jax.deanonymize` share.

Both read image files, run one direction of a trained model under the user's key, write
`<output>/<stem>.png` per input and `<output>/manifest.json` (sdn_jax.manifest). The
flags and exit status are the contract of INTERFACES.md ("Anonymizing files"):
  0    every input succeeded;
  1    some inputs failed (each named on stderr and in the manifest), or none was found;
  2    nothing was done: a usage error (bad flag, unknown attribute, missing key), a run
       that cannot be loaded, or an output folder that cannot be used;
  130  interrupted (Ctrl-C): the manifest marks what was not done, `--resume` does it.
argparse rather than absl flags (main.py's choice): `main(argv)` is called more than once
in one process by the tests, and argparse exits 2 on a bad flag as the contract asks.

The key of each anonymized image is scrypt(passphrase, a fresh random salt) and the
attributes (sdn_jax.file_keys); the salt goes into the PNG and the manifest.

Secrecy: the passphrase and anything derived from it are never printed, logged, written
or put in an error message; the manifest holds no fingerprint of the key either (one
would let an attacker test guesses offline without the model).
"""

import dataclasses
import os
import sys
import time

import tqdm

from sdn_jax import compilation_cache, file_keys, image_files, inference, manifest
from sdn_jax import passphrase as passphrase_lib
from sdn_jax.file_command_flags import MAX_BATCH_SIZE, build_parser
from sdn_jax.images import from_uint8, to_uint8
from sdn_jax.keys import ANONYMIZE, RECOVER
from sdn_jax.latent import editing, file_edits
from sdn_jax.manifest import MANIFEST

PASSWORD_ENV = file_keys.PASSWORD_ENV
PROGRESS_BAR_MIN_IMAGES = 5  # a bar on a terminal from this many images on
INTERRUPTED = 130  # a shell's status for a command stopped by SIGINT


class UsageError(Exception):
    """The command cannot run as given (exit 2); str() says why."""


def parse_attributes(text: str, key_attributes) -> dict[str, bool | None]:
    """--attributes for this run's key attributes; omitted ones are None: unchosen, drawn
    from each image's key (KDF version 3; 0 in images of versions 1 and 2)."""
    defaults = {name: None for name in key_attributes}
    try:
        return passphrase_lib.parse_attribute_choices(text, key_attributes, defaults)
    except ValueError as error:
        raise UsageError(f"--attributes: {error}") from None


def _check_flags(args) -> None:
    """What argparse cannot check: numbers' ranges, an output folder in use."""
    for flag, value, most in (
        ("--batch-size", args.batch_size, MAX_BATCH_SIZE),
        ("--max-pixels", args.max_pixels, None),
    ):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1")
        if most is not None and value > most:
            raise UsageError(
                f"{flag} must be at most {most} (every batch is padded to it in memory)"
            )
    output = args.output
    if os.path.lexists(os.path.join(output, MANIFEST)) and not (args.overwrite or args.resume):
        raise UsageError(
            f"{output} already holds the results of a run ({MANIFEST}); --resume finishes "
            "an interrupted one (same passphrase), --overwrite replaces them, or choose "
            "another --output"
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


@dataclasses.dataclass
class Job:
    """What _prepare settled: the model, the keys, the manifest's header, a resumed run."""

    model: inference.Model
    keys: file_keys.KeyMaker
    choices: dict
    head: dict
    resumed: manifest.Recorded | None
    album_salt: bytes | None


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
        try:
            job = _prepare(args, anonymizing)
        except UsageError as error:
            print(f"{prog}: error: {error}", file=sys.stderr)
            return 2
        if args.edit:
            direction = ANONYMIZE if anonymizing else RECOVER
            transform = file_edits.transform(direction, job.head["edit"])
        return _run(job, args, prog, anonymizing, transform)
    except KeyboardInterrupt:  # before the output folder was made (or in its manifest)
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED


def _prepare(args, anonymizing: bool) -> Job:
    """Checks the flags, reads the passphrase, loads the model, checks a run to resume:
    everything that can fail as a whole (UsageError) before any input is read or the
    output folder made. Cheap checks come first."""
    choices = parse_attributes(args.attributes, _check_config(args))
    _check_flags(args)
    try:
        passphrase = file_keys.read_passphrase(args.password_file, confirm=anonymizing)
    except file_keys.PassphraseError as error:
        raise UsageError(str(error)) from None
    if anonymizing:  # where the passphrase is chosen
        file_keys.warn_if_weak(passphrase)
    compilation_cache.enable()  # a second call starts warm
    model = _load_model(args)
    try:
        keys = file_keys.KeyMaker(passphrase, choices, model)
    except ValueError as error:  # passphrase.py's messages hold nothing of the passphrase
        raise UsageError(str(error)) from None
    album = anonymizing and args.album
    more = {}
    if anonymizing:
        salts = "one per album" if album else "one per image"
        more = {"kdf": {**passphrase_lib.kdf_record(), "salt": salts}, "fit": args.fit}
    if args.edit:
        try:
            more["edit"] = editing.parse_edits(args.edit, model.key_attributes)
        except ValueError as error:
            raise UsageError(f"--edit: {error}") from None
    tool = manifest.ANONYMIZE if anonymizing else manifest.DEANONYMIZE
    head = manifest.header(tool, model, choices, **more)
    resumed = _resumable(args.output, head) if args.resume else None
    album_salt = None
    if album:
        previous = resumed.fields["kdf"].get("album_salt") if resumed else None
        album_salt = bytes.fromhex(previous) if previous else passphrase_lib.new_salt()
        head["kdf"]["album_salt"] = album_salt.hex()
    _make_output(args.output)
    return Job(model, keys, choices, head, resumed, album_salt)


def _resumable(output: str, head: dict) -> manifest.Recorded | None:
    """The manifest of the run that --resume finishes; UsageError if it differs."""
    path = os.path.join(output, MANIFEST)
    recorded = manifest.read(path)
    if recorded is None:
        print(f"note: --resume: {output} holds no {MANIFEST}; starting afresh", file=sys.stderr)
        return None
    mismatches = manifest.resume_mismatches(recorded, head)
    if mismatches:
        raise UsageError(
            f"cannot --resume from {path}: {'; '.join(mismatches)}; choose another --output, "
            "or --overwrite to replace it"
        )
    return recorded


def _run(job: Job, args, prog: str, anonymizing: bool, transform) -> int:
    """Reads, transforms and writes every input; the manifest is written whatever
    happens (finally), with the inputs not reached marked `interrupted`."""
    items, carried, resumed, stopped, no_memory = [], [], 0, False, False
    start = compiled = time.perf_counter()
    try:
        items, notes = image_files.collect_inputs(args.input, ignore=(MANIFEST,))
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        if job.resumed is not None:
            carried = manifest.apply_resume(items, job.resumed, args.output)
            resumed = sum(item.done for item in items)
        image_files.assign_outputs(items, args.output, taken=[e["output"] for e in carried])
        found = {} if anonymizing else _check_recovery_inputs(args.input, items, job)
        job.model.compile()
        compiled = time.perf_counter()
        _process(items, job, args, transform, anonymizing, found)
    except KeyboardInterrupt:
        stopped = True
    except Exception as error:  # out of memory (the host's, or XLA's on an accelerator)
        if not (isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error)[:200]):
            raise
        no_memory = True
    finally:  # whatever happened: a crash's traceback follows the manifest
        try:
            path = manifest.write(args.output, job.head, items, carried)
        except OSError as error:
            path = None
            print(f"{prog}: error: cannot write {MANIFEST}: {error.strerror}", file=sys.stderr)
    seconds = time.perf_counter() - compiled
    done = sum(item.done for item in items)
    failed = sum(item.error is not None for item in items)
    if stopped:
        left = len(items) - done - failed
        print(
            f"{prog}: interrupted: {done} of {len(items)} image(s) done, {failed} failed, "
            f"{left} marked interrupted in {path}; --resume finishes them",
            file=sys.stderr,
        )
        return INTERRUPTED
    if no_memory:
        print(f"{prog}: error: out of memory at --batch-size {args.batch_size}; a smaller "
              f"one needs less (what was done is in {path})", file=sys.stderr)  # fmt: skip
        return 1
    if path is None:
        return 1
    verb, new = ("anonymized" if anonymizing else "recovered"), done - resumed
    rate = new / max(seconds, 1e-9)
    print(
        f"{verb} {new} image(s) into {args.output} in {seconds:.1f} s ({rate:.1f} images/s, "
        f"{job.keys.seconds:.1f} s of it deriving keys; after {compiled - start:.1f} s "
        f"compiling); {failed} failed" + (f"; {resumed} done before (--resume)" if resumed else ""),
        file=sys.stderr,
    )
    if not items:
        print(f"{prog}: error: no image files found in {args.input}", file=sys.stderr)
        return 1
    return 1 if failed else 0


def _check_recovery_inputs(inputs, items, job: Job) -> dict:
    """Warns of what may make recovery fail (another run, step, weights or attributes in
    the manifests beside the inputs; JPEG copies); returns those manifests by folder."""
    found = manifest.beside_inputs(
        inputs, job.model, job.choices, sys.stderr, edit=job.head.get("edit")
    )
    lossy = [i.path for i in items if i.path.lower().endswith((".jpg", ".jpeg", ".jpe"))]
    if lossy:
        print(
            f"warning: {len(lossy)} JPEG input(s), e.g. {lossy[0]}: anonymize writes PNG, "
            "and a lossy copy recovers only part of the original (README)",
            file=sys.stderr,
        )
    return found


def _key_source(item, text, job: Job, anonymizing: bool, found: dict):
    """(KDF version, salt, where from) of an item's key: a fresh salt (or the album's)
    to anonymize; to recover, the one its PNG (else the manifest beside it) records, else
    version 1 (where: "none")."""
    if anonymizing:
        salt = job.album_salt or passphrase_lib.new_salt()
        item.record = {"salt": salt.hex()}
        return passphrase_lib.KDF_VERSION, salt, "new"
    recorded = found.get(os.path.normpath(os.path.dirname(item.path) or "."))
    entry = recorded.entry_for(os.path.basename(item.path)) if recorded else None
    kdf = recorded.fields.get("kdf") if recorded else None
    version, salt, where = file_keys.key_source(text, entry, kdf)
    item.record = {"kdf_version": version, **({"salt": salt.hex()} if salt else {})}
    return version, salt, where


def _process(items, job: Job, args, transform, anonymizing: bool, found: dict) -> None:
    """Reads, keys, transforms and writes the items not done, batch by batch; a failure
    is recorded in its item (and printed), and the others go on. The bar counts images
    as their keys are derived (scrypt is the slow part)."""
    pending = [item for item in items if not item.done]
    bar = tqdm.tqdm(
        total=len(pending),
        unit="img",
        file=sys.stderr,
        disable=len(pending) < PROGRESS_BAR_MIN_IMAGES or not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
    fit, model, unsalted = args.fit if anonymizing else None, job.model, []
    with bar:
        for first in range(0, len(pending), model.batch_size):
            loaded, pixels, sources = [], [], []
            for item in pending[first : first + model.batch_size]:
                if item.error is None:
                    try:
                        image, text = image_files.read_image_and_text(
                            item.path, model.image_size, fit, args.max_pixels
                        )
                        version, salt, where = _key_source(item, text, job, anonymizing, found)
                    except (image_files.ImageError, ValueError) as error:  # ValueError: salt
                        item.error = str(error)
                    else:
                        job.keys.key(version, salt)  # derived now: the bar shows it
                        loaded.append(item)
                        pixels.append(image)
                        sources.append((version, salt))
                        unsalted += [item.path] if where == "none" else []
                if item.error is not None:
                    bar.write(f"error: {item.path}: {item.error}", file=sys.stderr)
                bar.update(1)
            if loaded:
                key = job.keys.passwords(sources)
                outputs = to_uint8(transform(model, from_uint8(pixels), key))
                for item, pixels_out, (version, salt) in zip(loaded, outputs, sources):
                    text = file_keys.png_text(salt, version) if anonymizing else None
                    try:
                        path = os.path.join(args.output, item.output)
                        image_files.write_png(path, pixels_out, args.overwrite, text)
                        item.done = True
                    except image_files.ImageError as error:
                        item.error = str(error)
                        bar.write(f"error: {item.path}: {item.error}", file=sys.stderr)
    if unsalted:
        print(
            f"note: {len(unsalted)} image(s) carry no salt, e.g. {unsalted[0]}: anonymized "
            "before per-image salts (or their PNG text and manifest are gone); recovered "
            "with key derivation version 1",
            file=sys.stderr,
        )
