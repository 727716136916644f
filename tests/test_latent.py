"""sdn_jax.latent: directions, degrees, edits, the face editor and the analysis end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdn_jax import keys
from sdn_jax.latent import analysis, analyze, editing, spaces
from sdn_jax.latent import directions as dirs
from sdn_jax.models.sdn import generate


def test_probe_recovers_a_planted_linear_attribute():
    rng = np.random.default_rng(0)
    planted = dirs.unit(jnp.asarray(rng.standard_normal(32)))
    latents = rng.standard_normal((1000, 32)).astype(np.float32) * rng.uniform(0.5, 2.0, 32)
    labels = latents @ np.asarray(planted) + 0.3 * rng.standard_normal(1000) > 0.2
    found = dirs.probe_direction(jnp.asarray(latents), jnp.asarray(labels))
    assert float(found @ planted) > 0.95
    both = dirs.probe_directions(jnp.asarray(latents), jnp.asarray(np.stack([labels, ~labels], 1)))
    np.testing.assert_allclose(both[0], -both[1], atol=1e-5)


def test_sefa_finds_known_eigenvectors_and_pca_the_main_axis():
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    v, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    singular = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    weight = u[:, :6] @ np.diag(singular) @ v.T  # (8 latent, 6 out)
    found = np.asarray(dirs.sefa_directions(jnp.asarray(weight), 3))
    np.testing.assert_allclose(np.abs(np.sum(found * u[:, :3].T, axis=1)), 1.0, atol=1e-4)
    latents = rng.standard_normal((500, 8)) * 0.1 + rng.standard_normal((500, 1)) * u[:, 0]
    axis = np.asarray(dirs.pca_directions(jnp.asarray(latents), 1))[0]
    assert abs(axis @ u[:, 0]) > 0.99
    index, signed, cosine = dirs.match_components(jnp.asarray(found), jnp.asarray(-u[:, 1:2].T))
    assert int(index[0]) == 1 and float(cosine[0]) > 0.999 and float(signed[0] @ u[:, 1]) < 0


def test_edits_scale_linearly_and_zero_is_the_identity():
    rng = np.random.default_rng(2)
    latent = jnp.asarray(rng.standard_normal((5, 16)), jnp.float32)
    direction = jnp.asarray(rng.standard_normal(16), jnp.float32)
    size = dirs.degree_size(latent, direction)
    np.testing.assert_array_equal(dirs.edit(latent, direction, 0.0, size), latent)
    one = dirs.edit(latent, direction, 1.0, size) - latent
    np.testing.assert_allclose(dirs.edit(latent, direction, 2.0, size) - latent, 2 * one, atol=1e-5)
    np.testing.assert_allclose(dirs.edit(latent, direction, -1.0, size) - latent, -one, atol=1e-5)
    per_row = dirs.edit(latent, direction, jnp.arange(5.0), size) - latent
    np.testing.assert_allclose(per_row[3], 3 * one[0], atol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(one, axis=1), size, rtol=1e-5)
    others = jnp.asarray(rng.standard_normal((2, 16)), jnp.float32)
    conditional = dirs.conditional_direction(direction, others)
    np.testing.assert_allclose(others @ conditional, 0.0, atol=1e-5)


def test_parse_edits():
    known = ("Smiling", "Mustache")
    assert editing.parse_edits("Smiling=+1, Mustache=-2", known) == {"Smiling": 1, "Mustache": -2}
    for bad, reason in [("Beard=1", "unknown attribute"), ("Smiling", "NAME=DEGREES"),
                        ("Smiling=x", "number"), ("Smiling=1,Smiling=2", "twice"),
                        ("Smiling=nan", "between"), ("", "names no")]:  # fmt: skip
        with pytest.raises(ValueError, match=reason):
            editing.parse_edits(bad, known)
    assert analyze.parse_degrees("-2,0,2.5") == (-2.0, 0.0, 2.5)
    for bad in ("1,2", "a,0", "0,0,1", "0,11"):
        with pytest.raises(analyze.UsageError):
            analyze.parse_degrees(bad)


def test_zero_edits_change_nothing_and_the_editor_keeps_the_photo(settings, networks, params):
    from tiny_model import fast_jit

    images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
    rng_p, rng_a = jax.random.split(jax.random.key(1))
    condition = keys.condition_vector(
        keys.ANONYMIZE,
        keys.random_passwords(rng_p, 2, settings.model.password_bits),
        keys.random_attributes(rng_a, 2, len(settings.model.key_attributes)),
    )
    conditions = editing.editor_conditions(settings.model, 1)

    @fast_jit
    def differences(params, images, condition):
        plain = generate(networks, params, images, condition)
        found = spaces.latents(networks, params, images, condition)
        out = {"key": jnp.abs(found["key"] - condition[:, -found["key"].shape[1] :]).max()}
        for space in spaces.SPACES:
            zero = jnp.zeros_like(found[space])
            edited = spaces.decode_edited(networks, params, images, condition, space, zero)
            out[space] = jnp.abs(edited - plain).max()
        zero = jnp.zeros_like(found["key"])
        kept = editing.edit_photos(networks, params, images, conditions, "key", zero)
        out["editor"] = jnp.abs(kept - images).max()
        return out

    for name, value in jax.device_get(differences(params, images, condition)).items():
        assert value < 1e-5, name
    for space in spaces.SPACES:
        width = {"z": 32, "key": 2, "embedding": 32, "features": 32}[space]
        assert spaces.reading_weights(networks, params, space).shape[0] == width


def test_analysis_end_to_end_on_the_tiny_run(trained_run, trained_attacker, tmp_path, capsys):
    from sdn_jax import inference, run_identity
    from sdn_jax.latent import report

    model = inference.load(trained_run, batch_size=8)
    settings = run_identity.stored_settings(str(trained_run))
    options = analysis.Options(
        attributes=("Smiling", "Mustache"), num_faces=2, fit_photos=16, components=2,
        effect_faces=1, ground_truth_faces=1, batch_size=8,
    )  # fmt: skip
    result, pictures = analyze.analyze_run(
        model, settings, str(trained_run), options, print, attacker=trained_attacker[1],
        cache_dir=str(tmp_path / "cache"),  # the session's run is read-only
    )  # fmt: skip
    assert len(list((tmp_path / "cache").glob("latents_train_step*_n16.npz"))) == 1
    assert set(result["methods"]) == {"probe", "sefa", "pca"}
    assert result["best_method"] in result["methods"]
    entry = result["methods"]["probe"]["Smiling"]
    assert set(entry) >= {"monotonic_fraction", "ratio_2_to_1", "identity_kept_fraction",
                          "max_other_attribute_shift", "degrees"}  # fmt: skip
    assert set(entry["degrees"]) == {"-2", "-1", "0", "1", "2"}
    assert entry["degrees"]["0"]["psnr"] == analysis.MAX_DB
    assert set(result["ground_truth"]) == {"Smiling", "Mustache"}
    json.dumps(result)
    # The component gallery: one face, each component's row by degree (degree 0 unedited).
    gallery = pictures["components"]["pca"]
    assert gallery.shape[:2] == (2, 5) and set(pictures["components"]) == {"sefa", "pca"}
    np.testing.assert_allclose(gallery[0, 2], gallery[1, 2], atol=1e-6)
    assert np.abs(gallery[0, 0] - gallery[0, 2]).max() > 0
    # The projection: every fit photo on the two principal axes, centred.
    points = pictures["projection"]["points"]
    assert points.shape == (16, 2)
    np.testing.assert_allclose(points.mean(axis=0), 0.0, atol=1e-4)
    assert set(pictures["projection"]["labels"]) == {"Smiling", "Mustache"}
    report.write_pictures(pictures, result, str(tmp_path))
    assert "| probe | Smiling |" in report.report_markdown(result)
    for name in ("strip_sefa_Mustache", "probability", "components_pca", "projection"):
        assert (tmp_path / f"{name}.png").is_file(), name
    assert "pca: Mustache" in capsys.readouterr().out


def test_analyze_usage_errors_are_one_line(trained_run, tmp_path, capsys):
    cases = [
        (["--workdir", str(tmp_path)], "no checkpoints"),
        (["--workdir", str(trained_run), "--attributes", "Smiling,Beard"], "unknown attribute"),
        (["--workdir", str(trained_run), "--degrees", "1,2"], "needs 0"),
    ]
    for argv, message in cases:
        assert analyze.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_the_face_editor_command(trained_run, tmp_path, capsys):
    """python -m sdn_jax.latent.edit: 0 degrees gives the photo back, an edit changes it,
    existing outputs are kept, and a mistake is one line with exit 2 and writes nothing."""
    from PIL import Image

    from sdn_jax.data.synth.render import render_faces
    from sdn_jax.latent import edit

    photos = tmp_path / "photos"
    photos.mkdir()
    faces, _ = render_faces([3, 4], [0, 0], image_size=32)
    for i, face in enumerate(faces):
        Image.fromarray(face).save(photos / f"face{i}.png")
    run = ("--workdir", str(trained_run), "--input", str(photos))

    assert edit.main([*run, "--output", str(tmp_path / "zero"), "--edit", "Smiling=0"]) == 0
    kept = np.stack([np.asarray(Image.open(tmp_path / "zero" / f"face{i}.png")) for i in (0, 1)])
    assert np.abs(kept.astype(int) - faces).max() <= 1
    assert edit.main([*run, "--output", str(tmp_path / "smile"), "--edit", "Smiling=+2"]) == 0
    smile = np.stack([np.asarray(Image.open(tmp_path / "smile" / f"face{i}.png")) for i in (0, 1)])
    assert np.abs(smile.astype(int) - faces).mean() > 0.1  # ~0.4 after 6 tiny steps
    capsys.readouterr()

    before = (tmp_path / "smile" / "face0.png").read_bytes()
    assert edit.main([*run, "--output", str(tmp_path / "smile"), "--edit", "Smiling=-2"]) == 1
    assert "exists (--overwrite replaces it)" in capsys.readouterr().err
    assert (tmp_path / "smile" / "face0.png").read_bytes() == before

    assert edit.main([*run, "--output", str(tmp_path / "bad"), "--edit", "Beard=+1"]) == 2
    err = capsys.readouterr().err
    assert "unknown attribute 'Beard'" in err and len(err.strip().splitlines()) == 1
    missing = ("--workdir", str(trained_run), "--input", str(tmp_path / "none.png"))
    assert edit.main([*missing, "--output", str(tmp_path / "none"), "--edit", "Smiling=1"]) == 1
    assert not (tmp_path / "bad").exists() and not (tmp_path / "none").exists()
