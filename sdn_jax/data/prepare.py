"""Prepares a dataset once into TFDS's data dir (ArrayRecord), with progress.

    python -m sdn_jax.data.prepare --dataset synth_faces --data_dir DIR --image_size 64
    python -m sdn_jax.data.prepare --dataset celeba --data_dir DIR \\
        --manual_dir ~/celeba --image_size 128

Training prepares the synthetic set by itself when it is missing; run this to do it
ahead of time (e.g. once on shared storage before a multi-host run). A dataset that
is already prepared is left as it is.
"""

import argparse
import sys
import time

import sdn_jax.data
from sdn_jax.data import builders


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Prepare a dataset into a TFDS data dir.")
    parser.add_argument("--dataset", required=True, choices=builders.DATASET_NAMES)
    parser.add_argument("--data_dir", required=True, help="TFDS data dir to write to.")
    parser.add_argument("--manual_dir", help="CelebA: the official release folder.")
    parser.add_argument("--image_size", type=int, default=64, help="Stored resolution.")
    synth = parser.add_argument_group("synth_faces (defaults as in configs/default.py)")
    synth.add_argument("--dataset_seed", type=int, default=0, help="Which synthetic world.")
    synth.add_argument("--num_train_identities", type=int, default=1000)
    synth.add_argument("--photos_per_identity", type=int, default=24)
    synth.add_argument("--validation_photos_per_identity", type=int, default=4)
    synth.add_argument("--num_test_identities", type=int, default=200)
    args = parser.parse_args(argv)
    options = {}
    if args.dataset == "synth_faces":
        options = {name: getattr(args, name) for name in sdn_jax.data.SYNTH_FACES_OPTIONS}
    try:
        prepare_and_report(args.dataset, args.image_size, args.data_dir, args.manual_dir, **options)
    except ValueError as error:  # Bad sizes, a malformed CelebA release: one clear line.
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
