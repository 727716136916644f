"""The independent evaluation of a trained run: `eval/report.json` and `eval/report.md`.

What an adversary with its own recognizer (sdn_jax.evaluation.attacker, trained only on
original training photos) achieves against SDN's outputs, on people never seen in
training (the test split) and on known people (validation): for every face, a *probe*
photo goes through SDN with a random key of its own, and each output is verified against
the attacker's *gallery* of the person (the mean embedding of other photos of them) at
the attacker's 1%-false-accept threshold; `identity_match_rate_one_photo` is the same
for an attacker holding one other photo, averaged over which. Image quality is PSNR /
SSIM against the probe. Per-face distributions are reported beside the means (worst
decile, share of faces failing the goal), because a mean can hide a minority of faces
that the anonymization does not protect.

Run it with `python -m sdn_jax.main --mode evaluate` (the end of training runs it too).
"""

import json
import logging
import os
import time

import jax
import numpy as np

from sdn_jax import compiler, inference, keys
from sdn_jax.atomic_files import written_atomically
from sdn_jax.batching import map_in_batches
from sdn_jax.data import attributes as attr_lib
from sdn_jax.data import pipeline
from sdn_jax.evaluation import attacker as attacker_lib
from sdn_jax.evaluation import metrics
from sdn_jax.evaluation import outputs as outputs_lib
from sdn_jax.evaluation.outputs import OUTPUTS, SHOULD_MATCH
from sdn_jax.evaluation.report_markdown import report_markdown
from sdn_jax.images import from_uint8, to_unit
from sdn_jax.settings import Model, Settings

log = logging.getLogger("sdn_jax")  # main.py shows it at INFO; absl is at WARNING

REPORT_JSON, REPORT_MD, SECURITY_PLOT = "report.json", "report.md", "security.png"
KEY_SEED = 4321  # the faces' random keys: fixed, so runs and steps compare


def probes_and_references(
    source, max_people: int, probes_per_person: int, reference_photos: int = 1
) -> dict:
    """Probe photos and, for each person, up to `reference_photos` other photos (the
    attacker's gallery), as float [-1, 1].

    People are taken in identity order, photos in record order (probes first), so the
    choice is fixed by the split. The gallery comes first: a person with n photos gives
    min(reference_photos, n - 1) references and at most the n left as probes; one with a
    single photo gives none. `probe_owner` / `reference_owner` index the people taken.
    """
    identities = pipeline.read_identities(source)
    order = np.argsort(identities, kind="stable")
    _, starts = np.unique(identities[order], return_index=True)
    probe_index, reference_index, probe_owner, reference_owner, taken = [], [], [], [], 0
    for group in np.split(order, starts[1:]):
        references = min(reference_photos, len(group) - 1)
        count = min(probes_per_person, len(group) - references)
        if references < 1 or count < 1 or taken == max_people:
            continue
        probe_index.extend(group[:count])
        reference_index.extend(group[count : count + references])
        probe_owner.extend([taken] * count)
        reference_owner.extend([taken] * references)
        taken += 1
    if not probe_index:
        raise ValueError(
            "No person in the split has 2 photos: cannot pair probes with reference photos"
        )

    def load(index):
        records = [source[int(i)] for i in index]
        images = from_uint8(np.stack([r["image"] for r in records]))
        return images, np.stack([np.asarray(r["attributes"], bool) for r in records])

    probes, probe_attributes = load(probe_index)
    references, _ = load(reference_index)
    return dict(
        probes=probes,
        references=references,
        probe_owner=np.asarray(probe_owner),
        reference_owner=np.asarray(reference_owner),
        identities=identities[np.asarray(probe_index)],
        attributes=probe_attributes,
    )


def face_keys(count: int, model: Model) -> dict:
    """One random key per face, a second password (diversity), a wrong password (random,
    never the right one) and the right password with one key attribute flipped."""
    rng = jax.random.key(KEY_SEED)
    rng_p, rng_p2, rng_a, rng_w, rng_f = jax.random.split(rng, 5)
    bits = model.password_bits
    password = keys.random_passwords(rng_p, count, bits)
    attributes = keys.random_attributes(rng_a, count, len(model.key_attributes))
    return jax.device_get(
        dict(
            password=password,
            password2=keys.random_passwords(rng_p2, count, bits),
            attributes=attributes,
            wrong_password=keys.wrong_passwords(rng_w, password),
            wrong_attributes=keys.flip_bits(rng_f, attributes, 1),
        )
    )


