"""The security study on a tiny trained run: its wrong keys, its report and its plot.

The attacker here is the real `Attacker` class with small, freshly initialised (untrained)
networks: training one is too slow for a test. Its threshold is set on the test faces'
own original-vs-reference similarities, so that verification splits them.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tiny_model import tiny_settings

from sdn_jax import inference, keys
from sdn_jax.data import synth as synth_faces
from sdn_jax.evaluation import attacker as attacker_lib
from sdn_jax.evaluation import (
    attacker_training,
    leaks,
    report_markdown,
    security,
    security_keys,
    security_plot,
)

SMALL = dict(
    num_faces=12,
    num_random_keys=40,
    random_attack_faces=3,
    keys_per_call=16,
    batch_size=8,
    kdf_repeats=1,
)


def _faces(people: int, size: int = 32):
    """Photo 0 of each synthetic test person (the probe) and photo 1 (the reference)."""
    ids = np.arange(10_000, 10_000 + people)  # far from the tiny run's 12 training people
    probes, _ = synth_faces.render_faces(ids, np.zeros(people, int), size)
    references, _ = synth_faces.render_faces(ids, np.ones(people, int), size)
    scale = lambda x: x.astype(np.float32) / 127.5 - 1.0
    return scale(probes), scale(references)


def _untrained_attacker(probes, references) -> attacker_lib.Attacker:
    """A real Attacker with initialised weights; threshold: the median probe-reference
    similarity, so that about half of the original pairs verify."""
    settings = dataclasses.replace(
        tiny_settings().eval.attacker, widths=(8, 16), attribute_widths=(8, 16),
        embedding_dim=16, attribute_input_size=32, batch_size=64,
    )  # fmt: skip
    shape = jnp.zeros((1, 32, 32, 3))
    rng_i, rng_a = jax.random.split(jax.random.key(7))
    identity = attacker_training.identity_network(settings).init(rng_i, shape)
    attributes = attacker_training.attribute_network(settings).init(rng_a, shape)
    attacker = attacker_lib.Attacker(settings, identity, attributes, threshold=1.0)
    similarity = np.sum(attacker.embed(probes) * attacker.embed(references), axis=-1)
    attacker.threshold = float(np.median(similarity))
    return attacker


@pytest.fixture(scope="module")
def model(trained_run):
    return inference.load(trained_run, batch_size=8)


def small(**changes):
    """The tiny run's eval.security, shrunk to seconds."""
    return dataclasses.replace(tiny_settings().eval.security, **{**SMALL, **changes})


@pytest.fixture(scope="module")
def study(model):
    probes, references = _faces(16)
    attacker = _untrained_attacker(probes, references)
    galleries = attacker.galleries(attacker.embed(references), np.arange(16))  # one photo each
    section = security.security_study(model, attacker, probes, galleries, small(), progress=False)
    return section, attacker, probes, galleries


@pytest.mark.parametrize(
    "num_bits, expected",
    [(16, [0, 1, 2, 4, 8, 16]), (64, [0, 1, 2, 4, 8, 16, 32]), (8, [0, 1, 2, 4, 8])],
)
def test_hamming_keys_are_exactly_at_the_stated_distance(num_bits, expected, settings):
    distances = security_keys.hamming_distances(settings.eval.security, num_bits)
    assert distances == expected  # 0, 1 and K/2 always; none above K
    right = np.asarray(keys.random_passwords(jax.random.key(0), 50, num_bits))
    for d in distances:
        wrong = security_keys.password_at_distance(jax.random.key(d), right, d)
        assert set(np.unique(wrong)) <= {-0.5, 0.5}
        np.testing.assert_array_equal(np.asarray(keys.hamming_distance(wrong, right)), d)
        if 0 < d < num_bits:  # the flipped positions differ from face to face
            assert len({tuple(row) for row in (wrong != right)}) > 1
    unchanged = security_keys.password_at_distance(jax.random.key(1), right, 0)
    np.testing.assert_array_equal(unchanged, right)


