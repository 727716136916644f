"""sdn_jax.inference on a tiny trained run: loading, batching, agreement with training's
own forward pass, load errors; and the benchmark's anonymize section."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_model import tiny_settings

from configs import tiny
from sdn_jax import benchmark, inference, passphrase
from sdn_jax.evaluation import outputs

PASSPHRASE = "inference test passphrase"


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (count, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def model(trained_run):
    return inference.load(trained_run)


@pytest.fixture(scope="module")
def key(model):
    return inference.make_key(  # version 1: a salt-free key, quick to derive
        PASSPHRASE, {"Smiling": True, "Eyeglasses": False}, model.model_settings, kdf_version=1
    )


def test_load_reads_the_run_and_only_encoder_and_decoder(model, trained_run):
    assert model.step == 6 and model.source == str(trained_run)
    assert model.image_size == 32 and model.key_attributes == ("Smiling", "Eyeglasses")
    assert sorted(model.params) == ["decoder", "encoder"]
    saved = json.loads((trained_run / "config.json").read_text())
    assert model.model_settings.password_bits == saved["model"]["password_bits"] == 16
    assert model.run.model == model.model_settings and model.run.ema  # tiny keeps averages
    assert model.run.data.image_size == 32

    older = inference.load(trained_run, step=3)
    assert older.step == 3
    assert inference.load(checkpoint=trained_run / "checkpoints" / "3").step == 3
    assert inference.load(checkpoint=trained_run / "checkpoints").step == 6
    moved = jax.tree.leaves(older.params["decoder"]), jax.tree.leaves(model.params["decoder"])
    assert any(not np.array_equal(a, b) for a, b in zip(*moved)), "steps 3 and 6 are the same"
    # The fingerprint tells the steps apart and depends only on the weights.
    assert len(model.fingerprint) == 16 and older.fingerprint != model.fingerprint
    assert inference.weights_fingerprint(jax.tree.map(np.array, model.params)) == model.fingerprint


def test_load_reads_the_moving_averages_the_run_kept(model, trained_run):
    """The tiny config keeps averages of E and G (train.ema_decay): those are the model."""
    import orbax.checkpoint as ocp  # noqa: PLC0415

    saved = ocp.PyTreeCheckpointer().restore(trained_run / "checkpoints" / "6" / "state")
    for name in ("encoder", "decoder"):
        loaded = jax.tree.leaves(model.params[name])
        for got, average in zip(loaded, jax.tree.leaves(saved["ema_params"][name])):
            np.testing.assert_array_equal(got, average)
        live = jax.tree.leaves(saved["params"][name])
        assert any(not np.array_equal(a, b) for a, b in zip(loaded, live)), name


def test_key_is_the_kdf_bits_and_attributes_and_its_repr_hides_them(model, key):
    bits = passphrase.password_bits(PASSPHRASE, 16, version=1)
    np.testing.assert_array_equal(passphrase.vector_to_bits(key.password), bits)
    np.testing.assert_array_equal(key.attributes, [0.5, -0.5])
    assert repr(key) == "Key(<secret>)" and str(key) == "Key(<secret>)"


def test_matches_the_training_forward_pass(model, key, trained_run):
    """anonymize / recover are exactly the x_A and x_R of outputs.make_outputs_fn."""
    images = _images(5)
    batch = len(images)
    broadcast = lambda v: jnp.broadcast_to(v, (batch, v.shape[-1]))
    training_key = {
        "password": broadcast(key.password),
        "attributes": broadcast(key.attributes),
        "wrong_password": broadcast(-key.password),
        "wrong_attributes": broadcast(-key.attributes),
    }
    expected = jax.jit(outputs.make_outputs_fn(model.networks))(
        model.params, jnp.asarray(images), training_key
    )
    anonymized = model.anonymize(images, key)
    np.testing.assert_allclose(anonymized, expected["anonymized"], atol=1e-5)
    np.testing.assert_allclose(model.recover(anonymized, key), expected["recovered"], atol=1e-5)
    assert np.abs(anonymized - images).mean() > 1e-3  # it does change the image


def test_results_do_not_depend_on_the_batch_or_its_padding(model, key, trained_run):
    images = _images(7, seed=1)
    small = inference.load(trained_run, batch_size=3)  # 3 + 3 + 1 padded with 2 zeros
    np.testing.assert_allclose(
        small.anonymize(images, key), model.anonymize(images, key), atol=1e-5
    )
    np.testing.assert_allclose(
        small.anonymize(images[4:5], key)[0], model.anonymize(images, key)[4], atol=1e-5
    )
    assert model.anonymize(images[:0], key).shape == (0, 32, 32, 3)
    # A key per image (each image's salt): the same program; a row's key changes its row.
    rows = np.repeat(key.password[None], 7, 0)
    rows[2] = -rows[2]
    per_image = small.anonymize(images, inference.Key(rows, key.attributes))
    same = np.arange(7) != 2
    np.testing.assert_allclose(per_image[same], model.anonymize(images, key)[same], atol=1e-5)
    assert np.abs(per_image[2] - model.anonymize(images, key)[2]).mean() > 1e-3


def test_bad_arguments(model, key):
    with pytest.raises(ValueError, match=r"images must be \(N, 32, 32, 3\)"):
        model.anonymize(np.zeros((1, 64, 64, 3)), key)
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        model.anonymize(np.full((1, 32, 32, 3), 2.0), key)
    other = inference.make_key(PASSPHRASE, {"Smiling": True}, _model(("Smiling",)), kdf_version=1)
    with pytest.raises(ValueError, match="another model configuration"):
        model.recover(np.zeros((1, 32, 32, 3)), other)
    with pytest.raises(ValueError, match="exactly one"):
        inference.find_checkpoint()


def _model(key_attributes):
    return tiny_settings(**{"model.key_attributes": key_attributes}).model


def _assert_load_error(match: str, *args, **kwargs) -> None:
    with pytest.raises(inference.LoadError, match=match):
        inference.load(*args, **kwargs)


def test_load_errors_name_the_path(trained_run, tmp_path):
    _assert_load_error(f"run folder {tmp_path / 'nope'} does not exist", tmp_path / "nope")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _assert_load_error(r"no checkpoint step 4 in .*; it has steps \[3, 6\]", run, step=4)
    _assert_load_error("is checkpoint step 3, not step 6", checkpoint=run / "checkpoints/3", step=6)

    for path in (run / "checkpoints" / "6" / "state" / "d").iterdir():
        path.write_bytes(path.read_bytes()[:20])  # truncated array data
    _assert_load_error(f"checkpoint {run}/checkpoints/6/state cannot be restored", run)
    assert inference.load(run, step=3).step == 3  # an error, not a silent older step
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["3", "6"]  # untouched

    shutil.rmtree(run / "checkpoints" / "3" / "state")
    _assert_load_error(f"{run}/checkpoints/3/state is missing", run, step=3)

    (run / "config.json").write_text("{not json")
    _assert_load_error(f"{run}/config.json cannot be read as a run's config", run)
    (run / "config.json").write_text('{"model": {}}')
    _assert_load_error(f"{run}/config.json lacks a data/model/train section", run)
    (run / "config.json").write_text('{"data": {}, "model": {}, "train": {}}')
    _assert_load_error(r"config.json: missing config field\(s\): data.name, data.image_size", run)
    (run / "config.json").unlink()
    _assert_load_error(f"{run}/config.json is missing", run)

    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").mkdir()
    _assert_load_error(f"no checkpoint in {run}/checkpoints", run)
    shutil.rmtree(run / "checkpoints")
    _assert_load_error(f"{run}/checkpoints does not exist", run)


def test_a_checkpoint_of_another_config_is_refused(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["widths"] = [8, 16, 48]  # not what the checkpoint holds
    (run / "config.json").write_text(json.dumps(config))
    _assert_load_error("does not match|cannot be restored", run)


def test_an_older_runs_config_is_upgraded_or_refused(trained_run, tmp_path):
    """config.json of a run that predates a field loads with the value it ran with; one
    that used a retired experiment setting is refused by name."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["warp_pixels"] = 0.0  # retired, at its neutral value: dropped
    (run / "config.json").write_text(json.dumps(config))
    assert inference.read_config(run / "config.json").model.recovery == "inverse"
    assert inference.load(run).step == 6
    del config["model"]["recovery"]  # predates the field: the "conditioned" it ran with
    (run / "config.json").write_text(json.dumps(config))
    assert inference.read_config(run / "config.json").model.recovery == "conditioned"
    config["model"]["recovery"] = "inverse"
    config["model"]["warp_pixels"] = 2.0
    (run / "config.json").write_text(json.dumps(config))
    _assert_load_error(r"model.warp_pixels is a retired experiment setting", run)


def test_benchmark_section(trained_run, tmp_path):
    options = benchmark.Options(str(tmp_path), num_batches=2, warmup_batches=1)
    results = benchmark.run(tiny.get_config(), ["anonymize"], options)
    section = results["anonymize"]
    assert section["images_per_s"] > 0 and section["weights"] == "initialised"
    assert section["batch_size"] == inference.DEFAULT_BATCH_SIZE and section["num_batches"] == 2
    assert section["image_size"] == 32
    trained = benchmark.run(
        tiny.get_config(),
        ["anonymize"],
        benchmark.Options(str(tmp_path), 2, warmup_batches=1, workdir=trained_run),
    )
    assert trained["anonymize"]["weights"] == f"{trained_run} step 6"
