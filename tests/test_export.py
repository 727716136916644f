"""`python -m sdn_jax.export` (in-process) on the session's tiny run: the copy holds E and G
only (the moving averages the run keeps), loads with `--checkpoint DIR` and gives the run's
very outputs; an output folder in use is refused, a failed write leaves nothing."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image
from test_anonymize_cli import fast_kdf  # noqa: F401 - its autouse fixture: scrypt at N = 2^10

from sdn_jax import anonymize, deanonymize, export, inference

PASSPHRASE = "an export test passphrase"
CHOICES = {"Smiling": True, "Eyeglasses": False}


def _run(main, *argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> tuple[Path, int, str]:
    out = tmp_path_factory.mktemp("export") / "shared"
    out.mkdir()  # an existing empty folder is fine
    return (out, *_run(export.main, "--workdir", trained_run, "--output", out))


@pytest.fixture(scope="module")
def run_model(trained_run) -> inference.Model:
    return inference.load(trained_run)


def test_the_export_holds_e_and_g_and_nothing_else(exported, trained_run, run_model):
    out, code, err = exported
    assert code == 0, err
    fingerprint = run_model.fingerprint
    assert err.startswith(f"exported step 6 of {trained_run} (moving averages of E and G; "
                          f"fingerprint {fingerprint}) into {out} in ")  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "export.json", "state"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    record = json.loads((out / "export.json").read_text())
    assert record["step"] == 6 and record["fingerprint"] == fingerprint
    assert record["networks"] == ["encoder", "decoder"] and record["moving_averages"] is True
    # Every array in the copy: no Q, D, C, CLUB, live params or optimiser state.
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
        saved = checkpointer.metadata(out / "state").item_metadata.tree
    assert sorted(saved) == ["ema_params", "step"]
    assert sorted(saved["ema_params"]) == ["decoder", "encoder"]
    config = json.loads((out / "config.json").read_text())
    assert sorted(config) == ["data", "model", "train"]
    assert config["data"]["data_dir"] is None  # the trainer's local paths are not shared
    run_config = json.loads((trained_run / "config.json").read_text())
    assert config["model"] == run_config["model"]


def test_the_file_commands_give_the_runs_outputs(exported, trained_run, run_model, tmp_path):
    out = exported[0]
    copy = inference.load(checkpoint=out)
    assert copy.step == 6 and copy.fingerprint == run_model.fingerprint
    key = inference.make_key(PASSPHRASE, CHOICES, run_model.model_settings, salt=bytes(16))
    x = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(copy.anonymize(x, key), run_model.anonymize(x, key))
    np.testing.assert_array_equal(copy.recover(x, key), run_model.recover(x, key))
    with pytest.raises(inference.LoadError, match="is checkpoint step 6, not step 3"):
        inference.find_checkpoint(checkpoint=out, step=3)

    # Through the commands: anonymized with the copy, recovered alike by it and by the run.
    photos, password = tmp_path / "photos", tmp_path / "key.txt"
    photos.mkdir()
    password.write_text(PASSPHRASE + "\n")
    password.chmod(0o600)
    for i in range(2):
        Image.fromarray((x[i] * 127.5 + 127.5).astype(np.uint8)).save(photos / f"p{i}.png")
    key_flags = ("--password-file", password, "--attributes", "Smiling=1")
    code, err = _run(anonymize.main, "--checkpoint", out, *key_flags, "--input", photos,
                     "--output", tmp_path / "anonymized")  # fmt: skip
    assert code == 0, err
    recovered = {}
    for name, run_flags in [("run", ("--workdir", trained_run)),
                            ("copy", ("--checkpoint", out, "--step", 6))]:  # fmt: skip
        code, err = _run(deanonymize.main, *run_flags, *key_flags, "--input",
                         tmp_path / "anonymized", "--output", tmp_path / name)  # fmt: skip
        assert code == 0, err
        recovered[name] = {p: (tmp_path / name / p).read_bytes() for p in ("p0.png", "p1.png")}
    assert recovered["copy"] == recovered["run"]


def test_an_output_in_use_is_refused_and_a_failed_write_leaves_nothing(
    trained_run, tmp_path, monkeypatch
):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    code, err = _run(export.main, "--workdir", trained_run, "--output", full)
    assert code == 2 and err.strip() == (
        f"python -m sdn_jax.export: error: --output {full} is not empty: choose a new folder "
        "(export never overwrites)"
    )
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    code, err = _run(export.main, "--workdir", tmp_path / "nothing", "--output", tmp_path / "o")
    assert code == 2 and "does not exist" in err and "Traceback" not in err

    def broken(folder, *args):
        (folder / "partial").write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_write", broken)
    code, err = _run(export.main, "--workdir", trained_run, "--output", tmp_path / "new")
    assert code == 1 and "No space left on device" in err and "nothing was left" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
