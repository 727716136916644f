"""`python -m sdn_jax.anonymize` / `deanonymize` on a tiny trained run: bad inputs
(FIFOs, devices, links), usage errors, no overwriting (nor writing through planted
links), Ctrl-C and --resume, the passphrase's sources and hygiene, and one real process
(at the real scrypt cost, recovered in-process).

The helpers (and `fast_kdf`, scrypt at N = 2^10) come from test_anonymize_cli.
"""

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image
from test_anonymize_cli import (
    PASSPHRASE,
    REAL_KDF,
    ROOT,
    WRONG,
    Result,
    _digests,
    _manifest,
    _password_file,
    _pixels,
    _run,
    _salt_of,
    _Terminal,
    _write_photos,
    fast_kdf,  # noqa: F401 - the module's autouse fixture
)
from test_image_files import raw_png

from sdn_jax import anonymize, deanonymize, file_keys, image_files, inference, passphrase
from sdn_jax.images import from_uint8, to_uint8


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
    os.mkfifo(photos / "fifo.png")  # opening it waited forever for a writer
    os.symlink("/dev/null", photos / "device.png")
    shutil.copy(photos / "good.jpg", tmp_path / "same.jpg")  # the same picture, linked
    os.symlink(tmp_path / "same.jpg", photos / "linked.jpg")
    real_scandir = os.scandir

    def scandir(path="."):  # root reads any folder: a listing error is simulated
        # Background threads call it too (shutil.rmtree passes file descriptors).
        if not isinstance(path, int) and os.fspath(path) == str(locked):
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
        "device.png": "is a link to a character device, not a regular file: skipped, never opened",
        "fifo.png": "is a FIFO (named pipe), not a regular file: skipped, never opened",
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
    assert manifest["num_succeeded"] == 2 and manifest["num_failed"] == len(errors)
    got = {Path(e["input"]).name: e.get("error", e.get("output")) for e in manifest["images"]}
    assert got == {"good.jpg": "good.png", "linked.jpg": "linked.png", **errors}
    for entry in manifest["images"]:
        if "error" in entry:
            assert f"error: {entry['input']}: {entry['error']}" in result.err
    links = {Path(e["input"]).name: e["link"] for e in manifest["images"] if "link" in e}
    assert links == {"device.png": "/dev/null", "link.jpg": str(tmp_path / "gone.jpg"),
                     "linked.jpg": str(tmp_path / "same.jpg")}  # fmt: skip
    assert "skipped 1 subfolder(s) or non-image file(s)" in result.err
    assert sorted(p.name for p in out.iterdir()) == ["good.png", "linked.png", "manifest.json"]
    assert "Traceback" not in result.err
    # The same picture twice, two salts: two different faces (no key is shared).
    assert np.abs(_pixels(out / "good.png").astype(int) - _pixels(out / "linked.png")).mean() > 1


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
        (("--batch-size", "100000000"), "--batch-size must be at most 1024 (every batch is "
         "padded to it in memory)"),  # was a MemoryError's traceback
        (("--resume", "--overwrite"), "not allowed with argument"),
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
    assert "--resume" in help_.out and "--album" not in help_.out


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

    # Links planted at the temporary names of old: the victim stays as it is.
    victim = tmp_path / "victim"
    victim.write_text("precious")
    for name in (".manifest.json.partial", ".face0.png.partial"):
        (out / name).symlink_to(Path("..") / "victim")
    monkeypatch.setenv("SDN_PASSWORD", WRONG)
    replaced = _anonymize_one(trained_run, photo, out, "--overwrite")
    assert replaced.code == 0, replaced.err
    assert _digests(out)["face0.png"] != before["face0.png"]
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in out.iterdir() if not p.is_symlink()) == [
        "face0.png",
        "manifest.json",
    ]


