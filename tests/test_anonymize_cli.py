"""`python -m sdn_jax.anonymize` / `deanonymize` on a tiny trained run, in-process.

Real photographs from scikit-image go through; anonymizing then recovering through PNG
files gives what the model gives in memory, each image under its own salt; the manifest,
what deanonymize makes of the manifest beside its inputs (another run's, a malformed one,
none), untouched inputs, and the passphrase nowhere. Bad inputs, usage errors,
interruptions: test_anonymize_cli_errors.py.

scrypt's N is 2^10 here (`fast_kdf`): the real N = 2^17 costs ~0.4 s a derivation, and
only test_passphrase.py and the real process of test_command_line_with_fit_pad pay it.
"""

import contextlib
import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from sdn_jax import anonymize, deanonymize, file_keys, image_files, inference, passphrase
from sdn_jax import manifest as manifest_lib
from sdn_jax.evaluation.metrics import psnr
from sdn_jax.images import from_uint8, to_uint8
from sdn_jax.keys import ANONYMIZE, RECOVER
from sdn_jax.latent import file_edits

ROOT = Path(__file__).resolve().parents[1]
PASSPHRASE = "correct horse battery staple ü"  # also not ASCII
WRONG = "correct horse battery stapler ü"
ATTRIBUTES = "Smiling=1,Eyeglasses=0"
CHOICES = {"Smiling": True, "Eyeglasses": False}


REAL_KDF = passphrase.KDF_VERSIONS
FAST_KDF = {**REAL_KDF, **{v: {**REAL_KDF[v], "n": 2**10} for v in (2, 3)}}


