"""Every dataset's TFDS builder by name, and preparing it once.

synth_faces: synth_builder.py; celeba: celeba.py. Both write ArrayRecord of PNG-encoded
examples (encoding.py), so `builder.as_data_source(split)` reads them back as numpy dicts
without TensorFlow.
"""

import os

import tensorflow_datasets as tfds

from sdn_jax.data import synth_builder

DATASET_NAMES = ("synth_faces", "celeba")


def get_builder(
    name: str, image_size: int, data_dir: str | os.PathLike, **options
) -> tfds.core.DatasetBuilder:
    """The builder of dataset `name` ('synth_faces' or 'celeba') at one resolution.

    options: synth_faces: the fields of `synth_builder.synth_faces_config`; celeba: none.
    """
    data_dir = os.fspath(data_dir)
    if name == "synth_faces":
        return synth_builder.get_builder(image_size=image_size, data_dir=data_dir, **options)
    if name == "celeba":
        from sdn_jax.data import celeba  # Imported lazily: only CelebA users need it.

        if options:
            raise ValueError(f"celeba takes no dataset options, got {sorted(options)}")
        return celeba.get_builder(image_size=image_size, data_dir=data_dir)
    raise ValueError(f"Unknown dataset {name!r}; choose one of {DATASET_NAMES}")


def prepare(
    name: str,
    image_size: int,
    data_dir: str | os.PathLike,
    manual_dir: str | os.PathLike | None = None,
    **options,
) -> tfds.core.DatasetBuilder:
    """Prepares the dataset into data_dir once (a no-op when already there)."""
    builder = get_builder(name, image_size, data_dir, **options)
    if name == "celeba" and manual_dir is None and not builder.is_prepared():
        raise ValueError(
            "CelebA is read from your own copy of the official release: set "
            "data.manual_dir (or --manual_dir) to the folder holding img_align_celeba "
            "and the list_*.txt / identity_CelebA.txt files."
        )
    download_config = tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir) if manual_dir is not None else None
    )
    builder.download_and_prepare(download_config=download_config)
    return builder