def test_an_interrupted_run_is_marked_and_resumed(trained_run, photos, tmp_path, monkeypatch):
    """Ctrl-C used to leave PNGs and no manifest, and a rerun could not finish: now the
    manifest marks the rest `interrupted` (exit 130, one line) and --resume does them,
    with the album's one salt (the same picture gets the same face across the break)."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name, source in (("a", "face0"), ("b", "face1"), ("c", "face0")):
        shutil.copy(photos / f"{source}.png", inputs / f"{name}.png")
    monkeypatch.setenv("SDN_PASSWORD", PASSPHRASE)
    write_png = image_files.write_png

    def write_one_then_stop(path, *args, **kwargs):
        if os.path.exists(out / "a.png"):
            raise KeyboardInterrupt
        write_png(path, *args, **kwargs)

    monkeypatch.setattr(image_files, "write_png", write_one_then_stop)
    stopped = _anonymize_one(trained_run, inputs, out, "--album")
    assert stopped.code == 130 and "Traceback" not in stopped.err
    assert stopped.err.splitlines()[-1] == (
        f"python -m sdn_jax.anonymize: interrupted: 1 of 3 image(s) done, 0 failed, 2 marked "
        f"interrupted in {out / 'manifest.json'}; --resume finishes them"
    )
    manifest = _manifest(out)
    assert not manifest["complete"] and manifest["num_interrupted"] == 2
    assert [sorted(e) for e in manifest["images"]] == [
        ["input", "output", "salt"], ["input", "interrupted"], ["input", "interrupted"]
    ]  # fmt: skip
    assert sorted(os.listdir(out)) == ["a.png", "manifest.json"]  # no temporary file left
    monkeypatch.setattr(image_files, "write_png", write_png)
    first = (out / "a.png").read_bytes()

    again = _anonymize_one(trained_run, inputs, out, "--album")
    assert again.code == 2 and "--resume finishes an interrupted one" in again.err
    other = _anonymize_one(trained_run, inputs, out, "--resume", "--attributes", "Smiling=1")
    assert (
        other.code == 2
        and (
            f"cannot --resume from {out / 'manifest.json'}: attributes none (this run: "
            "Smiling=1); kdf.salt one per album (this run: one per image)"
        )
        in other.err
    )
    resumed = _anonymize_one(trained_run, inputs, out, "--album", "--resume")
    assert resumed.code == 0, resumed.err
    assert "anonymized 2 image(s)" in resumed.err and "1 done before (--resume)" in resumed.err
    manifest = _manifest(out)
    assert manifest["complete"] and manifest["num_succeeded"] == 3
    assert (out / "a.png").read_bytes() == first
    salts = {e["salt"] for e in manifest["images"]} | {_salt_of(out / f"{n}.png") for n in "abc"}
    assert salts == {manifest["kdf"]["album_salt"]}
    np.testing.assert_array_equal(_pixels(out / "a.png"), _pixels(out / "c.png"))


def test_passphrase_sources_give_the_same_key(trained_run, photos, tmp_path, monkeypatch):
    photo = photos / "face1.png"
    monkeypatch.setattr(passphrase, "new_salt", lambda: bytes(16))  # one salt: same outputs
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

    bom = tmp_path / "bom.txt"  # "UTF-8 with BOM", as some editors save
    bom.write_bytes(b"\xef\xbb\xbf" + PASSPHRASE.encode() + b"\r\n")
    bom.chmod(0o600)
    result = _anonymize_one(trained_run, photo, tmp_path / "bom", "--password-file", bom)
    assert result.code == 0
    assert f"note: the password file {bom} starts with a byte order mark (BOM)" in result.err
    assert (tmp_path / "bom" / "face1.png").read_bytes() == reference
    monkeypatch.setenv("SDN_PASSWORD", " ")  # accepted (the user decides), with a warning
    result = _anonymize_one(trained_run, photo, tmp_path / "space")
    assert result.code == 0 and "warning: this passphrase is weak" in result.err
    monkeypatch.delenv("SDN_PASSWORD")

    answers = iter([PASSPHRASE, PASSPHRASE])
    monkeypatch.setattr(sys, "stdin", _Terminal())
    monkeypatch.setattr(file_keys.getpass, "getpass", lambda prompt: next(answers))
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


def test_command_line_with_fit_pad(trained_run, tmp_path, monkeypatch):
    """One real `python -m sdn_jax.anonymize` process (the others run main() in-process),
    with no cache set for it: it keeps its programs in the user's cache."""
    out, wide = tmp_path / "out", tmp_path / "wide.jpg"
    Image.fromarray(skimage.data.astronaut()[:256]).save(wide)  # 512 wide, 256 high
    command = [
        sys.executable, "-m", "sdn_jax.anonymize", "--checkpoint", trained_run / "checkpoints",
        "--input", wide, "--output", out, "--fit", "pad",
    ]  # fmt: skip
    env = dict(os.environ, SDN_PASSWORD=PASSPHRASE, JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR")  # the session's
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert any((tmp_path / "cache" / "sdn_jax" / "xla").iterdir())
    manifest = _manifest(out)
    assert manifest["fit"] == "pad" and manifest["step"] == 6
    assert manifest["run"] == str(trained_run / "checkpoints")
    padded = _pixels(out / "wide.png")
    assert padded.shape == (32, 32, 3)
    assert padded[:7].mean() > 200 and padded[-7:].mean() > 200  # the white bands
    assert PASSPHRASE not in done.stdout + done.stderr
    assert manifest["kdf"]["n"] == 2**17  # the real cost, recovered with it:
    monkeypatch.setattr(passphrase, "KDF_VERSIONS", REAL_KDF)
    monkeypatch.setenv("SDN_PASSWORD", PASSPHRASE)
    rec = tmp_path / "rec"
    result = _run(deanonymize.main, "--workdir", trained_run, "--input", out, "--output", rec)
    assert result.code == 0, result.err
    model = inference.load(trained_run)
    salt = bytes.fromhex(manifest["images"][0]["salt"])
    unchosen = {"Smiling": None, "Eyeglasses": None}  # drawn from the key
    key = inference.make_key(PASSPHRASE, unchosen, model.model_settings, salt=salt)
    expected = to_uint8(model.recover(from_uint8(padded[None]), key))[0]
    assert np.abs(_pixels(rec / "wide.png").astype(int) - expected).max() <= 1
