"""Image files in and out for the anonymize / deanonymize commands (Pillow does the work).

Reading: PNG, JPEG, WebP, BMP and TIFF; the EXIF orientation is applied; grayscale,
palette, CMYK and 16-bit images become 8-bit RGB (16-bit values are scaled, 65535 -> 255);
transparency is composited on a white background. Then the picture is fitted to the
model's square geometry: `crop` (default) takes the largest centred square and resizes it
(Lanczos), `pad` resizes the whole picture to fit and fills the borders with the
background. Pillow refuses pictures of more than `max_pixels` pixels before decoding them
(a decompression bomb: a small file that would decode to gigabytes).

Only regular files are opened: a FIFO, a device or a socket (named like an image or not)
is refused from its stat, before anything opens it (opening a FIFO waits forever for a
writer), and checked again on the open file.

Writing: lossless 8-bit RGB PNG without the input's metadata (EXIF, GPS and the like
are not copied; only the text given, the salt of its key), through a temporary file
created exclusively, never over an existing file unless asked.

A file that cannot be used raises ImageError with a one-line reason for people.
"""

import dataclasses
import io
import os
import stat
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin

from sdn_jax.atomic_files import written_atomically
from sdn_jax.images import round_to_uint8

SUPPORTED_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "TIFF")  # MPO: phones' JPEGs
# Files with these suffixes are taken from folders; a file named on the command line is
# tried whatever its name.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".webp", ".bmp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels: more than any phone camera's picture
BACKGROUND = (255, 255, 255)  # under transparent pixels, and around `pad`ded pictures
FITS = ("crop", "pad")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageError(Exception):
    """One input or output file cannot be used; str() is the reason, for people."""


def read_image(
    path: str | os.PathLike,
    size: int,
    fit: str | None = "crop",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """(size, size, 3) uint8 RGB of an image file, fitted as the module doc says.

    fit=None takes the picture as it is and requires it to be size x size already (the
    anonymized images that deanonymize reads: any resampling would break recovery).
    """
    return read_image_and_text(path, size, fit, max_pixels)[0]


def read_image_and_text(
    path: str | os.PathLike,
    size: int,
    fit: str | None = "crop",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, dict[str, str]]:
    """read_image's pixels and the file's text chunks (PNG tEXt/iTXt; {} for others)."""
    if fit is not None and fit not in FITS:
        raise ValueError(f"fit must be one of {FITS} or None, got {fit!r}")
    previous = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that: both refuse.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = max_pixels
            with open_regular(path) as file, Image.open(file) as image:
                if image.format not in SUPPORTED_FORMATS:
                    raise ImageError(
                        f"{image.format} images are not supported "
                        f"(use {', '.join(f for f in SUPPORTED_FORMATS if f != 'MPO')})"
                    )
                image.load()  # Decodes the pixels (and reads text chunks after them).
                text = {k: v for k, v in getattr(image, "text", {}).items() if isinstance(v, str)}
                rgb = to_rgb(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"refused: more than {max_pixels:,} pixels, a possible decompression bomb "
            "(--max-pixels raises the limit)"
        ) from None
    except Exception as error:  # Pillow raises many types on malformed files.
        raise ImageError(_describe_read_error(path, error)) from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    if fit is None:
        if rgb.size != (size, size):
            width, height = rgb.size
            raise ImageError(
                f"is {width}x{height}, but this model's images are {size}x{size}: not an "
                "image this model anonymized (or it was resized since)"
            )
        return np.asarray(rgb), text
    return np.asarray(fit_image(rgb, size, fit)), text


_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def not_regular(mode: int, link: bool = False) -> str | None:
    """Why a file of this st_mode is not read (None: a regular file); `link`: reached
    through a symlink."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not an image file"
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    return f"is {'a link to ' if link else ''}{kind}, not a regular file: skipped, never opened"


def open_regular(path: str | os.PathLike):
    """The file at `path` opened for reading, if it is a regular file (links followed);
    else ImageError, before opening it. O_NONBLOCK and a second look at the open file
    close the race with a FIFO swapped in between."""
    reason = not_regular(os.stat(path).st_mode)
    if reason is None:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        reason = not_regular(os.fstat(fd).st_mode)
        if reason is None:
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        os.close(fd)
    raise ImageError(reason)


def _describe_read_error(path, error: Exception) -> str:
    if os.path.isdir(path):
        return "is a folder, not an image file"
    if isinstance(error, FileNotFoundError):
        return "no such file (or a broken link)"
    if isinstance(error, PermissionError):
        return "cannot read: permission denied"
    if isinstance(error, Image.UnidentifiedImageError):
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        return "not an image, or in a format that cannot be read"
    message = str(error).strip() or type(error).__name__
    if "truncated" in message or isinstance(error, EOFError):
        return f"truncated or damaged image ({message})"
    return f"cannot decode ({type(error).__name__}: {message})"


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; transparency composited on BACKGROUND, 16-bit values scaled."""
    if image.mode == "F":
        raise ImageError("floating-point images are not supported")
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's convert() clips 16-bit values at 255 instead of scaling them.
        values = np.asarray(image).astype(np.float64) / 257.0
        image = Image.fromarray(round_to_uint8(values), "L")
    if "A" in image.mode or "a" in image.mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fit_image(image: Image.Image, size: int, fit: str = "crop") -> Image.Image:
    """`crop`: the largest centred square, resized; `pad`: the whole picture, bordered."""
    method = Image.Resampling.LANCZOS
    if fit == "crop":
        return ImageOps.fit(image, (size, size), method=method, centering=(0.5, 0.5))
    if fit == "pad":
        return ImageOps.pad(image, (size, size), method=method, color=BACKGROUND)
    raise ValueError(f"fit must be one of {FITS}, got {fit!r}")


def write_png(
    path: str | os.PathLike,
    pixels: np.ndarray,
    overwrite: bool = False,
    text: Mapping[str, str] | None = None,
) -> None:
    """Writes uint8 (H, W, 3) as a PNG with `text` chunks; an existing file is an
    ImageError unless `overwrite`.

    The PNG is written to an exclusively created temporary file and then given its name
    in one step (atomic_files), so an interrupted write never leaves half a file, and a
    file or symlink planted at a temporary name is never written through.
    """
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8), "RGB").save(buffer, format="PNG", pnginfo=info)
    try:
        with written_atomically(path, overwrite=overwrite) as f:
            f.write(buffer.getvalue())
    except FileExistsError:
        raise ImageError(f"{path} exists (--overwrite replaces it)") from None
    except OSError as error:
        raise ImageError(f"cannot write {path}: {error.strerror or error}") from None