def test_attribute_flips_and_random_attack_keys():
    attributes = np.asarray(keys.random_attributes(jax.random.key(1), 5, 4))
    for index in range(4):
        flipped = security_keys.attribute_flipped(attributes, index)
        np.testing.assert_array_equal(flipped != attributes, np.eye(4, dtype=bool)[[index] * 5])
    right = np.full(16, 0.5, np.float32)
    password, attributes = security_keys.random_attack_keys(jax.random.key(2), right, 300, 2)
    assert password.shape == (300, 16) and attributes.shape == (300, 2)
    assert np.all(np.asarray(keys.hamming_distance(password, right[None])) >= 1)
    assert 5 < np.mean(np.sum(password != right, axis=-1)) < 11  # uniform: about 8 of 16


def test_one_face_many_keys_equals_the_per_face_path(model):
    probes, _ = _faces(1)
    right = np.full(16, -0.5)
    password, attributes = security_keys.random_attack_keys(jax.random.key(3), right, 5, 2)
    many = security.recover_with_many_keys(model, probes[0], password, attributes, 4)
    one_by_one = security.transform(
        model, np.repeat(probes, 5, axis=0), keys.RECOVER, password, attributes, 8
    )
    np.testing.assert_allclose(many, one_by_one, atol=1e-5)


