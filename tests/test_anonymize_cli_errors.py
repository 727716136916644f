"""`python -m sdn_jax.anonymize` / `deanonymize` on a tiny trained run: bad inputs,
usage errors, no overwriting, the passphrase's sources, and one real process.

The helpers come from test_anonymize_cli.
"""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import skimage.data
from PIL import Image
from test_anonymize_cli import (
    PASSPHRASE,
    ROOT,
    WRONG,
    Result,
    _digests,
    _manifest,
    _password_file,
    _pixels,
    _run,
    _Terminal,
    _write_photos,
)
from test_image_files import raw_png

from sdn_jax import anonymize, deanonymize, image_cli


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return _write_photos(tmp_path_factory.mktemp("photos"))


def test_bad_inputs_are_reported_and_the_rest_processed(trained_run, tmp_path, monkeypatch):
    photos, locked = tmp_path / "photos", tmp_path / "locked"
    photos.mkdir(), locked.mkdir()
    Image.fromarray(skimage.data.astronaut()).save(photos / "good.jpg", quality=90)
    (photos / "empty.png").write_bytes(b"")
    Image.fromarray(skimage.data.astronaut()[::8, ::8]).save(photos / "truncated.png")
    data = (photos / "truncated.png").read_bytes()
    (photos / "truncated.png").write_bytes(data[: len(data) // 2])
    (photos / "notes.jpg").write_text("this is not a picture\n")
    (photos / "bomb.png").write_bytes(raw_png(30000, 30000, 8, 0, b"\x00" * 100))
    # Folders only offer PNG/JPEG/WebP/BMP/TIFF names; a file named explicitly is tried.
    Image.fromarray(skimage.data.astronaut()[::8, ::8]).save(tmp_path / "anim.gif")
    os.symlink(tmp_path / "gone.jpg", photos / "link.jpg")
    (photos / "readme.txt").write_text("not an image name: skipped")
    real_scandir = os.scandir

    def scandir(path):  # root reads any folder: a listing error is simulated
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setenv("SDN_PASSWORD", PASSPHRASE)
    out = tmp_path / "out"
    result = _run(
        anonymize.main,
        *("--workdir", trained_run, "--input", photos, locked, tmp_path / "missing.png"),
        *(tmp_path / "anim.gif",),
        *("--output", out),
    )
    assert result.code == 1
    errors = {
        "anim.gif": "GIF images are not supported (use PNG, JPEG, WEBP, BMP, TIFF)",
        "bomb.png": "refused: more than 100,000,000 pixels, a possible decompression bomb "
        "(--max-pixels raises the limit)",
        "empty.png": "empty file (0 bytes)",
        "link.jpg": "no such file (or a broken link)",
        "notes.jpg": "not an image, or in a format that cannot be read",
        "truncated.png": "truncated or damaged image (image file is truncated)",
        "locked": "cannot list folder: Permission denied",
        "missing.png": "no such file or folder",
    }
    manifest = _manifest(out)
    assert manifest["num_succeeded"] == 1 and manifest["num_failed"] == len(errors)
    got = {Path(e["input"]).name: e.get("error", e.get("output")) for e in manifest["images"]}
    assert got == {"good.jpg": "good.png", **errors}
    for entry in manifest["images"]:
        if "error" in entry:
            assert f"error: {entry['input']}: {entry['error']}" in result.err
    assert "skipped 1 subfolder(s) or non-image file(s)" in result.err
    assert sorted(p.name for p in out.iterdir()) == ["good.png", "manifest.json"]
    assert "Traceback" not in result.err


def _anonymize_one(trained_run, photo: Path, out: Path, *flags) -> Result:
    return _run(anonymize.main, "--workdir", trained_run, "--input", photo, "--output", out, *flags)


def test_usage_errors_exit_2_and_write_nothing(trained_run, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("SDN_PASSWORD", PASSPHRASE)
    out = tmp_path / "out"
    photo = photos / "face0.png"
    cases = [
        (("--attributes", "Smiling=1,Beard=0"), "Unknown attribute 'Beard'; the key "
         "attributes are: Smiling, Eyeglasses"),
        (("--attributes", "Smiling=maybe"), "Bad value 'maybe' for attribute Smiling; use "
         "one of 1/true/yes (true) or 0/false/no (false)"),
        (("--attributes", "Smiling"), "is not NAME=VALUE"),
        (("--step", "4"), "no checkpoint step 4"),
        (("--batch-size", "0"), "--batch-size must be at least 1"),
        (("--max-pixels", "0"), "--max-pixels must be at least 1"),
        (("--fit", "stretch"), "invalid choice: 'stretch'"),
        (("--checkpoint", trained_run), "not allowed with argument --workdir"),
    ]  # fmt: skip
    for flags, message in cases:
        result = _anonymize_one(trained_run, photo, out, *flags)
        assert result.code == 2 and message in result.err, (flags, result.err)
    result = _run(anonymize.main, "--workdir", tmp_path / "nope", "--input", photo, "--output", out)
    assert result.code == 2 and f"run folder {tmp_path / 'nope'} does not exist" in result.err
    result = _run(anonymize.main, "--workdir", trained_run, "--input", photo)
    assert result.code == 2 and "the following arguments are required: --output" in result.err

    monkeypatch.delenv("SDN_PASSWORD")
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # not a terminal: nobody to ask
    result = _anonymize_one(trained_run, photo, out)
    assert result.code == 2
    assert "no passphrase: give --password-file FILE or set $SDN_PASSWORD" in result.err
    monkeypatch.setenv("SDN_PASSWORD", "")
    assert _anonymize_one(trained_run, photo, out).code == 2
    assert not out.exists()

    help_ = _run(deanonymize.main, "--help")
    assert help_.code == 0 and "--password-file" in help_.out and "--fit" not in help_.out


def test_outputs_are_never_overwritten_without_the_flag(trained_run, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("SDN_PASSWORD", PASSPHRASE)
    out = tmp_path / "out"
    photo = photos / "face0.png"
    assert _anonymize_one(trained_run, photo, out).code == 0
    before = _digests(out)

    again = _anonymize_one(trained_run, photo, out)
    assert again.code == 2 and "already holds the results of a run" in again.err
    assert _digests(out) == before

    (out / "manifest.json").unlink()
    again = _anonymize_one(trained_run, photo, out)
    assert again.code == 1 and f"{out / 'face0.png'} exists (--overwrite replaces it)" in again.err
    assert _digests(out)["face0.png"] == before["face0.png"]

    monkeypatch.setenv("SDN_PASSWORD", WRONG)
    replaced = _anonymize_one(trained_run, photo, out, "--overwrite")
    assert replaced.code == 0, replaced.err
    assert _digests(out)["face0.png"] != before["face0.png"]
    assert sorted(p.name for p in out.iterdir()) == ["face0.png", "manifest.json"]


def test_passphrase_sources_give_the_same_key(trained_run, photos, tmp_path, monkeypatch):
    photo = photos / "face1.png"
    monkeypatch.setenv("SDN_PASSWORD", PASSPHRASE)
    assert _anonymize_one(trained_run, photo, tmp_path / "env").code == 0
    reference = (tmp_path / "env" / "face1.png").read_bytes()
    monkeypatch.delenv("SDN_PASSWORD")

    private = _password_file(tmp_path, PASSPHRASE)
    result = _anonymize_one(trained_run, photo, tmp_path / "file", "--password-file", private)
    assert result.code == 0 and "warning" not in result.err
    assert (tmp_path / "file" / "face1.png").read_bytes() == reference

    shared = tmp_path / "shared.txt"
    shared.write_text(PASSPHRASE)  # no newline this time
    shared.chmod(0o644)
    result = _anonymize_one(trained_run, photo, tmp_path / "shared", "--password-file", shared)
    assert result.code == 0
    assert f"warning: the password file {shared} is readable by other users" in result.err
    assert (tmp_path / "shared" / "face1.png").read_bytes() == reference

    answers = iter([PASSPHRASE, PASSPHRASE])
    monkeypatch.setattr(sys, "stdin", _Terminal())
    monkeypatch.setattr(image_cli.getpass, "getpass", lambda prompt: next(answers))
    assert _anonymize_one(trained_run, photo, tmp_path / "prompt").code == 0
    assert (tmp_path / "prompt" / "face1.png").read_bytes() == reference
    answers = iter([PASSPHRASE, WRONG])
    result = _anonymize_one(trained_run, photo, tmp_path / "typo")
    assert result.code == 2 and "the two passphrases differ" in result.err
    answers = iter([PASSPHRASE])  # deanonymize asks once
    rec = tmp_path / "rec"
    result = _run(
        deanonymize.main, "--workdir", trained_run, "--input", tmp_path / "prompt", "--output", rec
    )
    assert result.code == 0 and (rec / "face1.png").exists()

    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfesecret\x80")
    binary.chmod(0o600)
    result = _anonymize_one(trained_run, photo, tmp_path / "bin", "--password-file", binary)
    assert result.code == 2 and "is not UTF-8 text" in result.err
    assert "secret" not in result.err and "\\x" not in result.err


def test_command_line_with_fit_pad(trained_run, tmp_path):
    """One real `python -m sdn_jax.anonymize` process (the others run main() in-process)."""
    out, wide = tmp_path / "out", tmp_path / "wide.jpg"
    Image.fromarray(skimage.data.astronaut()[:256]).save(wide)  # 512 wide, 256 high
    command = [
        sys.executable, "-m", "sdn_jax.anonymize", "--checkpoint", trained_run / "checkpoints",
        "--input", wide, "--output", out, "--fit", "pad",
    ]  # fmt: skip
    env = dict(os.environ, SDN_PASSWORD=PASSPHRASE, JAX_PLATFORMS="cpu")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = _manifest(out)
    assert manifest["fit"] == "pad" and manifest["step"] == 6
    assert manifest["run"] == str(trained_run / "checkpoints")
    padded = _pixels(out / "wide.png")
    assert padded.shape == (32, 32, 3)
    assert padded[:7].mean() > 200 and padded[-7:].mean() > 200  # the white bands
    assert PASSPHRASE not in done.stdout + done.stderr