def sdn_outputs(model: inference.Model, images: np.ndarray, key: dict, batch_size: int) -> dict:
    """All outputs for all faces, in fixed-size batches (the last one padded)."""
    outputs_fn = compiler.jit(outputs_lib.make_outputs_fn(model.networks))
    run = lambda x, *values: outputs_fn(model.params, x, dict(zip(key, values)))
    return map_in_batches(run, [images, *key.values()], batch_size, pad="edge")


def edge_map_linkage(anonymized: np.ndarray, originals: np.ndarray) -> float:
    """Top-1 rate at which an anonymized face's edge map is closest to its own original's
    among all originals: the naive attack that caught geometry-keeping "anonymizations"
    (a recoloured copy keeps every edge). Chance is 1 / N."""

    def edges(x):
        gray = to_unit(x).mean(-1)
        gy, gx = np.gradient(gray, axis=(1, 2))
        e = np.hypot(gx, gy).reshape(len(x), -1)
        e = e - e.mean(1, keepdims=True)
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)

    scores = edges(anonymized) @ edges(originals).T
    return float(np.mean(np.argmax(scores, 1) == np.arange(len(anonymized))))


def _distribution(values: np.ndarray, worst: str) -> dict:
    """Mean and worst decile (10th percentile if higher is better, else 90th)."""
    q = 10 if worst == "low" else 90
    return {"mean": float(np.mean(values)), "worst_decile": float(np.percentile(values, q))}


def one_photo_match_rate(attacker, embeddings, reference_embeddings, data) -> float:
    """The share of (face, reference photo of its person) pairs that verify at the
    attacker's one-photo threshold: the attacker that holds a single photo, averaged over
    which photo it holds."""
    scores = metrics.cosine_similarity_matrix(embeddings, reference_embeddings)
    own = data["probe_owner"][:, None] == data["reference_owner"][None, :]
    return float(np.mean(scores[own] > attacker.one_photo_threshold))


def false_accept_rates(attacker, embeddings, reference_embeddings, galleries, data) -> dict:
    """On this split's original probes: the share of (probe, another person's gallery)
    and (probe, another person's photo) pairs that pass, against the 1% calibrated on
    held-out train people."""
    scores = metrics.cosine_similarity_matrix(embeddings, galleries)
    other = data["probe_owner"][:, None] != np.arange(len(galleries))[None, :]
    rates = {"false_accept_rate": float(np.mean(scores[other] > attacker.threshold))}
    if attacker.one_photo_threshold is not None:
        scores = metrics.cosine_similarity_matrix(embeddings, reference_embeddings)
        other = data["probe_owner"][:, None] != data["reference_owner"][None, :]
        rates["false_accept_rate_one_photo"] = float(
            np.mean(scores[other] > attacker.one_photo_threshold)
        )
    return rates


