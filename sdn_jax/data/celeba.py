"""CelebA from the user's own copy of the official release, as a TFDS builder with identities.

The official `celeb_a` TFDS builder has no identity labels and insists on checksums of
files it downloads itself, so this builder reads the manual dir instead. Every list file
is parsed and cross-checked (`read_release`) before a single image is decoded: a broken
release fails in seconds with the file and line at fault, not hours into preparation.
"""

import contextlib
import dataclasses
import io
import os
import zipfile
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from sdn_jax.data import attributes, encoding

IMAGE_SIZES = (64, 128)
ATTR_FILE = "list_attr_celeba.txt"
IDENTITY_FILE = "identity_CelebA.txt"
PARTITION_FILE = "list_eval_partition.txt"
LANDMARKS_FILE = "list_landmarks_align_celeba.txt"
IMAGE_DIR = "img_align_celeba"
IMAGE_ZIP = "img_align_celeba.zip"
LANDMARK_NAMES = (
    "lefteye_x",
    "lefteye_y",
    "righteye_x",
    "righteye_y",
    "nose_x",
    "nose_y",
    "leftmouth_x",
    "leftmouth_y",
    "rightmouth_x",
    "rightmouth_y",
)
SPLITS = ("train", "validation", "test")  # Index = the value in list_eval_partition.txt.
_BINARY = {"-1": False, "1": True}


class CelebaFormatError(ValueError):
    """The release in the manual dir is missing a file or disagrees with the official format."""


def _error(file: str, line: int | None, message: str) -> CelebaFormatError:
    where = file if line is None else f"{file} line {line}"
    return CelebaFormatError(f"{where}: {message}")


@dataclasses.dataclass(frozen=True)
class ImageStore:
    """Where the aligned JPEGs are: the extracted folder, or the zip as released."""

    kind: str  # "folder" or "zip".
    path: str

    @property
    def display_name(self) -> str:
        return IMAGE_ZIP if self.kind == "zip" else IMAGE_DIR + "/"

    def names(self) -> set[str]:
        """The image file names present; cheap (a directory listing or the zip's index)."""
        if self.kind == "folder":
            return set(os.listdir(self.path))
        prefix = IMAGE_DIR + "/"
        try:
            with zipfile.ZipFile(self.path) as archive:
                members = archive.namelist()
        except zipfile.BadZipFile as e:
            raise _error(IMAGE_ZIP, None, f"not a readable zip file ({e})") from e
        return {m[len(prefix) :] for m in members if m.startswith(prefix) and len(m) > len(prefix)}

    @contextlib.contextmanager
    def reader(self) -> Iterator:
        """A function file_name -> JPEG bytes; the zip is opened once, not once per image."""
        if self.kind == "folder":

            def read(name: str) -> bytes:
                with open(os.path.join(self.path, name), "rb") as f:
                    return f.read()

            yield read
        else:
            with zipfile.ZipFile(self.path) as archive:
                yield lambda name: archive.read(f"{IMAGE_DIR}/{name}")


@dataclasses.dataclass(frozen=True)
class CelebaRelease:
    """The parsed, cross-checked list files; row i of each array describes file_names[i]."""

    file_names: list[str]  # In list_attr_celeba.txt order.
    attributes: np.ndarray  # (N, 40) bool, columns in CELEBA_ATTRIBUTES order.
    identity_raw: np.ndarray  # (N,) int64, the official identity ids.
    partition: np.ndarray  # (N,) int8: 0 train, 1 validation, 2 test.
    landmarks: np.ndarray  # (N, 10) int32, LANDMARK_NAMES order, aligned-image pixels.
    image_store: ImageStore


def _read_rows(manual_dir: str, file: str) -> list[tuple[int, list[str]]]:
    """(1-based line number, whitespace-split fields) of each non-blank line."""
    path = os.path.join(manual_dir, file)
    if not os.path.isfile(path):
        raise _error(file, None, f"required file is missing from the manual dir {manual_dir}")
    with open(path, encoding="utf-8") as f:
        return [(n, line.split()) for n, line in enumerate(f, start=1) if line.strip()]


