"""Prepares a dataset once into TFDS's data dir (ArrayRecord), with progress.

    python -m sdn_jax.data.prepare --dataset synth_faces --data_dir DIR --image_size 64
    python -m sdn_jax.data.prepare --dataset celeba --data_dir DIR \\
        --manual_dir ~/celeba --image_size 128

Training prepares the synthetic set by itself when it is missing; run this to do it
ahead of time (e.g. once on shared storage before a multi-host run). A dataset that
is already prepared is left as it is.
"""

import sys
import time

from absl import app, flags

from sdn_jax.data import builders

_DATASET = flags.DEFINE_enum("dataset", None, builders.DATASET_NAMES, "Which dataset.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir to write to.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "CelebA: the official release folder.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Stored resolution (pixels per side).")
_DATASET_SEED = flags.DEFINE_integer("dataset_seed", 0, "synth_faces: which synthetic world.")
_NUM_TRAIN = flags.DEFINE_integer("num_train_identities", 1000, "synth_faces: train people.")
_PHOTOS = flags.DEFINE_integer("photos_per_identity", 24, "synth_faces: photos per person.")
_VALIDATION_PHOTOS = flags.DEFINE_integer(
    "validation_photos_per_identity", 4, "synth_faces: held-out photos per train person."
)
_NUM_TEST = flags.DEFINE_integer("num_test_identities", 200, "synth_faces: unseen people.")


def prepare_and_report(name, image_size, data_dir, manual_dir=None, **options) -> dict:
    """Prepares (if needed) and prints the split sizes; returns {split: examples}."""
    start = time.perf_counter()
    builder = builders.get_builder(name, image_size, data_dir, **options)
    already = builder.is_prepared()
    builder = builders.prepare(name, image_size, data_dir, manual_dir=manual_dir, **options)
    sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
    seconds = time.perf_counter() - start
    state = "already prepared" if already else f"prepared in {seconds:.1f} s"
    print(f"{builder.info.full_name} in {data_dir}: {state}")
    for split, count in sizes.items():
        print(f"  {split:<12} {count:>8,} examples")
    return sizes


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _DATASET.value is None or _DATA_DIR.value is None:
        raise app.UsageError("--dataset and --data_dir are required")
    options = {}
    if _DATASET.value == "synth_faces":
        options = dict(
            dataset_seed=_DATASET_SEED.value,
            num_train_identities=_NUM_TRAIN.value,
            photos_per_identity=_PHOTOS.value,
            validation_photos_per_identity=_VALIDATION_PHOTOS.value,
            num_test_identities=_NUM_TEST.value,
        )
    try:
        prepare_and_report(
            _DATASET.value, _IMAGE_SIZE.value, _DATA_DIR.value, _MANUAL_DIR.value, **options
        )
    except ValueError as error:  # Bad sizes, a malformed CelebA release: one clear line.
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
