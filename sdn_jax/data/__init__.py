"""Datasets: the synthetic face renderer, CelebA, TFDS builders and grain pipelines."""

import os

# The synth_faces fields of config.data that define the dataset (synth_builder.synth_faces_config).
SYNTH_FACES_OPTIONS = (
    "dataset_seed",
    "num_train_identities",
    "photos_per_identity",
    "validation_photos_per_identity",
    "num_test_identities",
)


def dataset_options(data_config) -> dict:
    """The dataset-shaping options of a config's `data` block, for load_source/prepare."""
    if data_config.name == "synth_faces":
        return {key: getattr(data_config, key) for key in SYNTH_FACES_OPTIONS}
    return {}


def default_data_dir(workdir: str | os.PathLike | None = None) -> str:
    """$TFDS_DATA_DIR if set, else <workdir>/../tensorflow_datasets (INTERFACES.md)."""
    if os.environ.get("TFDS_DATA_DIR"):
        return os.environ["TFDS_DATA_DIR"]
    if workdir is None:
        raise ValueError("No data_dir given, no $TFDS_DATA_DIR set and no workdir to derive one")
    return os.path.join(os.path.dirname(os.path.abspath(workdir)), "tensorflow_datasets")


def load_source(
    name: str,
    split: str,
    image_size: int,
    data_dir: str | os.PathLike,
    *,
    manual_dir: str | os.PathLike | None = None,
    prepare_if_missing: bool = False,
    **options,
):
    """A random-access source (len, [i]) of dict records with numpy values.

    Records have `image` (uint8 HxWx3), `identity` (int32, contiguous within the
    split), `attributes` (40 bools in CelebA order) and, for CelebA, `identity_raw`,
    `landmarks` and `file_name`. A dataset that is not prepared yet is an error
    naming the command that prepares it, unless `prepare_if_missing`.
    """
    from sdn_jax.data import builders  # Lazy: `python -m sdn_jax.data.<module>` stays clean.

    builder = builders.get_builder(name, image_size, data_dir, **options)
    if not builder.is_prepared():
        if not prepare_if_missing:
            raise FileNotFoundError(
                f"Dataset {name} at {image_size}px is not prepared in {data_dir}. Run: "
                f"python -m sdn_jax.data.prepare --dataset {name} --image_size {image_size} "
                f"--data_dir {data_dir}"
                + (" --manual_dir <CelebA folder>" if name == "celeba" else "")
            )
        builder = builders.prepare(name, image_size, data_dir, manual_dir=manual_dir, **options)
    if split not in builder.info.splits:
        raise ValueError(
            f"Dataset {name} has no split {split!r}; it has {list(builder.info.splits)}"
        )
    return builder.as_data_source(split)