def _parse_int(file: str, line: int, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _error(file, line, f"{what} must be an integer, got {text!r}") from None


def _header_columns(file: str, rows, expected: tuple[str, ...], kind: str) -> tuple[list, list]:
    """Checks the count line and the column-name line; returns (column order, data rows).

    Column order maps each file column to its index in `expected`, so columns are read by
    name whatever their order in the file.
    """
    if len(rows) < 2:
        raise _error(file, None, "expected a count line and a header line")
    (count_line, count_fields), (header_line, names) = rows[0], rows[1]
    if len(count_fields) != 1:
        raise _error(file, count_line, f"expected the image count, got {' '.join(count_fields)!r}")
    count = _parse_int(file, count_line, count_fields[0], "the image count")
    data = rows[2:]
    if count != len(data):
        raise _error(file, count_line, f"the count says {count} images but {len(data)} rows follow")
    unknown = [n for n in names if n not in expected]
    if unknown:
        raise _error(file, header_line, f"unknown {kind} name(s) {unknown}")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise _error(file, header_line, f"{kind} name(s) {duplicated} appear more than once")
    missing = [n for n in expected if n not in names]
    if missing:
        raise _error(file, header_line, f"missing {kind} name(s) {missing}")
    return [expected.index(n) for n in names], data


def _keyed(file: str, rows, num_values: int, parse) -> dict[str, tuple[int, object]]:
    """{file name: (line, parse(line, values))}; checks field counts and duplicated rows."""
    out = {}
    for line, fields in rows:
        if len(fields) != num_values + 1:
            raise _error(
                file, line, f"expected a file name and {num_values} values, got {len(fields) - 1}"
            )
        name = fields[0]
        if name in out:
            raise _error(file, line, f"{name} is listed again (first on line {out[name][0]})")
        out[name] = (line, parse(line, fields[1:]))
    return out


def _parse_attributes(manual_dir: str) -> dict:
    rows = _read_rows(manual_dir, ATTR_FILE)
    order, data = _header_columns(ATTR_FILE, rows, attributes.CELEBA_ATTRIBUTES, "attribute")

    def parse(line, values):
        try:
            flags = [_BINARY[v] for v in values]
        except KeyError:
            bad = next(v for v in values if v not in _BINARY)
            message = f"attribute values must be -1 or 1, got {bad!r}"
            raise _error(ATTR_FILE, line, message) from None
        vector = np.zeros(attributes.NUM_ATTRIBUTES, dtype=bool)
        vector[order] = flags
        return vector

    return _keyed(ATTR_FILE, data, attributes.NUM_ATTRIBUTES, parse)


def _parse_single_int(manual_dir: str, file: str, what: str, allowed=None) -> dict:
    def parse(line, values):
        value = _parse_int(file, line, values[0], what)
        if allowed is not None and value not in allowed:
            raise _error(file, line, f"{what} must be one of {sorted(allowed)}, got {value}")
        return value

    return _keyed(file, _read_rows(manual_dir, file), 1, parse)


def _parse_landmarks(manual_dir: str) -> dict:
    rows = _read_rows(manual_dir, LANDMARKS_FILE)
    order, data = _header_columns(LANDMARKS_FILE, rows, LANDMARK_NAMES, "landmark")

    def parse(line, values):
        vector = np.zeros(len(LANDMARK_NAMES), dtype=np.int32)
        vector[order] = [_parse_int(LANDMARKS_FILE, line, v, "a landmark") for v in values]
        return vector

    return _keyed(LANDMARKS_FILE, data, len(LANDMARK_NAMES), parse)


def _check_same_images(reference: dict, file: str, other: dict) -> None:
    """Files are matched by image name, so each must list exactly the attribute file's images."""
    extra = [(line, name) for name, (line, _) in other.items() if name not in reference]
    if extra:
        line, name = min(extra)
        raise _error(file, line, f"{name} is not listed in {ATTR_FILE}")
    missing = [name for name in reference if name not in other]
    if missing:
        raise _error(
            file,
            None,
            f"{len(missing)} image(s) of {ATTR_FILE} are not listed, e.g. {missing[:5]}",
        )


def _find_image_store(manual_dir: str) -> ImageStore:
    folder = os.path.join(manual_dir, IMAGE_DIR)
    if os.path.isdir(folder):  # Preferred: no decompression, no zip index to read.
        return ImageStore("folder", folder)
    archive = os.path.join(manual_dir, IMAGE_ZIP)
    if os.path.isfile(archive):
        return ImageStore("zip", archive)
    raise _error(
        IMAGE_ZIP, None, f"neither {IMAGE_ZIP} nor an extracted {IMAGE_DIR}/ is in {manual_dir}"
    )


def read_release(manual_dir: str | os.PathLike) -> CelebaRelease:
    """Parses and cross-checks the official list files; checks every image is present.

    Raises CelebaFormatError naming the file (and line) at fault. Decodes no image.
    """
    manual_dir = os.fspath(manual_dir)
    attrs = _parse_attributes(manual_dir)
    identities = _parse_single_int(manual_dir, IDENTITY_FILE, "the identity")
    partitions = _parse_single_int(manual_dir, PARTITION_FILE, "the partition", {0, 1, 2})
    landmarks = _parse_landmarks(manual_dir)
    for file, table in (
        (IDENTITY_FILE, identities),
        (PARTITION_FILE, partitions),
        (LANDMARKS_FILE, landmarks),
    ):
        _check_same_images(attrs, file, table)

    store = _find_image_store(manual_dir)
    present = store.names()
    for name, (line, _) in attrs.items():
        if name not in present:
            raise _error(
                store.display_name,
                None,
                f"image {name} (listed in {ATTR_FILE} line {line}) is missing",
            )

    names = list(attrs)
    return CelebaRelease(
        file_names=names,
        attributes=np.stack([attrs[n][1] for n in names]).reshape(-1, attributes.NUM_ATTRIBUTES),
        identity_raw=np.array([identities[n][1] for n in names], dtype=np.int64),
        partition=np.array([partitions[n][1] for n in names], dtype=np.int8),
        landmarks=np.stack([landmarks[n][1] for n in names]).reshape(-1, len(LANDMARK_NAMES)),
        image_store=store,
    )


def preprocess(image: np.ndarray, image_size: int) -> np.ndarray:
    """Centre square crop (178x178 of the aligned 178x218), then resize to image_size.

    The usual CelebA protocol (StarGAN, Gu et al.). PIL's BICUBIC filter widens its support
    by the downscale factor, so it antialiases like an area filter while staying sharp.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    pil = Image.fromarray(image.astype(np.uint8, copy=False)).convert("RGB")  # L/RGBA -> RGB.
    width, height = pil.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    pil = pil.crop((left, top, left + side, top + side))
    if side != image_size:
        pil = pil.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(pil, dtype=np.uint8)


@dataclasses.dataclass
class CelebaConfig(tfds.core.BuilderConfig):
    """One stored resolution."""

    image_size: int = 128


class CelebaIdentity(tfds.core.GeneratorBasedBuilder):
    """Aligned CelebA with identities, attributes and landmarks, from the official release.

    `identity` is contiguous within each split (0..n-1 by sorted official id) so a
    classifier can use it directly; `identity_raw` is the official id. `landmarks` are the
    file's values in the 178x218 aligned image, before the centre crop and resize.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        CelebaConfig(name=f"{s}px", description=f"Centre crop resized to {s}x{s}.", image_size=s)
        for s in IMAGE_SIZES
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Download the official CelebA release (mmlab.ie.cuhk.edu.hk/projects/CelebA.html) and put
    in the manual dir: {IMAGE_ZIP} (or the extracted {IMAGE_DIR}/ folder), {ATTR_FILE},
    {IDENTITY_FILE}, {PARTITION_FILE} and {LANDMARKS_FILE}.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            homepage="https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
            features=tfds.features.FeaturesDict(
                {
                    "image": encoding.image_feature(size),
                    "identity": tfds.features.Scalar(np.int32),
                    "identity_raw": tfds.features.Scalar(np.int32),
                    "attributes": encoding.attributes_feature(),
                    "landmarks": tfds.features.Tensor(shape=(len(LANDMARK_NAMES),), dtype=np.int32),
                    "file_name": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        # All validation, including image presence, happens here, before any decoding.
        release = read_release(dl_manager.manual_dir)
        return {name: self._generate_examples(release, index) for index, name in enumerate(SPLITS)}

    def _generate_examples(self, release: CelebaRelease, partition: int):
        rows = np.flatnonzero(release.partition == partition)
        raw = release.identity_raw[rows]
        # Contiguous labels by sorted official id: train identities are 0..n_train-1.
        labels = np.searchsorted(np.unique(raw), raw)
        size = self.builder_config.image_size
        with release.image_store.reader() as read:
            for row, label in zip(rows, labels, strict=True):
                name = release.file_names[row]
                try:
                    with Image.open(io.BytesIO(read(name))) as pil:
                        image = np.asarray(pil.convert("RGB"))
                except OSError as e:
                    store = release.image_store.display_name
                    raise _error(store, None, f"image {name} cannot be decoded ({e})") from e
                yield (
                    name,
                    {
                        "image": encoding.encode_png(preprocess(image, size)),
                        "identity": np.int32(label),
                        "identity_raw": np.int32(release.identity_raw[row]),
                        "attributes": release.attributes[row],
                        "landmarks": release.landmarks[row],
                        "file_name": name,
                    },
                )


def get_builder(image_size: int, data_dir: str | os.PathLike) -> CelebaIdentity:
    """The CelebA builder at one stored resolution (64 or 128), writing ArrayRecord."""
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"celeba image_size must be one of {IMAGE_SIZES}, got {image_size}")
    return CelebaIdentity(
        config=f"{image_size}px", data_dir=os.fspath(data_dir), file_format=encoding.FILE_FORMAT
    )
