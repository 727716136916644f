"""The TFDS builder `synth_faces`: the renderer's world (sdn_jax.data.synth) as a dataset.

One config per resolution and world size; see `synth_faces_config`. Get a builder with
sdn_jax.data.builders.get_builder("synth_faces", ...).
"""

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from sdn_jax.data import encoding, synth


@dataclasses.dataclass
class SynthFacesConfig(tfds.core.BuilderConfig):
    """The size of a synthetic world; the name encodes every field that shapes the data."""

    image_size: int = 64
    dataset_seed: int = 0
    num_train_identities: int = 1000
    photos_per_identity: int = 24
    validation_photos_per_identity: int = 4
    num_test_identities: int = 200


def synth_faces_config(
    image_size: int = 64,
    dataset_seed: int = 0,
    num_train_identities: int = 1000,
    photos_per_identity: int = 24,
    validation_photos_per_identity: int = 4,
    num_test_identities: int = 200,
) -> SynthFacesConfig:
    """A config whose name is unique to its fields, so worlds never share a folder."""
    if image_size not in synth.IMAGE_SIZES:
        raise ValueError(
            f"synth_faces image_size must be one of {synth.IMAGE_SIZES}, got {image_size}"
        )
    counts = dict(
        num_train_identities=num_train_identities,
        photos_per_identity=photos_per_identity,
        validation_photos_per_identity=validation_photos_per_identity,
        num_test_identities=num_test_identities,
    )
    for field, value in counts.items():
        if int(value) < 1:
            raise ValueError(f"synth_faces {field} must be at least 1, got {value}")
    name = (
        f"{image_size}px_seed{dataset_seed}_{num_train_identities}x{photos_per_identity}"
        f"_val{validation_photos_per_identity}_test{num_test_identities}"
    )
    return SynthFacesConfig(
        name=name,
        description="Procedural faces with exact identity and attribute labels.",
        image_size=image_size,
        dataset_seed=dataset_seed,
        **counts,
    )


class SynthFaces(tfds.core.GeneratorBasedBuilder):
    """Procedurally rendered faces (sdn_jax.data.synth_faces).

    Splits: `train` (train people), `validation` (other photos of the train people,
    same identity labels), `test` (people never in train, labels 0..n_test-1).
    """

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "First release.",
        "1.1.0": "Bolder glasses (2px frames, tinted lenses) and darker mustaches.",
    }
    BUILDER_CONFIGS = [synth_faces_config(size) for size in synth.IMAGE_SIZES]

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": encoding.image_feature(size),
                    "identity": tfds.features.Scalar(np.int32),
                    "attributes": encoding.attributes_feature(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing is downloaded.
        c = self.builder_config
        train_people = np.arange(c.num_train_identities)
        # Test people are other draws of the same world: identity numbers past the train ones.
        test_people = c.num_train_identities + np.arange(c.num_test_identities)
        return {
            "train": self._generate_examples(train_people, 0, c.photos_per_identity),
            "validation": self._generate_examples(
                train_people, c.photos_per_identity, c.validation_photos_per_identity
            ),
            "test": self._generate_examples(test_people, 0, c.photos_per_identity),
        }

    def _generate_examples(self, people, first_photo, num_photos):
        c = self.builder_config
        people = np.repeat(people, num_photos)
        photos = np.tile(
            np.arange(first_photo, first_photo + num_photos), len(people) // num_photos
        )
        labels = people - people.min()  # Contiguous within the split.
        chunk = 256
        for start in range(0, len(people), chunk):
            stop = start + chunk
            images, attrs = synth.render_faces(
                people[start:stop], photos[start:stop], c.image_size, seed=c.dataset_seed
            )
            for i, (image, attr) in enumerate(zip(images, attrs, strict=True)):
                key = f"{people[start + i]}_{photos[start + i]}"
                yield (
                    key,
                    {
                        "image": encoding.encode_png(image),
                        "identity": labels[start + i],
                        "attributes": attr,
                    },
                )


def get_builder(image_size: int, data_dir: str | os.PathLike, **options) -> SynthFaces:
    """The synth_faces builder of one world (the fields of `synth_faces_config`)."""
    config = synth_faces_config(image_size=image_size, **options)
    # TFDS takes a built-in config by name only (a new object with its name is refused).
    if config.name in {c.name for c in SynthFaces.BUILDER_CONFIGS}:
        config = config.name
    return SynthFaces(config=config, data_dir=os.fspath(data_dir), file_format=encoding.FILE_FORMAT)
