"""CelebA builder: parsing the official list files, validation, and a full TFDS round trip."""

import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from sdn_jax.data import attributes, builders, celeba, load_source

# (file name, official identity id, partition). Raw ids are arbitrary and the partitions
# interleave in file order; the partitions are disjoint in identities, as in CelebA.
ROWS = [
    ("000001.jpg", 2880, 0),
    ("000002.jpg", 17, 0),
    ("000003.jpg", 500, 1),
    ("000004.jpg", 2880, 0),
    ("000005.jpg", 3, 2),
    ("000006.jpg", 9001, 0),
    ("000007.jpg", 17, 0),
    ("000008.jpg", 500, 1),
    ("000009.jpg", 10177, 1),
    ("000010.jpg", 42, 2),
    ("000011.jpg", 3, 2),
    ("000012.jpg", 9001, 0),
]
NAMES = [r[0] for r in ROWS]
# Contiguous per split by sorted raw id: train {17, 2880, 9001}, validation {500, 10177},
# test {3, 42}.
EXPECTED_IDENTITY = {17: 0, 2880: 1, 9001: 2, 500: 0, 10177: 1, 3: 0, 42: 1}
SPLIT_OF = {0: "train", 1: "validation", 2: "test"}
_RNG = np.random.default_rng(0)
ATTRS = _RNG.random((len(ROWS), attributes.NUM_ATTRIBUTES)) < 0.5
LANDMARKS = _RNG.integers(0, 218, size=(len(ROWS), 10)).astype(np.int32)


def _photo(index: int) -> np.ndarray:
    """A 178x218 image unique to `index`: its own colour plus a vertical gradient."""
    image = np.zeros((218, 178, 3), np.uint8)
    image[..., 0] = 20 * index
    image[..., 1] = np.linspace(0, 255, 218, dtype=np.uint8)[:, None]
    image[..., 2] = 255 - 15 * index
    return image


def _jpeg(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_photo(index)).save(buffer, format="jpeg", quality=95)
    return buffer.getvalue()


JPEGS = {name: _jpeg(i) for i, name in enumerate(NAMES)}