def evaluate_split(model, attacker, data: dict, settings: Settings) -> tuple:
    """Every report figure for one split's probes (see the module docstring), the
    probes' galleries and SDN's outputs (float, as sdn_outputs gives them)."""
    probes = data["probes"]
    key = face_keys(len(probes), settings.model)
    start = time.perf_counter()
    out = sdn_outputs(model, probes, key, settings.eval.batch_size)
    log.info("SDN outputs for %d faces in %.1f s", len(probes), time.perf_counter() - start)
    reference_embeddings = attacker.embed(data["references"])
    galleries = attacker.galleries(reference_embeddings, data["reference_owner"])
    probe_galleries = galleries[data["probe_owner"]]
    embeddings = {"original": attacker.embed(probes)}
    for name in (*OUTPUTS, "anonymized2"):
        embeddings[name] = attacker.embed(out[name])
    original_unit = to_unit(probes)
    section = {}
    for name in ("original", *OUTPUTS):
        similarity = metrics.cosine_similarity(embeddings[name], probe_galleries)
        matched = attacker.same_person(embeddings[name], probe_galleries)
        entry = {
            "identity_match_rate": float(np.mean(matched)),
            "identity_similarity": _distribution(
                similarity, "high" if not SHOULD_MATCH[name] else "low"
            ),
            # Faces that go the wrong way for the user: missed if they should match,
            # still linked to the person if they should not.
            "fraction_failing": float(np.mean(matched != SHOULD_MATCH[name])),
        }
        if attacker.one_photo_threshold is not None:
            entry["identity_match_rate_one_photo"] = one_photo_match_rate(
                attacker, embeddings[name], reference_embeddings, data
            )
        if name != "original":
            psnr = np.asarray(metrics.psnr(to_unit(out[name]), original_unit))
            ssim = np.asarray(metrics.ssim(to_unit(out[name]), original_unit))
            entry.update(
                psnr=float(np.mean(psnr)),
                ssim=float(np.mean(ssim)),
                psnr_distribution=_distribution(psnr, "low" if SHOULD_MATCH[name] else "high"),
                ssim_distribution=_distribution(ssim, "low"),
            )
            entry["_psnr"] = psnr
        section[name] = entry
    right = section["recovered"].pop("_psnr")
    for name in ("recovered_wrong_password", "recovered_wrong_attributes"):
        wrong = section[name].pop("_psnr")
        section[name]["fraction_within_4db_of_right_key"] = float(np.mean(wrong > right - 4.0))
    section["anonymized"].pop("_psnr")
    key_attributes = settings.model.key_attributes
    key_index = np.asarray(attr_lib.attribute_indices(key_attributes))
    requested = key["attributes"] > 0
    shown = attacker.attributes(out["anonymized"])[:, key_index] > 0.5
    on_originals = attacker.attributes(probes)[:, key_index] > 0.5
    section["anonymized"]["attribute_accuracy"] = float(np.mean(shown == requested))
    section["anonymized"]["attribute_accuracy_per_attribute"] = {
        name: float(v) for name, v in zip(key_attributes, np.mean(shown == requested, 0))
    }
    # The attribute classifier's own accuracy on the real photos: the ceiling for the above.
    section["original"]["attribute_accuracy"] = float(
        np.mean(on_originals == data["attributes"][:, key_index])
    )
    section["anonymized"]["fd_attacker"] = metrics.frechet_distance(
        embeddings["anonymized"], embeddings["original"]
    )
    section["anonymized"]["identity_distance_to_original"] = metrics.mean_identity_distance(
        embeddings["anonymized"], embeddings["original"]
    )
    # Two passwords, one face: how different are the two surrogate people?
    section["anonymized"]["diversity"] = metrics.mean_identity_distance(
        embeddings["anonymized"], embeddings["anonymized2"]
    )
    section["anonymized"]["edge_map_linkage"] = edge_map_linkage(out["anonymized"], probes)
    section["original"].update(
        false_accept_rates(attacker, embeddings["original"], reference_embeddings, galleries, data)
    )
    section["reference_photos_per_person"] = float(np.mean(np.bincount(data["reference_owner"])))
    section["num_images"] = len(probes)
    section["num_people"] = int(len(np.unique(data["identities"])))
    return section, probe_galleries, out


def spread_over_people(probe_owner: np.ndarray) -> np.ndarray:
    """An order of the probes (grouped by person, people in order) that takes every
    person's first probe, then every person's second, ...: the first n faces of it are as
    many different people as there can be (the security study takes the first n)."""
    owner = np.asarray(probe_owner)
    if np.any(np.diff(owner) < 0):
        raise ValueError("probe_owner must be grouped by person in increasing order")
    rank = np.arange(len(owner)) - np.searchsorted(owner, owner)
    return np.argsort(rank, kind="stable")


