"""`python -m sdn_jax.anonymize` / `deanonymize` on a tiny trained run, mostly in-process.

Real photographs from scikit-image go through; anonymizing then recovering through PNG
files gives what the model gives in memory; bad inputs are reported and skipped; exit
codes, the manifest, no overwriting, untouched inputs, and the passphrase nowhere.
"""

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image
from test_image_files import raw_png

from sdn_jax import anonymize, deanonymize, image_cli, image_files, inference
from sdn_jax.evaluation.metrics import psnr
from sdn_jax.images import from_uint8, to_uint8

ROOT = Path(__file__).resolve().parents[1]
PASSPHRASE = "correct horse battery staple ü"  # also not ASCII
WRONG = "correct horse battery stapler ü"
ATTRIBUTES = "Smiling=1,Eyeglasses=0"
CHOICES = {"Smiling": True, "Eyeglasses": False}


@dataclass
class Result:
    code: int
    out: str
    err: str


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(main, *argv, terminal: bool = False) -> Result:
    """main(argv) with stdout and stderr captured (works in module-scoped fixtures too)."""
    out, err = io.StringIO(), _Terminal() if terminal else io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return Result(code, out.getvalue(), err.getvalue())


def _password_file(folder: Path, passphrase: str, mode: int = 0o600) -> Path:
    path = folder / f"key-{hashlib.sha1(passphrase.encode()).hexdigest()[:6]}.txt"
    path.write_text(passphrase + "\n")
    path.chmod(mode)
    return path


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image)


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photographs (scikit-image's astronaut, LFW faces) and a few kinds of file."""
    folder = tmp_path_factory.mktemp("photos")
    astronaut = skimage.data.astronaut()
    Image.fromarray(astronaut).save(folder / "astronaut.jpg", quality=90)
    Image.fromarray(astronaut[::4, ::4]).save(folder / "astronaut.png")  # same stem
    for i, face in enumerate(skimage.data.lfw_subset()[:3]):  # 25x25 grayscale faces
        Image.fromarray(np.rint(face * 255).astype(np.uint8), "L").save(folder / f"face{i}.png")
    rgba = np.dstack([astronaut[100:300, 150:350], np.full((200, 200), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.webp", lossless=True)
    return folder


@pytest.fixture(scope="module")
def photo_digests(photos) -> dict:
    return _digests(photos)


@pytest.fixture(scope="module")
def keyfiles(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("keys")
    return {p: _password_file(folder, p) for p in (PASSPHRASE, WRONG)}


@pytest.fixture(scope="module")
def anonymized(trained_run, photos, photo_digests, keyfiles, tmp_path_factory):
    out = tmp_path_factory.mktemp("anonymized") / "out"
    result = _run(
        anonymize.main,
        *("--workdir", trained_run, "--password-file", keyfiles[PASSPHRASE]),
        *("--attributes", ATTRIBUTES, "--input", photos, "--output", out),
        terminal=True,
    )
    return out, result


@pytest.fixture(scope="module")
def recovered(trained_run, anonymized, keyfiles, tmp_path_factory):
    def recover(passphrase, attributes=ATTRIBUTES):
        out = tmp_path_factory.mktemp("recovered") / "out"
        result = _run(
            deanonymize.main,
            *("--workdir", trained_run, "--password-file", keyfiles[passphrase]),
            *("--attributes", attributes, "--input", anonymized[0], "--output", out),
        )
        return out, result

    return {"right": recover(PASSPHRASE), "wrong": recover(WRONG)}


@pytest.fixture(scope="module")
def model(trained_run):
    return inference.load(trained_run)


def _fitted_originals(photos: Path, manifest: dict) -> dict:
    return {
        entry["output"]: image_files.read_image(entry["input"], 32, "crop")
        for entry in manifest["images"]
    }


def test_anonymize_writes_pngs_and_the_manifest(anonymized, photos, trained_run):
    out, result = anonymized
    assert result.code == 0, result.err
    assert "anonymized 6 image(s)" in result.err and "images/s" in result.err
    assert "img/s" in result.err  # the progress bar (on a terminal, 5 images or more)
    manifest = _manifest(out)
    assert manifest == {
        "tool": "sdn_jax.anonymize",
        "version": "0.1.0",
        "kdf_version": 1,
        "run": str(trained_run),
        "step": 6,
        "image_size": 32,
        "attributes": CHOICES,
        "fit": "crop",
        "num_succeeded": 6,
        "num_failed": 0,
        "images": [
            {"input": str(photos / "astronaut.jpg"), "output": "astronaut.png"},
            {"input": str(photos / "astronaut.png"), "output": "astronaut-2.png"},
            {"input": str(photos / "face0.png"), "output": "face0.png"},
            {"input": str(photos / "face1.png"), "output": "face1.png"},
            {"input": str(photos / "face2.png"), "output": "face2.png"},
            {"input": str(photos / "rgba.webp"), "output": "rgba.png"},
        ],
    }
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json"] + [e["output"] for e in manifest["images"]]
    )
    for entry in manifest["images"]:
        assert _pixels(out / entry["output"]).shape == (32, 32, 3)


def test_round_trip_through_files_matches_the_model(anonymized, recovered, photos, model):
    """The PNGs hold exactly the model's outputs, and recovery from them is as good as
    the model's recovery in memory (the 8-bit rounding of the anonymized PNG costs nothing
    measurable)."""
    out, _ = anonymized
    rec, result = recovered["right"]
    assert result.code == 0, result.err
    assert _manifest(rec)["tool"] == "sdn_jax.deanonymize"
    assert "skipped" not in result.err  # the input folder's manifest.json is expected there
    originals = _fitted_originals(photos, _manifest(out))
    names = list(originals)
    x = from_uint8(np.stack([originals[n] for n in names]))
    key = inference.make_key(PASSPHRASE, CHOICES, model.config)

    anonymized_files = np.stack([_pixels(out / n) for n in names])
    expected = to_uint8(model.anonymize(x, key))
    assert np.abs(anonymized_files.astype(int) - expected).max() <= 1
    assert np.abs(anonymized_files.astype(int) - originals[names[0]]).mean() > 0.5

    recovered_files = np.stack([_pixels(rec / n) for n in names])
    expected = to_uint8(model.recover(from_uint8(anonymized_files), key))
    assert np.abs(recovered_files.astype(int) - expected).max() <= 1

    in_memory = psnr(model.recover(model.anonymize(x, key), key), x, data_range=2).mean()
    through_files = psnr(from_uint8(recovered_files), x, data_range=2).mean()
    assert through_files >= in_memory - 0.5, (through_files, in_memory)


def test_a_wrong_passphrase_recovers_another_image(recovered, anonymized):
    (right, _), (wrong, result) = recovered["right"], recovered["wrong"]
    assert result.code == 0, result.err  # a wrong key cannot be detected: no error
    names = [entry["output"] for entry in _manifest(anonymized[0])["images"]]
    assert _manifest(wrong)["num_succeeded"] == len(names) == 6
    for name in names:  # (6 training steps make no good anonymizer: just another image)
        good, bad = _pixels(right / name).astype(int), _pixels(wrong / name).astype(int)
        assert np.abs(good - bad).mean() > 1.0, name  # gray levels; ~5 measured


def test_inputs_are_untouched_and_the_passphrase_is_nowhere(
    anonymized, recovered, photos, photo_digests, keyfiles
):
    assert _digests(photos) == photo_digests
    texts = [anonymized[1].out, anonymized[1].err]
    files = list(anonymized[0].iterdir())
    for folder, result in recovered.values():
        texts += [result.out, result.err]
        files += list(folder.iterdir())
    for secret in (PASSPHRASE, WRONG):
        assert all(secret not in text for text in texts)
        for path in files:
            data = path.read_bytes()
            for encoding in ("utf-8", "utf-16-le", "latin-1", "unicode_escape"):
                assert secret.encode(encoding, "ignore") not in data, (path, encoding)


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


def test_deanonymize_names_a_step_or_attributes_that_differ(
    anonymized, trained_run, keyfiles, tmp_path
):
    out, _ = anonymized
    result = _run(
        deanonymize.main,
        *("--workdir", trained_run, "--step", "3", "--password-file", keyfiles[PASSPHRASE]),
        *("--input", out, "--output", tmp_path / "rec"),
    )
    assert result.code == 0
    assert "says step 6 anonymized these images; this is step 3 (--step chooses)" in result.err
    assert "anonymized with --attributes Smiling=1,Eyeglasses=0" in result.err


def test_deanonymize_refuses_other_sizes_and_warns_of_jpegs(
    trained_run, photos, anonymized, tmp_path, monkeypatch
):
    monkeypatch.setenv("SDN_PASSWORD", PASSPHRASE)
    result = _run(
        deanonymize.main,
        *("--workdir", trained_run, "--input", photos / "astronaut.png"),
        *("--output", tmp_path / "rec"),
    )
    assert result.code == 1
    assert "is 128x128, but this model's images are 32x32" in result.err
    Image.fromarray(_pixels(anonymized[0] / "face0.png")).save(tmp_path / "face0.jpg")
    result = _run(
        deanonymize.main,
        *("--workdir", trained_run, "--input", tmp_path / "face0.jpg"),
        *("--output", tmp_path / "from_jpeg"),
    )
    assert result.code == 0
    assert "warning: 1 JPEG input(s), e.g." in result.err and "lossy copy" in result.err
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run(
        deanonymize.main, "--workdir", trained_run, "--input", empty, "--output", tmp_path / "e"
    )
    assert result.code == 1 and "no image files found" in result.err


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