@dataclasses.dataclass
class Item:
    """One input: a file to read, or a path that already failed (error set)."""

    path: str
    error: str | None = None
    output: str | None = None  # the output file's name, once assigned
    link: str | None = None  # where the input, a symlink, leads
    done: bool = False  # its output is written
    record: dict = dataclasses.field(default_factory=dict)  # more for its manifest entry


def _check_file(path: str) -> tuple[str | None, str | None]:
    """(error, link target) of a path that is not a folder: only regular files are read."""
    link = os.path.realpath(path) if os.path.islink(path) else None
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return ("no such file (or a broken link)" if link else "no such file or folder"), link
    except OSError as error:
        return f"cannot read: {error.strerror or error}", link
    return not_regular(mode, link is not None), link


def collect_inputs(
    paths: Iterable[str | os.PathLike], ignore: Sequence[str] = ()
) -> tuple[list[Item], list[str]]:
    """(inputs, notes) for command-line paths: files as given, folders' image files.

    A folder contributes the files directly inside it (not subfolders) whose names end in
    IMAGE_SUFFIXES, hidden ones and those named in `ignore` excepted, sorted by name. A
    path that does not exist, is not a regular file (a FIFO, a device, a socket, or a link
    to one: never opened) or a folder that cannot be listed becomes an Item with an error;
    a symlink is followed to a regular file and its target recorded. A file reached twice
    is used once. `notes` says what was skipped in folders.
    """
    items, notes, seen = [], [], set()

    def add(path: str) -> None:
        error, link = _check_file(path)
        real = os.path.realpath(path)
        if error is None and real in seen:
            return
        seen.add(real)
        items.append(Item(path=path, error=error, link=link))

    for raw in paths:
        path = os.fspath(raw)
        if not os.path.isdir(path):
            add(path)
            continue
        try:
            with os.scandir(path) as entries:
                entries = sorted(entries, key=lambda e: e.name)
        except OSError as error:
            items.append(Item(path=path, error=f"cannot list folder: {error.strerror or error}"))
            continue
        skipped = 0
        for entry in entries:
            if entry.name.startswith(".") or entry.name in ignore:
                continue
            if entry.is_dir() or not entry.name.lower().endswith(IMAGE_SUFFIXES):
                skipped += 1
                continue
            add(os.path.join(path, entry.name))
        if skipped:
            notes.append(f"{path}: skipped {skipped} subfolder(s) or non-image file(s)")
    return items, notes


def assign_outputs(items: Sequence[Item], output_dir: str | os.PathLike, taken=()) -> None:
    """Gives each readable input without one an output name `<stem>.png`, unique in this
    run and not in `taken` (names already used in the folder, e.g. by a resumed run).

    A second input with the same stem (a.jpg and a.png, or two folders' a.png) gets
    `<stem>-2.png`, and so on; names compare case-insensitively (as macOS and Windows do)
    and never name an input file, so no input is overwritten and no output is lost.
    Items that already have an output keep it.
    """
    inputs = {os.path.normcase(os.path.realpath(item.path)) for item in items}
    used = {name.casefold() for name in taken}
    used |= {item.output.casefold() for item in items if item.output is not None}
    for item in items:
        if item.error is not None or item.output is not None:
            continue
        stem = Path(item.path).stem or "image"
        n = 1
        while True:
            name = f"{stem}.png" if n == 1 else f"{stem}-{n}.png"
            target = os.path.normcase(os.path.realpath(os.path.join(output_dir, name)))
            if name.casefold() not in used and target not in inputs:
                break
            n += 1
        used.add(name.casefold())
        item.output = name