def evaluate_run(settings: Settings, workdir: str, *, step: int | None = None) -> dict:
    """Evaluates the run in `workdir` (its newest checkpoint, or `step`) and writes
    eval/report.json, eval/report.md and eval/security.png. Returns the report."""
    report_settings = settings.eval.report
    started = time.perf_counter()
    model = inference.load(workdir, step=step, batch_size=settings.eval.batch_size)
    log.info("Evaluating %s at step %d", workdir, model.step)
    attacker = attacker_lib.get_attacker(settings, workdir)
    from sdn_jax import data as data_lib  # noqa: PLC0415 (keeps `import` of this module light)

    data = settings.data
    data_dir = data.data_dir or data_lib.default_data_dir(workdir)

    def split_data(split, people):
        source = data_lib.load_source(
            data.name, split, data.image_size, data_dir, manual_dir=data.manual_dir,
            **data_lib.dataset_options(data),
        )  # fmt: skip
        return probes_and_references(
            source, people, report_settings.probes_per_person, attacker.settings.gallery_photos
        )

    split = settings.eval.split
    test = split_data(split, report_settings.max_people)
    log.info("Evaluation: %d %s faces of %d people", len(test["probes"]), split,
             len(np.unique(test["identities"])))  # fmt: skip
    section, test_galleries, test_outputs = evaluate_split(model, attacker, test, settings)
    report = {"step": int(model.step), "split": split, "num_images": section.pop("num_images")}
    report["dataset"] = {"name": data.name, "image_size": int(data.image_size)}
    report["num_people"] = section.pop("num_people")
    report.update(section)
    report["attacker"] = {
        "threshold": attacker.threshold,
        "one_photo_threshold": attacker.one_photo_threshold,
        "gallery_photos": int(attacker.settings.gallery_photos),
        "far": float(attacker.settings.far),
        **{k: v for k, v in attacker.info.items() if isinstance(v, (int, float, str))},
    }
    if report_settings.validation_people and split != "validation":
        validation = split_data("validation", report_settings.validation_people)
        report["validation"], *_ = evaluate_split(model, attacker, validation, settings)
    eval_dir = os.path.join(os.path.abspath(workdir), "eval")
    os.makedirs(eval_dir, exist_ok=True)
    spread = spread_over_people(test["probe_owner"])
    if report_settings.realism:
        from sdn_jax.evaluation import realism  # noqa: PLC0415 (only when asked for)

        judged = spread[: settings.eval.realism.num_faces]
        floor = spread_over_people(test["reference_owner"])[: len(judged)]
        report["realism"] = realism.evaluate_realism(
            settings, test["probes"][judged], test["references"][floor],
            test["probe_owner"][judged], {k: test_outputs[k][judged] for k in OUTPUTS},
            data_dir=data_dir, eval_dir=eval_dir,
        )  # fmt: skip
    if report_settings.security:
        from sdn_jax.evaluation import security, security_plot  # noqa: PLC0415 (only when asked for)

        report["security"] = security.security_study(
            model, attacker, test["probes"][spread], test_galleries[spread],
            settings.eval.security,
        )  # fmt: skip
        report["security"].update(
            _leak_study(model, attacker, test, test_galleries, spread, settings, workdir)
        )
        if jax.process_index() == 0:
            security_plot.plot_security(report["security"], os.path.join(eval_dir, SECURITY_PLOT))
    report["seconds"] = time.perf_counter() - started
    if jax.process_index() == 0:
        _write_atomically(os.path.join(eval_dir, REPORT_JSON), json.dumps(report, indent=2))
        _write_atomically(os.path.join(eval_dir, REPORT_MD), report_markdown(report))
    log.info("Evaluation took %.0f s; wrote %s", report["seconds"], eval_dir)
    return report


def _leak_study(model, attacker, test, galleries, spread, settings, workdir) -> dict:
    """leaks.py's attacks on the security study's faces, with the run's key predictor Q
    (restored from the evaluated step; inference never loads it)."""
    from sdn_jax.evaluation import leaks  # noqa: PLC0415 (only when asked for)

    config_path, step_dir = inference.find_checkpoint(workdir, step=model.step)
    run = inference.read_config(config_path)
    q_params, _ = inference.restore_networks(run, step_dir, ("key_predictor",))
    faces = spread[: settings.eval.security.num_faces]
    log.info("security: common-change, known-pair and key-predictor leaks on %d faces",
             len(faces))  # fmt: skip
    return leaks.leak_study(
        model, attacker, test["probes"][faces], galleries[faces],
        public_mean=test["references"].mean(axis=0), seed=settings.eval.security.seed,
        batch_size=settings.eval.security.batch_size,
        key_predictor=(model.networks["key_predictor"], q_params["key_predictor"]),
    )  # fmt: skip


def _write_atomically(path: str, text: str) -> None:
    """A reader never sees half a report."""
    with written_atomically(path, "w") as f:
        f.write(text + "\n")