def _leaves(tree, path=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{path}/{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _leaves(value, f"{path}[{i}]")
    else:
        yield path, tree


def test_report_has_every_figure_finite_and_fractions_in_unit_interval(study):
    section = study[0]
    json.dumps(section)  # report.json takes it verbatim
    assert section["key_space_bits"] == 16 + 2 and section["num_faces"] == 12
    assert section["kdf_seconds_per_guess"] > 0
    assert [row["bits"] for row in section["hamming"]] == [0, 1, 2, 4, 8, 16]
    assert list(section["attribute_flips"]) == ["Smiling", "Eyeglasses"]
    assert list(section["recompression"]) == ["png", "jpeg95", "jpeg75", "resize2x"]
    attack = section["random_key_attack"]
    assert attack["num_keys"] == 40 and attack["num_faces"] == 3
    rows = [*section["hamming"], *section["attribute_flips"].values(),
            *section["recompression"].values()]  # fmt: skip
    for row in rows:
        for name in ("psnr_mean", "psnr_worst_decile", "identity_match_rate",
                     "fraction_within_4db_of_right_key", "fraction_failing"):  # fmt: skip
            assert name in row
    for name in ("best_psnr_mean", "right_key_psnr_mean", "best_similarity_mean",
                 "right_key_similarity_mean", "fraction_faces_linked"):  # fmt: skip
        assert name in attack
    for path, value in _leaves(section):
        if isinstance(value, bool):
            continue
        assert np.isfinite(value), path
        if "fraction" in path or "match_rate" in path:
            assert 0.0 <= value <= 1.0, path
    goal = section["goal_one_bit_fails_verification"]
    one_bit = next(row for row in section["hamming"] if row["bits"] == 1)
    # Counts of the 12 faces: those one wrong bit fails for and those it still links.
    failed, linked = goal["fraction"] * 12, one_bit["identity_match_rate"] * 12
    assert failed == pytest.approx(round(failed)) and linked == pytest.approx(round(linked))
    assert round(failed) + round(linked) == 12
    assert goal["target"] == 0.95 and goal["met"] == (round(failed) >= 0.95 * 12)


def test_figures_on_a_hand_made_outcome():
    """Ten faces: PSNR 10..55 dB against a right key at 30 dB everywhere (within 4 dB:
    26 dB and up, the last 6 faces), every third face linked (0, 3, 6, 9)."""
    psnr = np.arange(10, 60, 5, dtype=np.float64)
    linked = np.arange(10) % 3 == 0
    result = {"psnr": psnr, "similarity": np.linspace(-0.9, 0.9, 10), "linked": linked}
    right = {"psnr": np.full(10, 30.0)}
    wrong = security.figures(result, right, right_key=False)
    assert wrong["psnr_mean"] == pytest.approx(32.5)
    assert wrong["psnr_p10"] == pytest.approx(14.5) and wrong["psnr_p90"] == pytest.approx(50.5)
    assert wrong["psnr_worst_decile"] == pytest.approx(50.5)  # a wrong key: the high tail
    assert wrong["identity_match_rate"] == pytest.approx(0.4)
    assert wrong["fraction_within_4db_of_right_key"] == pytest.approx(0.6)
    # A wrong key fails the user where it links the face or comes within 4 dB: faces 0, 3
    # and 4..9.
    assert wrong["fraction_failing"] == pytest.approx(0.8)
    assert wrong["similarity_mean"] == pytest.approx(0.0, abs=1e-12)
    assert wrong["similarity_worst_decile"] == pytest.approx(0.72)
    right_key = security.figures(result, right, right_key=True)
    assert right_key["psnr_worst_decile"] == pytest.approx(14.5)  # the right key: the low tail
    assert right_key["similarity_worst_decile"] == pytest.approx(-0.72)
    # The right key fails where the face is not linked or not within 4 dB: all but 6 and 9.
    assert right_key["fraction_failing"] == pytest.approx(0.8)


def test_distance_zero_and_png_reproduce_the_right_key_exactly(study):
    section = study[0]
    assert section["hamming"][0] == {"bits": 0, **section["right_key"]}
    png = dict(section["recompression"]["png"])
    assert png.pop("psnr_drop_mean") == 0.0 and png == section["right_key"]
    assert section["right_key"]["fraction_within_4db_of_right_key"] == 1.0


def _identity_model(model) -> inference.Model:
    """The tiny run's model with G's output convolution zeroed: with its residual output,
    G(x) = 0.98 x whatever the key, so recovery returns the copy it is given and a lossy
    copy's loss shows undiluted (the 6-step model does not invert anything yet)."""

    def zero_output_conv(path, leaf):
        names = [getattr(p, "key", "") for p in path]
        is_output = names[0] == "decoder" and names[1] == f"Conv_{_last_conv(model)}"
        return jnp.zeros_like(leaf) if is_output else leaf

    params = jax.tree_util.tree_map_with_path(zero_output_conv, model.params)
    return inference.Model(model.run, params, step=None, source="identity", batch_size=8)


def _last_conv(model) -> int:
    convs = [n for n in model.params["decoder"] if n.startswith("Conv_")]
    last = max(int(n.split("_")[1]) for n in convs)
    assert model.params["decoder"][f"Conv_{last}"]["kernel"].shape[-1] == 3  # RGB out
    return last


def test_lossy_copies_degrade_recovery(model, study):
    _, attacker, probes, galleries = study
    settings = small(num_random_keys=8, random_attack_faces=1)
    section = security.security_study(
        _identity_model(model), attacker, probes, galleries, settings, progress=False
    )
    copies = section["recompression"]
    assert copies["png"]["psnr_mean"] > 30.0  # only 8-bit rounding and the 0.98 gain
    assert copies["jpeg95"]["psnr_mean"] < copies["png"]["psnr_mean"] - 0.5
    assert copies["jpeg75"]["psnr_mean"] < copies["jpeg95"]["psnr_mean"] - 0.5
    assert copies["resize2x"]["psnr_mean"] < copies["png"]["psnr_mean"] - 0.5
    assert copies["jpeg75"]["psnr_drop_mean"] > 1.0
    # The key does nothing here, so every wrong key is "within 4 dB": all faces fail.
    assert section["hamming"][-1]["fraction_within_4db_of_right_key"] == 1.0


def test_plot_is_a_readable_png(study, tmp_path):
    path = tmp_path / "security.png"
    security_plot.plot_security(study[0], str(path))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 600 and image.size[1] > 400
        assert np.asarray(image.convert("L")).std() > 5  # not a blank canvas


def test_bad_inputs_are_clear_errors(model, study):
    _, attacker, probes, galleries = study
    run = lambda *args: security.security_study(model, attacker, *args, small(), progress=False)
    with pytest.raises(ValueError, match=r"one gallery embedding \(N, D\) per image"):
        run(probes, galleries[:3])
    with pytest.raises(ValueError, match=r"one gallery embedding \(N, D\) per image"):
        run(probes, probes)  # photos, not the attacker's templates
    with pytest.raises(ValueError, match=r"images must be \(N, 32, 32, 3\)"):
        run(probes[:, :16], galleries)


def test_folder_attacks_undo_a_shared_change_and_not_per_image_ones(study):
    """Hand-made folders: anonymizing adds a change c(key). Under one shared key the
    folder's mean (or one known pair) gives c away exactly; with a key per image the
    same attacks gain nothing (or lose)."""
    _, attacker, _, _ = study
    rng = np.random.default_rng(0)
    originals = rng.uniform(-0.5, 0.5, (16, 32, 32, 3)).astype(np.float32)
    galleries = attacker.embed(originals)
    shared_change = rng.uniform(-0.4, 0.4, (32, 32, 3)).astype(np.float32)
    own_changes = rng.uniform(-0.4, 0.4, (16, 32, 32, 3)).astype(np.float32)
    folders = {"shared_key": originals + shared_change, "per_image_salt": originals + own_changes}

    common = leaks.common_change_attack(
        folders, originals, galleries, attacker, public_mean=originals.mean(axis=0)
    )
    assert common["shared_key"]["psnr_gain_db"] > 50  # the originals exactly (PSNR capped)
    assert abs(common["per_image_salt"]["psnr_gain_db"]) < 1.0
    assert common["shared_key"]["match_rate_gain"] >= common["per_image_salt"]["match_rate_gain"]

    pairs = leaks.known_pairs_attack(folders, originals, galleries, attacker)
    assert sorted(pairs) == ["1", "4"]
    for k in ("1", "4"):
        assert pairs[k]["psnr_gain_db"] > 50
        assert pairs[k]["per_image_salt"]["psnr_gain_db"] < 0.5
    markdown = report_markdown.leaks_markdown(
        {"common_change_attack": common, "known_pairs_attack": pairs}
    )
    assert "| 1 known pair(s)" not in markdown and "mean change of 4 known pair(s)" in markdown


class _PlantedReader:
    """The study's attacker, whose attribute classifier reads planted values."""

    def __init__(self, attacker, key_index, values):
        self._attacker, self._key_index, self._values = attacker, key_index, values

    def __getattr__(self, name):
        return getattr(self._attacker, name)

    def attributes(self, images):
        probabilities = np.full((len(images), 40), 0.5, np.float32)
        probabilities[:, self._key_index] = self._values > 0
        return probabilities


def test_reading_each_faces_attributes_undoes_a_change_drawn_from_them(study):
    """Each face drew its own attribute values, and anonymizing added a shared change plus
    one change per attribute that is on: the folder's mean leaves the attribute part in,
    an attacker who reads the attributes right takes it all out (the originals are made
    uncorrelated with the values, so that "all" is exact), one who reads them wrong does not."""
    _, attacker, _, _ = study
    rng = np.random.default_rng(1)
    values = rng.choice(np.float32([-0.5, 0.5]), (24, 2))
    design = np.concatenate([np.ones((24, 1)), values], axis=1)
    raw = rng.uniform(-0.5, 0.5, (24, 32 * 32 * 3))
    originals = (raw - design @ np.linalg.lstsq(design, raw, rcond=None)[0]).astype(np.float32)
    originals = originals.reshape(24, 32, 32, 3)
    galleries = attacker.embed(originals)
    shared, per_attribute = (rng.uniform(-0.3, 0.3, shape).astype(np.float32)
                             for shape in ((32, 32, 3), (2, 32, 32, 3)))  # fmt: skip
    folder = originals + shared + np.einsum("na,ahwc->nhwc", values, per_attribute)
    public_mean = originals.mean(axis=0)
    key_index = np.array([31, 15])  # Smiling, Eyeglasses

    def attack(read_values):
        reader = _PlantedReader(attacker, key_index, read_values)
        return leaks.attribute_reading_attack(folder, values, key_index, originals, galleries,
                                              reader, public_mean)  # fmt: skip

    mean_only = leaks.common_change_attack({"f": folder}, originals, galleries, attacker,
                                           public_mean)["f"]  # fmt: skip
    right, wrong = attack(values), attack(rng.choice(np.float32([-0.5, 0.5]), (24, 2)))
    assert right["attribute_read_accuracy"] == 1.0 and right["psnr_gain_db"] > 50
    assert 0.2 < wrong["attribute_read_accuracy"] < 0.8
    assert wrong["psnr_gain_db"] < mean_only["psnr_gain_db"] + 3 < right["psnr_gain_db"] - 20
