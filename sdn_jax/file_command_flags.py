"""The flags of `python -m sdn_jax.anonymize` / `deanonymize` (INTERFACES.md, "Anonymizing
files"); what they do is in image_cli.py."""

import argparse

from sdn_jax import image_files, inference
from sdn_jax.file_keys import PASSWORD_ENV

# Every batch is padded to --batch-size images in memory (one compiled program for any
# number of inputs), so a huge value is refused rather than allocated.
MAX_BATCH_SIZE = 1024


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
        help="values of the run's key attributes (part of the key); omitted ones are "
        "drawn from each image's key, so a folder shares no attribute choice (README)",
    )
    parser.add_argument(
        "--input", nargs="+", required=True, metavar="PATH", help="image files and/or folders"
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the results")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument(
        "--overwrite", action="store_true", help="replace existing outputs (and manifest.json)"
    )
    existing.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted run into the same --output (same run, step, attributes"
        " and passphrase): the inputs its manifest lists as done are skipped",
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
            "--album",
            action="store_true",
            help="one salt for all the images of this run (the same person gets the same "
            "surrogate face across them), instead of one per image; weaker: README",
        )
    parser.add_argument(
        "--edit", metavar="NAME=+K,...", help="edit key attributes by K degrees inside G "
        "(sdn_jax.latent); recovery needs the same --edit",
    )  # fmt: skip
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=image_files.DEFAULT_MAX_PIXELS,
        help="refuse pictures with more pixels (decompression bombs); default %(default)s",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=inference.DEFAULT_BATCH_SIZE,
        help=f"images per step, 1 to {MAX_BATCH_SIZE} (default %(default)s)",
    )
    return parser