@pytest.fixture(scope="module", autouse=True)
def fast_kdf():
    """Versions 2 and 3 at N = 2^10 for this module's commands (and their manifests and PNGs)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(passphrase, "KDF_VERSIONS", FAST_KDF)
        yield


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


def _salt_of(path: Path) -> str:
    with Image.open(path) as image:
        image.load()
        return image.text["sdn_jax.salt"]


def _keys(model, manifest: dict, names, passphrase_=PASSPHRASE, choices=CHOICES) -> inference.Key:
    """The per-image Key of the outputs `names` of an anonymize manifest."""
    salts = {e["output"]: bytes.fromhex(e["salt"]) for e in manifest["images"] if "output" in e}
    keys = [inference.make_key(passphrase_, choices, model.model_settings, salt=salts[n])
            for n in names]  # fmt: skip
    return inference.Key(
        np.stack([k.password for k in keys]), np.stack([k.attributes for k in keys])
    )


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _write_photos(folder: Path) -> Path:
    """Real photographs (scikit-image's astronaut, LFW faces) and a few kinds of file."""
    astronaut = skimage.data.astronaut()
    Image.fromarray(astronaut).save(folder / "astronaut.jpg", quality=90)
    Image.fromarray(astronaut[::4, ::4]).save(folder / "astronaut.png")  # same stem
    for i, face in enumerate(skimage.data.lfw_subset()[:3]):  # 25x25 grayscale faces
        Image.fromarray(np.rint(face * 255).astype(np.uint8), "L").save(folder / f"face{i}.png")
    rgba = np.dstack([astronaut[100:300, 150:350], np.full((200, 200), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.webp", lossless=True)
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return _write_photos(tmp_path_factory.mktemp("photos"))


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
    salts = [entry.pop("salt") for entry in manifest["images"]]
    assert manifest == {
        "tool": "sdn_jax.anonymize",
        "version": "0.1.0",
        "kdf_version": 3,
        "run": str(trained_run),
        "step": 6,
        "fingerprint": inference.load(trained_run).fingerprint,
        "image_size": 32,
        "attributes": CHOICES,
        "kdf": {"version": 3, "algorithm": "scrypt", "n": 2**10, "r": 8, "p": 1,
                "unchosen_attributes": "key", "salt": "one per image"},
        "fit": "crop",
        "complete": True,
        "num_succeeded": 6,
        "num_failed": 0,
        "num_interrupted": 0,
        "images": [
            {"input": str(photos / "astronaut.jpg"), "output": "astronaut.png"},
            {"input": str(photos / "astronaut.png"), "output": "astronaut-2.png"},
            {"input": str(photos / "face0.png"), "output": "face0.png"},
            {"input": str(photos / "face1.png"), "output": "face1.png"},
            {"input": str(photos / "face2.png"), "output": "face2.png"},
            {"input": str(photos / "rgba.webp"), "output": "rgba.png"},
        ],
    }  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json"] + [e["output"] for e in manifest["images"]]
    )
    # Every image has its own 128-bit salt, in its PNG (with the KDF) and the manifest.
    assert len(set(salts)) == 6 and all(len(bytes.fromhex(salt)) == 16 for salt in salts)
    for entry, salt in zip(manifest["images"], salts):
        assert _pixels(out / entry["output"]).shape == (32, 32, 3)
        assert _salt_of(out / entry["output"]) == salt
    with Image.open(out / "face0.png") as image:
        image.load()
        recorded = json.loads(image.text["sdn_jax.kdf"])
    assert recorded == {k: v for k, v in manifest["kdf"].items() if k != "salt"}


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
    key = _keys(model, _manifest(out), names)

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


def _edited_copy(folder: Path, to: Path, **changes) -> Path:
    """A copy of an anonymized folder whose manifest has `changes`."""
    shutil.copytree(folder, to)
    manifest = {**_manifest(folder), **changes}
    (to / "manifest.json").write_text(json.dumps(manifest))
    return to


def test_deanonymize_names_what_differs_in_the_manifest_beside_its_inputs(
    anonymized, recovered, trained_run, model, keyfiles, tmp_path
):
    """Another step, another run's checkpoint at the same step (a wrong face with no word,
    before), other attributes or their order: a warning each; a malformed manifest: a
    warning per bad field, and the images recover as before (their salts are in them)."""
    out, _ = anonymized
    flags = ("--workdir", trained_run, "--password-file", keyfiles[PASSPHRASE])
    result = _run(deanonymize.main, *flags, "--step", "3", "--input", out, "--output",
                  tmp_path / "rec")  # fmt: skip
    assert result.code == 0
    assert "says step 6 anonymized these images; this is step 3 (--step chooses)" in result.err
    assert f"says weights {model.fingerprint} anonymized these images; this checkpoint's are " in (
        result.err
    )
    assert "anonymized with --attributes Smiling=1,Eyeglasses=0" in result.err

    other = _edited_copy(out, tmp_path / "other", run="/elsewhere/run",
                         fingerprint="0123456789abcdef",
                         attributes={"Eyeglasses": False, "Smiling": True})  # fmt: skip
    result = _run(deanonymize.main, *flags, "--attributes", ATTRIBUTES, "--input", other,
                  "--output", tmp_path / "rec_other")  # fmt: skip
    where = other / "manifest.json"
    assert result.code == 0
    for line in (
        f"warning: {where} says weights 0123456789abcdef anonymized these images; this "
        f"checkpoint's are {model.fingerprint}: other weights recover other faces",
        f"warning: {where} says run /elsewhere/run anonymized these images; this is {trained_run}",
        f"warning: {where} names the key attributes Eyeglasses, Smiling (in this order); this "
        "run's are Smiling, Eyeglasses: another run's key",
    ):
        assert line in result.err.splitlines(), (line, result.err)

    bad = _edited_copy(out, tmp_path / "bad", step=[6], kdf="scrypt",
                       attributes={"Smiling": "maybe", "Eyeglasses": False})  # fmt: skip
    manifest = _manifest(bad)
    manifest["images"][0]["salt"], manifest["images"][1] = "zz", ["not", "an", "entry"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    result = _run(deanonymize.main, *flags, "--attributes", ATTRIBUTES, "--input", bad,
                  "--output", tmp_path / "rec_bad")  # fmt: skip
    assert result.code == 0 and "Traceback" not in result.err
    for problem in (
        "step is a list, not a whole number: ignored",
        "attributes.Smiling is 'maybe', not true, false or null: ignored",
        "kdf is 'scrypt', not an object: ignored",
        "images[0].salt is 'zz', not 32 hex digits: ignored",
        "images[1] is a list, not an object: ignored",
    ):
        assert f"warning: {bad / 'manifest.json'}: {problem}" in result.err, problem
    right = recovered["right"][0]
    for name in ("face0.png", "astronaut.png"):
        assert (tmp_path / "rec_bad" / name).read_bytes() == (right / name).read_bytes()
    for content, problem in (("[1, 2]", "is a list, not an object"), ("{", "cannot be read")):
        (bad / "manifest.json").write_text(content)
        assert problem in manifest_lib.read(str(bad / "manifest.json")).problems[0]


def test_an_edit_is_recorded_and_the_same_edit_recovers(
    photos, trained_run, model, keyfiles, tmp_path
):
    """--edit changes the anonymized faces as file_edits.run_edited does, the manifest
    records it, deanonymize with the same --edit gives the model's edited recovery, and
    one without it (or with a malformed record) is warned of."""
    flags = ("--workdir", trained_run, "--password-file", keyfiles[PASSPHRASE],
             "--attributes", ATTRIBUTES)  # fmt: skip
    edits = {"Smiling": 2.0, "Eyeglasses": -1.0}
    out = tmp_path / "edited"
    result = _run(anonymize.main, *flags, "--edit", "Smiling=+2,Eyeglasses=-1", "--input",
                  photos, "--output", out)  # fmt: skip
    assert result.code == 0, result.err
    assert _manifest(out)["edit"] == edits
    originals = _fitted_originals(photos, _manifest(out))
    names = list(originals)
    x = from_uint8(np.stack([originals[n] for n in names]))
    key = _keys(model, _manifest(out), names)
    files = np.stack([_pixels(out / n) for n in names])
    expected = to_uint8(file_edits.run_edited(model, x, key, ANONYMIZE, edits))
    assert np.abs(files.astype(int) - expected).max() <= 1
    assert np.abs(files.astype(int) - to_uint8(model.anonymize(x, key))).mean() > 0.1

    same = _run(deanonymize.main, *flags, "--edit", "Smiling=+2,Eyeglasses=-1", "--input",
                out, "--output", tmp_path / "rec")  # fmt: skip
    assert same.code == 0 and "warning" not in same.err, same.err
    recovered_files = np.stack([_pixels(tmp_path / "rec" / n) for n in names])
    expected = to_uint8(file_edits.run_edited(model, from_uint8(files), key, RECOVER, edits))
    assert np.abs(recovered_files.astype(int) - expected).max() <= 1

    left_out = _run(deanonymize.main, *flags, "--input", out, "--output", tmp_path / "rec0")
    assert (
        f"warning: {out / 'manifest.json'} says they were anonymized with --edit "
        "Smiling=+2,Eyeglasses=-1 (this recovery: no --edit); recovery needs the same edit"
    ) in left_out.err.splitlines(), left_out.err
    bad = _edited_copy(out, tmp_path / "bad", edit={"Smiling": "lots"})
    result = _run(deanonymize.main, *flags, "--input", bad, "--output", tmp_path / "rec_bad")
    assert result.code == 0 and "Traceback" not in result.err
    problem = "edit.Smiling is 'lots', not a number of degrees: ignored"
    assert f"warning: {bad / 'manifest.json'}: {problem}" in result.err, result.err


def test_salts_from_the_manifest_and_images_of_kdf_version_1(
    anonymized, recovered, photos, model, trained_run, keyfiles, tmp_path
):
    """A PNG whose text chunks are gone finds its salt in the manifest beside it; one
    anonymized before salts (KDF version 1, no salt anywhere) still recovers, with a note."""
    out, _ = anonymized
    copy, old = tmp_path / "copy", tmp_path / "old"
    copy.mkdir(), old.mkdir()
    Image.fromarray(_pixels(out / "face0.png")).save(copy / "face0.png")  # no text chunks
    shutil.copy(out / "manifest.json", copy)
    x = from_uint8(image_files.read_image(photos / "face1.png", 32)[None])
    v1 = inference.make_key(PASSPHRASE, CHOICES, model.model_settings, kdf_version=1)
    image_files.write_png(old / "face1.png", to_uint8(model.anonymize(x, v1))[0])
    rec = tmp_path / "rec"
    result = _run(
        deanonymize.main,
        *("--workdir", trained_run, "--password-file", keyfiles[PASSPHRASE]),
        *("--attributes", ATTRIBUTES, "--input", copy / "face0.png", old / "face1.png"),
        *("--output", rec),
    )
    assert result.code == 0, result.err
    assert f"note: 1 image(s) carry no salt, e.g. {old / 'face1.png'}: anonymized before" in (
        result.err
    )
    assert (rec / "face0.png").read_bytes() == (recovered["right"][0] / "face0.png").read_bytes()
    expected = to_uint8(model.recover(from_uint8(_pixels(old / "face1.png")[None]), v1))[0]
    assert np.abs(_pixels(rec / "face1.png").astype(int) - expected).max() <= 1
    assert [e["kdf_version"] for e in _manifest(rec)["images"]] == [3, 1]


def test_unchosen_attributes_are_drawn_from_each_images_key(
    trained_run, photos, keyfiles, model, tmp_path
):
    """`--attributes Smiling=1` leaves Eyeglasses unchosen: each image draws it from its
    own key (the manifest says null, never the value), so a folder shares no attribute
    choice; the same flag recovers, choosing it warns. A version-2 image recovers with
    the unchosen attribute at 0, as it was made."""
    out, rec = tmp_path / "out", tmp_path / "rec"
    choices = {"Smiling": True, "Eyeglasses": None}
    flags = ("--workdir", trained_run, "--password-file", keyfiles[PASSPHRASE])
    result = _run(anonymize.main, *flags, "--attributes", "Smiling=1", "--input", photos,
                  "--output", out)  # fmt: skip
    assert result.code == 0, result.err
    manifest = _manifest(out)
    assert manifest["attributes"] == choices
    names = [e["output"] for e in manifest["images"]]
    key = _keys(model, manifest, names, choices=choices)
    assert (key.attributes[:, 0] == 0.5).all()
    originals = _fitted_originals(photos, manifest)
    x = from_uint8(np.stack([originals[n] for n in names]))
    files = np.stack([_pixels(out / n) for n in names])
    assert np.abs(files.astype(int) - to_uint8(model.anonymize(x, key))).max() <= 1
    # Other salts, other draws (fixed salts: both values occur among these eight).
    drawn = {inference.make_key(PASSPHRASE, choices, model.model_settings,
                                salt=bytes([i]) * 16).attributes[1] for i in range(8)}  # fmt: skip
    assert drawn == {-0.5, 0.5}

    result = _run(deanonymize.main, *flags, "--attributes", "Smiling=1", "--input", out,
                  "--output", rec)  # fmt: skip
    assert result.code == 0 and "warning" not in result.err, result.err
    expected = to_uint8(model.recover(from_uint8(files), key))
    assert np.abs(np.stack([_pixels(rec / n) for n in names]).astype(int) - expected).max() <= 1
    result = _run(deanonymize.main, *flags, "--attributes", "Smiling=1,Eyeglasses=0", "--input",
                  out, "--output", tmp_path / "rec0")  # fmt: skip
    assert "with --attributes Smiling=1 (this recovery: --attributes Smiling=1,Eyeglasses=0)" in (
        result.err
    )

    old, salt = tmp_path / "v2", passphrase.new_salt()
    old.mkdir()
    v2 = inference.make_key(PASSPHRASE, choices, model.model_settings, salt=salt, kdf_version=2)
    assert v2.attributes.tolist() == [0.5, -0.5]
    image_files.write_png(old / "face0.png", to_uint8(model.anonymize(x[:1], v2))[0], False,
                          file_keys.png_text(salt, 2))  # fmt: skip
    result = _run(deanonymize.main, *flags, "--attributes", "Smiling=1", "--input", old,
                  "--output", tmp_path / "rec_v2")  # fmt: skip
    assert result.code == 0, result.err
    expected = to_uint8(model.recover(from_uint8(_pixels(old / "face0.png")[None]), v2))[0]
    assert np.abs(_pixels(tmp_path / "rec_v2" / "face0.png").astype(int) - expected).max() <= 1


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
