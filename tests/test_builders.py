"""TFDS builders and `load_source` / `prepare` for the synthetic set (CelebA: test_celeba)."""

import dataclasses
import hashlib

import numpy as np
import pytest
from tiny_model import tiny_settings

import sdn_jax.data
from sdn_jax.data import builders, prepare, synth

TINY = dict(
    num_train_identities=3,
    photos_per_identity=2,
    validation_photos_per_identity=1,
    num_test_identities=2,
)


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def _expected(people, photos):
    """What each (person, photo) renders to, keyed by image content."""
    images, labels = synth.render_faces(people, photos, 32)
    return {_digest(im): (p, ph, lab) for im, p, ph, lab in zip(images, people, photos, labels)}


def test_synth_faces_round_trip(tmp_path):
    builders.prepare("synth_faces", 32, tmp_path, **TINY)
    splits = {
        "train": _expected([0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 1]),
        "validation": _expected([0, 1, 2], [2, 2, 2]),
        "test": _expected([3, 3, 4, 4], [0, 1, 0, 1]),
    }
    person_label = {}
    for split, expected in splits.items():
        source = sdn_jax.data.load_source("synth_faces", split, 32, tmp_path, **TINY)
        assert len(source) == len(expected)
        seen = set()
        for i in range(len(source)):  # TFDS shuffles on write: match records by content.
            record = source[i]
            assert record["image"].dtype == np.uint8 and record["image"].shape == (32, 32, 3)
            digest = _digest(record["image"])
            person, _, labels = expected[digest]
            seen.add(digest)
            np.testing.assert_array_equal(record["attributes"], labels)
            key = (split == "test", person)
            person_label.setdefault(key, int(record["identity"]))
            assert person_label[key] == int(record["identity"])  # One label per person.
        assert seen == set(expected)
    # Train and validation share labels 0..2 (the same people); test people are 0..1.
    assert sorted(v for (test, _), v in person_label.items() if not test) == [0, 1, 2]
    assert sorted(v for (test, _), v in person_label.items() if test) == [0, 1]


def test_load_source_explains_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m sdn_jax.data.prepare --dataset"):
        sdn_jax.data.load_source("synth_faces", "train", 32, tmp_path, **TINY)
    source = sdn_jax.data.load_source(
        "synth_faces", "test", 32, tmp_path, prepare_if_missing=True, **TINY
    )
    assert len(source) == 4
    with pytest.raises(ValueError, match="no split 'dev'"):
        sdn_jax.data.load_source("synth_faces", "dev", 32, tmp_path, **TINY)


def test_worlds_of_other_sizes_do_not_share_a_folder(tmp_path):
    small = builders.get_builder("synth_faces", 32, tmp_path, **TINY)
    larger = builders.get_builder("synth_faces", 32, tmp_path, **{**TINY, "num_test_identities": 3})
    other_seed = builders.get_builder("synth_faces", 32, tmp_path, **{**TINY, "dataset_seed": 1})
    dirs = {str(b.data_dir) for b in (small, larger, other_seed)}
    assert len(dirs) == 3


def test_default_sizes_use_the_registered_configs(tmp_path):
    # TFDS refuses a new config object named like a registered one; get_builder must cope.
    for size in synth.IMAGE_SIZES:
        builder = builders.get_builder("synth_faces", size, tmp_path)
        assert builder.builder_config.image_size == size
        assert builder.builder_config.num_train_identities == 1000


def test_bad_dataset_arguments(tmp_path):
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'"):
        builders.get_builder("imagenet", 64, tmp_path)
    with pytest.raises(ValueError, match="image_size must be one of"):
        builders.get_builder("synth_faces", 48, tmp_path)
    with pytest.raises(ValueError, match="num_test_identities must be at least 1"):
        builders.get_builder("synth_faces", 32, tmp_path, **{**TINY, "num_test_identities": 0})
    with pytest.raises(ValueError, match="manual_dir"):
        builders.prepare("celeba", 64, tmp_path)


def test_dataset_options_and_default_data_dir(monkeypatch, tmp_path):
    data = dataclasses.replace(tiny_settings().data, **TINY, dataset_seed=5)
    assert data.name == "synth_faces"
    assert sdn_jax.data.dataset_options(data) == {**TINY, "dataset_seed": 5}
    assert sdn_jax.data.dataset_options(dataclasses.replace(data, name="celeba")) == {}
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    workdir = tmp_path / "runs" / "default"
    assert sdn_jax.data.default_data_dir(workdir) == str(tmp_path / "runs" / "tensorflow_datasets")
    monkeypatch.setenv("TFDS_DATA_DIR", "/data/tfds")
    assert sdn_jax.data.default_data_dir(workdir) == "/data/tfds"


def test_prepare_command_reports_split_sizes(tmp_path, capsys):
    sizes = prepare.prepare_and_report("synth_faces", 32, tmp_path, **TINY)
    assert sizes == {"train": 6, "validation": 3, "test": 4}
    out = capsys.readouterr().out
    assert "prepared in" in out and "validation" in out
    prepare.prepare_and_report("synth_faces", 32, tmp_path, **TINY)
    assert "already prepared" in capsys.readouterr().out
