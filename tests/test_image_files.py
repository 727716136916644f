"""Reading, fitting and writing image files (sdn_jax.image_files): no model involved."""

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sdn_jax import image_files
from sdn_jax.image_files import ImageError, Item, read_image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB, nor lie about its size)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def _gradient(size: int = 32) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return np.stack([x * 8, y * 8, (x + y) * 4], -1).astype(np.uint8)


def test_lossless_formats_decode_to_the_same_pixels(tmp_path):
    pixels = _gradient()
    for name, options in (
        ("a.png", {}),
        ("a.bmp", {}),
        ("a.tiff", {}),
        ("a.webp", {"lossless": True}),
    ):
        Image.fromarray(pixels).save(tmp_path / name, **options)
        np.testing.assert_array_equal(read_image(tmp_path / name, 32, None), pixels, name)
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=95)
    jpeg = read_image(tmp_path / "a.jpg", 32, None).astype(int)
    assert np.abs(jpeg - pixels).mean() < 3


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:16] = (255, 0, 0)  # top half red, bottom half blue as stored
    pixels[16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    shown = read_image(tmp_path / "rotated.jpg", 32, None).astype(int)
    assert shown[:, 20:, 0].mean() > 200 and shown[:, 20:, 2].mean() < 50  # red on the right
    assert shown[:, :12, 2].mean() > 200 and shown[:, :12, 0].mean() < 50  # blue on the left


def test_grayscale_palette_and_bilevel_become_rgb(tmp_path):
    gray = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) % 256
    Image.fromarray(gray.astype(np.uint8), "L").save(tmp_path / "gray.png")
    np.testing.assert_array_equal(
        read_image(tmp_path / "gray.png", 32, None), np.repeat(gray[..., None], 3, -1)
    )
    palette = Image.fromarray(_gradient()).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(
        read_image(tmp_path / "palette.png", 32, None), np.asarray(palette.convert("RGB"))
    )
    Image.new("1", (32, 32), 1).save(tmp_path / "bilevel.bmp")
    assert (read_image(tmp_path / "bilevel.bmp", 32, None) == 255).all()


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, :8] = (255, 0, 0, 255)  # opaque red
    rgba[:, 8:16] = (0, 0, 255, 0)  # fully transparent blue
    rgba[:, 16:] = (0, 0, 0, 128)  # half-transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png", 32, None)
    assert (out[:, :8] == (255, 0, 0)).all()
    assert (out[:, 8:16] == 255).all()
    assert (np.abs(out[:, 16:].astype(int) - 127) <= 1).all()

    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([0, 255, 0, 10, 20, 30] + [0] * 762)
    palette.paste(1, (0, 0, 16, 32))
    palette.save(tmp_path / "palette.png", transparency=0)  # index 0 (green) is transparent
    out = read_image(tmp_path / "palette.png", 32, None)
    assert (out[:, :16] == (10, 20, 30)).all() and (out[:, 16:] == 255).all()

    gray_alpha = Image.new("LA", (32, 32), (0, 0))
    gray_alpha.save(tmp_path / "la.png")
    assert (read_image(tmp_path / "la.png", 32, None) == 255).all()


def test_sixteen_bit_values_are_scaled_not_clipped(tmp_path):
    gray = np.array([[0, 257, 32896, 65535]] * 4, np.uint16)
    Image.fromarray(gray).save(tmp_path / "gray16.png")  # Pillow writes I;16 as 16-bit PNG
    with Image.open(tmp_path / "gray16.png") as image:
        assert image.mode == "I;16"
    out = read_image(tmp_path / "gray16.png", 4, None)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])

    rgb = np.zeros((4, 4, 3), ">u2")
    rgb[..., 0], rgb[..., 1] = 65535, 32896
    rows = b"".join(b"\x00" + row.tobytes() for row in rgb)
    (tmp_path / "rgb16.png").write_bytes(raw_png(4, 4, 16, 2, rows))
    assert (read_image(tmp_path / "rgb16.png", 4, None) == (255, 128, 0)).all()


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    out = read_image(tmp_path / "cmyk.jpg", 32, None).astype(int)
    assert (np.abs(out - (255, 0, 0)) < 8).all()