def _write(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_release(root, images="folder", attr_order=None):
    """A tiny release in the official formats; returns its folder.

    images: "folder", "zip" or "both". attr_order: attribute column order of the header.
    The identity, partition and landmark files list the images in other orders than the
    attribute file, so they must be matched by name.
    """
    root = str(root)
    os.makedirs(root, exist_ok=True)
    order = list(attr_order or attributes.CELEBA_ATTRIBUTES)
    columns = [attributes.ATTRIBUTE_INDEX[n] for n in order]
    attr_lines = [str(len(ROWS)), " ".join(order) + " "]  # The official header ends in a space.
    for name, row in zip(NAMES, ATTRS, strict=True):
        values = " ".join(f"{1 if row[c] else -1:2d}" for c in columns)  # " 1" padded.
        attr_lines.append(f"{name} {values}")
    _write(os.path.join(root, celeba.ATTR_FILE), attr_lines)
    _write(os.path.join(root, celeba.IDENTITY_FILE), [f"{n} {i}" for n, i, _ in ROWS[::-1]])
    shuffled = [ROWS[i] for i in (3, 0, 7, 1, 11, 2, 5, 4, 10, 6, 9, 8)]
    _write(os.path.join(root, celeba.PARTITION_FILE), [f"{n} {p}" for n, _, p in shuffled])
    landmark_lines = [str(len(ROWS)), " ".join(celeba.LANDMARK_NAMES)]
    for i in reversed(range(len(ROWS))):
        landmark_lines.append(NAMES[i] + "  " + " ".join(f"{v:4d}" for v in LANDMARKS[i]))
    _write(os.path.join(root, celeba.LANDMARKS_FILE), landmark_lines)
    if images in ("folder", "both"):
        os.makedirs(os.path.join(root, celeba.IMAGE_DIR))
        for name, data in JPEGS.items():
            with open(os.path.join(root, celeba.IMAGE_DIR, name), "wb") as f:
                f.write(data)
    if images in ("zip", "both"):
        _write_zip(os.path.join(root, celeba.IMAGE_ZIP), NAMES)
    return root


def _write_zip(path, names):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{celeba.IMAGE_DIR}/", "")
        for name in names:
            archive.writestr(f"{celeba.IMAGE_DIR}/{name}", JPEGS[name])


def _edit_line(path, line, new):
    with open(path) as f:
        lines = f.read().split("\n")
    lines[line - 1] = new(lines[line - 1])
    with open(path, "w") as f:
        f.write("\n".join(lines))


def _expected_image(name):
    decoded = np.asarray(Image.open(io.BytesIO(JPEGS[name])).convert("RGB"))
    return celeba.preprocess(decoded, 64)


@pytest.mark.parametrize("permuted", [False, True])
def test_read_release_parses_values_by_name(tmp_path, permuted):
    order = list(attributes.CELEBA_ATTRIBUTES)
    if permuted:
        order = [order[i] for i in np.random.default_rng(1).permutation(len(order))]
    release = celeba.read_release(write_release(tmp_path, attr_order=order))
    assert release.file_names == NAMES
    np.testing.assert_array_equal(release.attributes, ATTRS)
    assert release.attributes.dtype == np.bool_
    np.testing.assert_array_equal(release.identity_raw, [r[1] for r in ROWS])
    np.testing.assert_array_equal(release.partition, [r[2] for r in ROWS])
    np.testing.assert_array_equal(release.landmarks, LANDMARKS)
    assert release.image_store.kind == "folder"


def test_read_release_prefers_the_folder_and_accepts_the_zip(tmp_path):
    both = celeba.read_release(write_release(tmp_path / "both", images="both"))
    assert both.image_store.kind == "folder"
    only_zip = celeba.read_release(write_release(tmp_path / "zip", images="zip"))
    assert only_zip.image_store.kind == "zip"


@pytest.mark.parametrize("images", ["folder", "zip"])
def test_prepare_round_trip(tmp_path, images):
    manual_dir = write_release(tmp_path / "manual", images=images)
    data_dir = tmp_path / "tfds"
    builders.prepare("celeba", 64, data_dir, manual_dir=manual_dir)
    for partition, split in SPLIT_OF.items():
        source = load_source("celeba", split, 64, data_dir)
        records = [source[i] for i in range(len(source))]
        names = [r["file_name"] for r in records]
        names = [n.decode() if isinstance(n, bytes) else n for n in names]
        assert sorted(names) == sorted(n for n, _, p in ROWS if p == partition)
        for name, record in zip(names, records, strict=True):
            i = NAMES.index(name)
            raw = ROWS[i][1]
            assert record["identity_raw"] == raw
            assert record["identity"] == EXPECTED_IDENTITY[raw]
            np.testing.assert_array_equal(record["attributes"], ATTRS[i])
            np.testing.assert_array_equal(record["landmarks"], LANDMARKS[i])
            assert record["image"].dtype == np.uint8
            np.testing.assert_array_equal(record["image"], _expected_image(name))


def _drop_last_attribute(path):
    """Removes the Young column from the header and every row: still well formed, 39 columns."""
    with open(path) as f:
        lines = f.read().split("\n")
    lines = lines[:1] + [line.rstrip().rsplit(" ", 1)[0] for line in lines[1:] if line]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _remove(path):
    os.remove(path)


# (mutation of a good folder release, text the error must contain).
MALFORMED = {
    "missing file": (
        lambda d: _remove(os.path.join(d, celeba.IDENTITY_FILE)),
        [celeba.IDENTITY_FILE, "missing"],
    ),
    "count disagrees": (
        lambda d: _edit_line(os.path.join(d, celeba.ATTR_FILE), 1, lambda s: "13"),
        [f"{celeba.ATTR_FILE} line 1", "13"],
    ),
    "unknown attribute": (
        lambda d: _edit_line(
            os.path.join(d, celeba.ATTR_FILE), 2, lambda s: s.replace("Smiling", "Smiles")
        ),
        [f"{celeba.ATTR_FILE} line 2", "Smiles"],
    ),
    "duplicated attribute": (
        lambda d: _edit_line(
            os.path.join(d, celeba.ATTR_FILE), 2, lambda s: s.replace("Young", "Smiling")
        ),
        [f"{celeba.ATTR_FILE} line 2", "Smiling"],
    ),
    "missing attribute": (
        lambda d: _drop_last_attribute(os.path.join(d, celeba.ATTR_FILE)),
        [f"{celeba.ATTR_FILE} line 2", "Young"],
    ),
    "value 0": (
        lambda d: _edit_line(os.path.join(d, celeba.ATTR_FILE), 7, lambda s: s[:-2] + " 0"),
        [f"{celeba.ATTR_FILE} line 7", "'0'"],
    ),
    "value 2": (
        lambda d: _edit_line(os.path.join(d, celeba.ATTR_FILE), 4, lambda s: s[:-2] + " 2"),
        [f"{celeba.ATTR_FILE} line 4", "'2'"],
    ),
    "39 values": (
        lambda d: _edit_line(os.path.join(d, celeba.ATTR_FILE), 7, lambda s: s[:-3]),
        [f"{celeba.ATTR_FILE} line 7", "got 39"],
    ),
    "duplicated row": (
        lambda d: _edit_line(
            os.path.join(d, celeba.IDENTITY_FILE), 3, lambda s: s.replace("000010", "000011")
        ),
        [f"{celeba.IDENTITY_FILE} line 3", "000011.jpg", "line 2"],
    ),
    "partition 3": (
        lambda d: _edit_line(os.path.join(d, celeba.PARTITION_FILE), 5, lambda s: s[:-1] + "3"),
        [f"{celeba.PARTITION_FILE} line 5", "3"],
    ),
    "identity not an integer": (
        lambda d: _edit_line(os.path.join(d, celeba.IDENTITY_FILE), 6, lambda s: s + "x"),
        [f"{celeba.IDENTITY_FILE} line 6", "integer"],
    ),
    "landmark not an integer": (
        lambda d: _edit_line(os.path.join(d, celeba.LANDMARKS_FILE), 3, lambda s: s + ".5"),
        [f"{celeba.LANDMARKS_FILE} line 3", "integer"],
    ),
    "image unknown to the attribute file": (
        lambda d: _edit_line(
            os.path.join(d, celeba.LANDMARKS_FILE), 4, lambda s: s.replace("000011", "999999")
        ),
        [f"{celeba.LANDMARKS_FILE} line 4", "999999.jpg"],
    ),
    "image absent from the folder": (
        lambda d: _remove(os.path.join(d, celeba.IMAGE_DIR, "000005.jpg")),
        ["000005.jpg", f"{celeba.ATTR_FILE} line 7", celeba.IMAGE_DIR],
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_release_names_the_file_and_line(tmp_path, case):
    mutate, expected = MALFORMED[case]
    manual_dir = write_release(tmp_path)
    mutate(manual_dir)
    with pytest.raises(celeba.CelebaFormatError) as info:
        celeba.read_release(manual_dir)
    for text in expected:
        assert text in str(info.value)


def test_image_absent_from_the_zip(tmp_path):
    manual_dir = write_release(tmp_path, images="zip")
    _write_zip(os.path.join(manual_dir, celeba.IMAGE_ZIP), [n for n in NAMES if n != "000009.jpg"])
    with pytest.raises(celeba.CelebaFormatError) as info:
        celeba.read_release(manual_dir)
    for text in ["000009.jpg", f"{celeba.ATTR_FILE} line 11", celeba.IMAGE_ZIP]:
        assert text in str(info.value)


def test_prepare_validates_before_decoding(tmp_path):
    """A missing image is reported even though an earlier image would fail to decode."""
    manual_dir = write_release(tmp_path / "manual")
    with open(os.path.join(manual_dir, celeba.IMAGE_DIR, "000001.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    os.remove(os.path.join(manual_dir, celeba.IMAGE_DIR, "000012.jpg"))
    with pytest.raises(celeba.CelebaFormatError, match="000012.jpg"):
        builders.prepare("celeba", 64, tmp_path / "tfds", manual_dir=manual_dir)
    with open(os.path.join(manual_dir, celeba.IMAGE_DIR, "000012.jpg"), "wb") as f:
        f.write(JPEGS["000012.jpg"])
    with pytest.raises(celeba.CelebaFormatError, match="000001.jpg cannot be decoded"):
        builders.prepare("celeba", 64, tmp_path / "tfds", manual_dir=manual_dir)


def _banded_photo():
    """178x218: red top 20 rows, blue bottom 20 rows, a row-coded gradient in between."""
    image = np.zeros((218, 178, 3), np.uint8)
    image[:20] = (255, 0, 0)
    image[198:] = (0, 0, 255)
    image[20:198, :, 1] = np.arange(178, dtype=np.uint8)[:, None]
    return image


def test_preprocess_takes_the_centre_square():
    image = _banded_photo()
    np.testing.assert_array_equal(celeba.preprocess(image, 178), image[20:198])
    small = celeba.preprocess(image, 64)
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8
    small = small.astype(int)
    assert small[..., 0].max() <= 2 and small[..., 2].max() <= 2  # No red/blue band.
    column = small[:, 32, 1]  # The gradient survives, top to bottom, without the bands.
    assert column[0] < 6 and column[-1] > 170 and np.all(np.diff(column) >= 0)


def test_preprocess_converts_gray_and_rgba_to_rgb():
    gray = _banded_photo()[..., 1]
    out = celeba.preprocess(gray, 178)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], gray[20:198])
    rgba = np.concatenate([_banded_photo(), np.full((218, 178, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(celeba.preprocess(rgba, 178), _banded_photo()[20:198])


def test_get_builder_rejects_other_sizes(tmp_path):
    with pytest.raises(ValueError, match="64"):
        celeba.get_builder(image_size=96, data_dir=tmp_path)
    assert celeba.get_builder(image_size=128, data_dir=tmp_path).builder_config.image_size == 128
    assert celeba.get_builder(image_size=64, data_dir=tmp_path).name == "celeba_identity"