def test_crop_takes_the_centred_square_and_pad_keeps_the_whole_picture(tmp_path):
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[..., 0] = np.arange(64)[None, :] * 4
    Image.fromarray(wide).save(tmp_path / "wide.png")
    np.testing.assert_array_equal(read_image(tmp_path / "wide.png", 32, "crop"), wide[:, 16:48])
    padded = read_image(tmp_path / "wide.png", 32, "pad")
    assert (padded[:8] == 255).all() and (padded[24:] == 255).all()  # white bands
    np.testing.assert_array_equal(padded[8:24, :, 1], 0)  # the picture, resized to 32x16
    assert padded[16, 0, 0] < 16 and padded[16, -1, 0] > 230  # its whole width is there

    Image.fromarray(_gradient(100)).save(tmp_path / "big.png")
    assert read_image(tmp_path / "big.png", 32, "crop").shape == (32, 32, 3)
    with pytest.raises(ImageError, match=r"is 100x100, but this model's images are 32x32"):
        read_image(tmp_path / "big.png", 32, None)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.png", b"", r"empty file \(0 bytes\)"),
        ("text.jpg", b"this is not a picture\n", "not an image"),
        ("random.png", bytes(range(256)) * 4, "not an image"),
    ],
)
def test_files_that_are_not_images(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageError, match=message):
        read_image(tmp_path / name, 32)


def test_truncated_images(tmp_path):
    for name, options in (("cut.png", {}), ("cut.jpg", {"quality": 95})):
        Image.fromarray(_gradient(64)).save(tmp_path / name, **options)
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageError, match="truncated"):
            read_image(tmp_path / name, 32)


def test_unsupported_format_missing_file_and_folder(tmp_path):
    Image.fromarray(_gradient()).save(tmp_path / "anim.gif")
    with pytest.raises(ImageError, match="GIF images are not supported"):
        read_image(tmp_path / "anim.gif", 32)
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.png", 32)
    os.symlink(tmp_path / "nowhere.png", tmp_path / "dangling.png")
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "dangling.png", 32)
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageError, match="is a folder"):
        read_image(tmp_path / "folder.png", 32)


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    # 30000 x 30000 (900 megapixels) declared, a few bytes of data: refused at the header.
    (tmp_path / "bomb.png").write_bytes(raw_png(30000, 30000, 8, 0, b"\x00" * 100))
    with pytest.raises(ImageError, match=r"more than 100,000,000 pixels"):
        read_image(tmp_path / "bomb.png", 32)
    Image.fromarray(_gradient(100)).save(tmp_path / "ok.png")  # 10,000 pixels
    assert read_image(tmp_path / "ok.png", 32, max_pixels=10_000).shape == (32, 32, 3)
    with pytest.raises(ImageError, match="decompression bomb"):
        read_image(tmp_path / "ok.png", 32, max_pixels=9_999)
    assert Image.MAX_IMAGE_PIXELS != 9_999  # the global limit is restored


def test_write_png_is_exact_and_never_overwrites_unless_asked(tmp_path):
    pixels = _gradient()
    path = tmp_path / "out.png"
    image_files.write_png(path, pixels)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB" and not image.getexif()
        np.testing.assert_array_equal(np.asarray(image), pixels)
    before = path.read_bytes()
    with pytest.raises(ImageError, match="exists"):
        image_files.write_png(path, 255 - pixels)
    assert path.read_bytes() == before
    # Temporary files are made exclusively: links planted at the names of old never
    # lead the writer to their targets, whether overwriting or not.
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / ".out.png.partial").symlink_to(victim)
    image_files.write_png(path, 255 - pixels, overwrite=True, text={"sdn_jax.salt": "00ff"})
    with Image.open(path) as image:
        np.testing.assert_array_equal(np.asarray(image), 255 - pixels)
        assert image.text == {"sdn_jax.salt": "00ff"}
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ImageError, match="exists"):
        image_files.write_png(tmp_path / "dangling.png", pixels)
    assert victim.read_bytes() == b"precious" and not (tmp_path / "nowhere").exists()
    names = ["dangling.png", "out.png", ".out.png.partial", "victim"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temporary left
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open() would make it


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_collect_inputs(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("b.JPG", "a.png", ".hidden.png", "notes.txt", "c.tif"):
        (folder / name).write_bytes(b"x")
    (folder / "sub").mkdir()
    (tmp_path / "explicit.dat").write_bytes(b"")  # named on the command line: tried anyway
    items, notes = image_files.collect_inputs(
        [folder, folder / "a.png", tmp_path / "missing.jpg", tmp_path / "explicit.dat"]
    )
    assert [(os.path.relpath(i.path, tmp_path), i.error) for i in items] == [
        ("photos/a.png", None),
        ("photos/b.JPG", None),
        ("photos/c.tif", None),
        ("missing.jpg", "no such file or folder"),  # a.png given twice is used once
        ("explicit.dat", None),
    ]
    assert notes == [f"{folder}: skipped 2 subfolder(s) or non-image file(s)"]


def test_only_regular_files_are_read(tmp_path):
    """A FIFO named like an image hung the command (opening it waits for a writer): it,
    devices and sockets are refused from their stat; links are followed to regular
    files only, and their targets recorded."""
    folder = tmp_path / "photos"
    folder.mkdir()
    os.mkfifo(folder / "fifo.png")
    (folder / "null.png").symlink_to("/dev/null")
    (tmp_path / "real.png").write_bytes(b"x")
    (folder / "link.png").symlink_to(tmp_path / "real.png")
    items, _ = image_files.collect_inputs([folder, folder / "fifo.png"])
    got = [(os.path.basename(i.path), i.error, i.link) for i in items]
    assert got == [
        ("fifo.png", "is a FIFO (named pipe), not a regular file: skipped, never opened", None),
        ("link.png", None, str(tmp_path / "real.png")),
        ("null.png", "is a link to a character device, not a regular file: skipped, never "
         "opened", "/dev/null"),
        ("fifo.png", "is a FIFO (named pipe), not a regular file: skipped, never opened", None),
    ]  # fmt: skip
    with pytest.raises(ImageError, match="FIFO"):  # read_image refuses it too, unopened
        read_image(folder / "fifo.png", 32)


def test_a_folder_that_cannot_be_listed_is_an_input_error(tmp_path, monkeypatch):
    good, locked = tmp_path / "good", tmp_path / "locked"
    good.mkdir(), locked.mkdir()
    (good / "a.png").write_bytes(b"x")
    real_scandir = os.scandir

    def scandir(path):
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    items, _ = image_files.collect_inputs([locked, good])
    assert [(i.path, i.error) for i in items] == [
        (str(locked), "cannot list folder: Permission denied"),
        (str(good / "a.png"), None),
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their mode")
def test_a_folder_without_read_permission(tmp_path):
    (tmp_path / "locked").mkdir(mode=0)
    try:
        items, _ = image_files.collect_inputs([tmp_path / "locked"])
    finally:
        (tmp_path / "locked").chmod(0o700)
    assert items[0].error == "cannot list folder: Permission denied"


def test_output_names_never_collide_nor_name_an_input(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "d.png").write_bytes(b"x")  # an input inside the output folder
    paths = ["x/a.jpg", "x/a.png", "y/a.png", "x/A.png", "x/b.png", "bad.png", str(out / "d.png")]
    items = [Item(p) for p in paths]
    items[5].error = "broken"
    image_files.assign_outputs(items, out)
    assert [i.output for i in items] == [
        "a.png",
        "a-2.png",
        "a-3.png",
        "A-4.png",  # a.png and A.png are one file on macOS and Windows
        "b.png",
        None,
        "d-2.png",  # d.png is the input itself
    ]
