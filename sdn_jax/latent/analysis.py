"""The latent analysis: directions per method, edits by degrees, what the attacker sees.

For each method (probe, SeFa, PCA) and attribute, a unit direction in one latent space
(spaces.py; "embedding" by default, docs/experiments.md "Latent space") and a degree
(directions.degree_size on the fit photos' latents). Test faces are anonymized with a
random key each, and edited by every degree; the independent attacker judges the edited
faces against the unedited one (degree 0): the attribute's probability (does it rise with
the degree, face by face?), the other key attributes (entanglement), the identity (is it
still the same surrogate person?), SSIM and PSNR. For the synthetic faces the renderer
also gives ground truth: photos rendered with the attribute forced off and on; the face
editor's +2 edit of the "off" photo should come closer (PSNR) to the "on" one.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from sdn_jax import keys
from sdn_jax.batching import map_in_batches
from sdn_jax.data import attributes as attr_lib
from sdn_jax.evaluation import metrics
from sdn_jax.images import to_unit
from sdn_jax.latent import directions as dirs
from sdn_jax.latent import editing, spaces

METHODS = ("probe", "sefa", "pca")
DEFAULT_ATTRIBUTES = ("Smiling", "Mouth_Slightly_Open", "Mustache")
DEFAULT_DEGREES = (-2.0, -1.0, 0.0, 1.0, 2.0)
MONOTONE_TOLERANCE = 0.01  # a step may lower the probability this much (classifier noise)
MAX_DB = 100.0  # PSNR of an unchanged face (degree 0) is reported as this
GALLERY_COMPONENTS = 8  # SeFa / PCA components shown in the component gallery
PROJECTION_PEOPLE = 10  # people coloured in the 2-D projection (those with most photos)


@dataclasses.dataclass(frozen=True)
class Options:
    attributes: tuple[str, ...] = DEFAULT_ATTRIBUTES
    degrees: tuple[float, ...] = DEFAULT_DEGREES
    methods: tuple[str, ...] = METHODS
    space: str = "embedding"
    num_faces: int = 128  # test faces edited
    fit_photos: int = 2048  # train photos whose latents give the directions and degrees
    components: int = 16  # SeFa / PCA components considered when matching
    effect_faces: int = 16  # faces on which components are matched by their effect
    ridge: float = 1.0  # the probe's ridge (relative to the mean variance)
    # Project the other attributes' directions out of each (InterFaceGAN's conditional
    # edit): on the default run the other attributes moved by at most 0.14 at +-1 degree
    # instead of 0.17, for the same monotonicity (docs/experiments.md, "Latent space").
    conditional: bool = True
    ground_truth_faces: int = 64
    batch_size: int = 64


def degree_key(degree: float) -> str:
    return f"{degree:g}"


def probe_labels(fit: dict, names, key_attributes, space: str) -> np.ndarray:
    """(N, A) labels: in the key and embedding spaces a key attribute's label is the key's
    choice (what G was asked to draw), otherwise the photo's own label."""
    columns = []
    for name in names:
        if space in ("key", "embedding") and name in key_attributes:
            columns.append(fit["choices"][:, key_attributes.index(name)] > 0)
        else:
            columns.append(fit["labels"][:, attr_lib.attribute_indices([name])[0]])
    return np.stack(columns, axis=1)


class Editor:
    """Jitted, batched edits of one model in one space."""

    def __init__(self, model, space: str, batch_size: int):
        self.model, self.space, self.batch_size = model, space, batch_size
        networks, params = model.networks, model.params
        self._decode = jax.jit(
            lambda x, c, d: spaces.decode_edited(networks, params, x, c, space, d)
        )
        conditions = editing.editor_conditions(model.model_settings)
        self._photo = jax.jit(
            lambda x, d: editing.edit_photos(networks, params, x, conditions, space, d)
        )

    def anonymized(self, images, conditions, delta) -> np.ndarray:
        """Anonymized faces with `delta` (N, D) added to the latent."""
        return map_in_batches(self._decode, [images, conditions, delta], self.batch_size)

    def photos(self, images, delta) -> np.ndarray:
        """The face editor's output (editing.edit_photos)."""
        return map_in_batches(self._photo, [images, delta], self.batch_size)


def find_directions(method, fit, labels, weights, options, effect):
    """(A, D) unit directions for the attributes by `method`, how each was matched, and the
    (K, D) components they were chosen from (None for the probe).
    `effect(components) -> (K, A)` is the attacker's mean change per component at +1 degree."""
    latents = jnp.asarray(fit)
    probes = np.asarray(dirs.probe_directions(latents, jnp.asarray(labels), options.ridge))
    if method == "probe":
        return probes, {}, None
    k = min(options.components, latents.shape[1])
    if method == "sefa":
        components = np.asarray(dirs.sefa_directions(jnp.asarray(weights), k))
    else:
        components = np.asarray(dirs.pca_directions(latents, k))
    cosine = probes @ components.T  # (A, K)
    change = effect(components)  # (K, A)
    chosen, matched = [], {}
    for a in range(len(probes)):
        best = int(np.argmax(np.abs(change[:, a])))
        sign = np.sign(change[best, a]) or 1.0
        chosen.append(sign * components[best])
        matched[a] = {
            "component": best,
            "effect_at_1_degree": float(abs(change[best, a])),
            "cosine_with_probe": float(sign * cosine[a, best]),
            "best_cosine_component": int(np.argmax(np.abs(cosine[a]))),
        }
    return np.stack(chosen), matched, components


def component_gallery(editor, face, condition, fit, components, degrees) -> np.ndarray:
    """(K, degrees, S, S, 3): one anonymized face moved along each SeFa / PCA component by
    each degree (the component gallery: what each axis does, matched or not)."""
    rows = []
    for c in components:
        size = float(dirs.degree_size(jnp.asarray(fit), jnp.asarray(c)))
        delta = np.stack([d * size * c for d in degrees]).astype(np.float32)
        count = len(degrees)
        rows.append(editor.anonymized(np.repeat(face[None], count, 0),
                                      np.repeat(condition[None], count, 0), delta))  # fmt: skip
    return np.stack(rows)


def projection(fit: dict, space: str, labels: np.ndarray, names) -> dict:
    """The fit photos' latents on their two principal axes, with what to colour them by:
    each attribute's label (as the probe reads it) and the people with most photos."""
    latents = jnp.asarray(fit[space])
    axes = np.asarray(dirs.pca_directions(latents, 2))
    points = np.asarray(latents - latents.mean(axis=0)) @ axes.T
    people, counts = np.unique(fit["identities"], return_counts=True)
    shown = people[np.argsort(-counts, kind="stable")[:PROJECTION_PEOPLE]]
    return {"points": points, "labels": dict(zip(names, labels.T)),
            "identities": fit["identities"], "people": shown}  # fmt: skip


def measure(editor, attacker, faces, conditions, fit, direction, degrees, index, others):
    """Per-degree attacker figures of one direction: probabilities (N, len(degrees)),
    identity similarity to the unedited face, other attributes' probabilities, SSIM, PSNR,
    and the edited faces of the first few rows (for the strips)."""
    size = float(dirs.degree_size(jnp.asarray(fit), jnp.asarray(direction)))
    zero = np.zeros((len(faces), len(direction)), np.float32)
    base = editor.anonymized(faces, conditions, zero)
    base_embedding, base_unit = attacker.embed(base), to_unit(base)
    out = {"size": size, "probability": [], "similarity": [], "others": [], "ssim": [],
           "psnr": [], "strip": []}  # fmt: skip
    for degree in degrees:
        delta = np.asarray(dirs.edit(jnp.asarray(zero), jnp.asarray(direction), degree, size))
        edited = base if degree == 0 else editor.anonymized(faces, conditions, delta)
        probabilities = attacker.attributes(edited)
        out["probability"].append(probabilities[:, index])
        out["others"].append(probabilities[:, others])
        out["similarity"].append(metrics.cosine_similarity(attacker.embed(edited), base_embedding))
        out["ssim"].append(np.asarray(metrics.ssim(to_unit(edited), base_unit)))
        out["psnr"].append(np.asarray(metrics.psnr(to_unit(edited), base_unit, max_db=MAX_DB)))
        out["strip"].append(edited[:6])
    return {k: (v if k == "size" else np.stack(v, axis=1)) for k, v in out.items()}


def summarize(m: dict, degrees, threshold: float) -> dict:
    """The report's figures of one (method, attribute) from measure()'s arrays."""
    degrees = list(degrees)
    p = m["probability"]
    order = np.argsort(degrees)
    steps = np.diff(p[:, order], axis=1)
    rising = np.all(steps > -MONOTONE_TOLERANCE, axis=1) & (p[:, order[-1]] > p[:, order[0]])
    zero = degrees.index(0.0)
    change = np.abs(p - p[:, zero : zero + 1]).mean(axis=0)

    def ratio(two, one):
        if two not in degrees or one not in degrees:
            return None
        return float(change[degrees.index(two)] / max(change[degrees.index(one)], 1e-9))

    at_one = [degrees.index(d) for d in (-1.0, 1.0) if d in degrees]
    kept = np.all(m["similarity"][:, at_one] > threshold, axis=1) if at_one else None
    shift = np.abs(m["others"].mean(axis=0) - m["others"][:, zero].mean(axis=0))  # (deg, others)
    return {
        "monotonic_fraction": float(np.mean(rising)),
        "monotonic_fraction_strict": float(np.mean(np.all(steps > 0, axis=1))),
        "ratio_2_to_1": {"plus": ratio(2.0, 1.0), "minus": ratio(-2.0, -1.0)},
        "identity_kept_fraction": None if kept is None else float(np.mean(kept)),
        "max_other_attribute_shift": float(shift[at_one].max()) if at_one and shift.size else 0.0,
        "degree_size": m["size"],
        "degrees": {
            degree_key(d): {
                "probability": float(p[:, i].mean()),
                "probability_change": float(np.mean(p[:, i] - p[:, zero])),
                "identity_similarity": float(m["similarity"][:, i].mean()),
                "ssim": float(m["ssim"][:, i].mean()),
                "psnr": float(m["psnr"][:, i].mean()),
            }
            for i, d in enumerate(degrees)
        },
    }


def ground_truth(editor, data, directions_by_name, fit, options, progress) -> dict:
    """Renderer counterfactuals (synthetic faces): PSNR of the face editor's +2 edit of
    the attribute-off photo to the attribute-on render, against the unedited photo's."""
    from sdn_jax.data.synth import render, world  # noqa: PLC0415 (synthetic data only)

    size = data.image_size
    people = data.num_train_identities + np.arange(min(options.ground_truth_faces,
                                                       data.num_test_identities))  # fmt: skip
    photos = np.zeros_like(people)
    result = {}
    for name, direction in directions_by_name.items():
        if name not in world.PHOTO_ATTRIBUTES:
            continue
        progress(f"ground truth {name}")
        off, _ = render.render_faces(people, photos, size, data.dataset_seed,
                                     overrides={name: False})  # fmt: skip
        on, _ = render.render_faces(people, photos, size, data.dataset_seed,
                                    overrides={name: True})  # fmt: skip
        off, on = to_unit_float(off), to_unit_float(on)
        step = float(dirs.degree_size(jnp.asarray(fit), jnp.asarray(direction)))
        delta = np.broadcast_to(2.0 * step * direction, (len(people), len(direction)))
        edited = editor.photos(off * 2.0 - 1.0, np.asarray(delta, np.float32))
        before = np.asarray(metrics.psnr(off, on, max_db=MAX_DB))
        after = np.asarray(metrics.psnr(to_unit(edited), on, max_db=MAX_DB))
        result[name] = {
            "num_faces": int(len(people)),
            "psnr_before": float(before.mean()),
            "psnr_after": float(after.mean()),
            "fraction_closer": float(np.mean(after > before)),
        }
    return result


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(pixels, np.float32) / 255.0


def analyze(model, attacker, fit: dict, faces: np.ndarray, options: Options, data=None,
            progress=lambda message: None) -> tuple[dict, dict]:  # fmt: skip
    """(report, pictures): the report's JSON (INTERFACES.md "Latent analysis") and the
    arrays the pictures are drawn from. fit: cache.split_latents of the fit photos; faces:
    (N, S, S, 3) test photos in [-1, 1]; data: the run's Data settings (ground truth when
    they are synthetic faces)."""
    started = time.perf_counter()
    key_attributes = list(model.key_attributes)
    names = list(options.attributes)
    space = options.space
    editor = Editor(model, space, options.batch_size)
    rng_p, rng_a = jax.random.split(jax.random.key(1357))
    password = keys.random_passwords(rng_p, len(faces), model.model_settings.password_bits)
    choices = keys.random_attributes(rng_a, len(faces), len(key_attributes))
    conditions = np.asarray(keys.condition_vector(keys.ANONYMIZE, password, choices))
    labels = probe_labels(fit, names, key_attributes, space)
    weights = spaces.reading_weights(model.networks, model.params, space)
    indices = attr_lib.attribute_indices(names)
    key_indices = attr_lib.attribute_indices(key_attributes)
    few = slice(0, options.effect_faces)

    def effect(components):
        zero = np.zeros((len(faces[few]), components.shape[1]), np.float32)
        base = attacker.attributes(editor.anonymized(faces[few], conditions[few], zero))[:, indices]
        changes = []
        for c in components:
            size = float(dirs.degree_size(jnp.asarray(fit[space]), jnp.asarray(c)))
            moved = editor.anonymized(faces[few], conditions[few], zero + size * c)
            changes.append((attacker.attributes(moved)[:, indices] - base).mean(axis=0))
        return np.stack(changes)

    report = {"step": int(model.step or 0), "num_faces": int(len(faces)), "space": space,
              "conditional": options.conditional, "methods": {}, "matching": {}}  # fmt: skip
    pictures = {"faces": faces[:6], "methods": {}, "components": {},
                "projection": projection(fit, space, labels, names)}  # fmt: skip
    best_directions = {}
    for method in options.methods:
        progress(f"{method}: directions")
        found, matched, components = find_directions(
            method, fit[space], labels, weights, options, effect
        )
        if components is not None:
            pictures["components"][method] = component_gallery(
                editor, faces[0], conditions[0], fit[space], components[:GALLERY_COMPONENTS],
                options.degrees,
            )  # fmt: skip
        if options.conditional:
            found = np.stack([
                np.asarray(dirs.conditional_direction(jnp.asarray(found[a]),
                                                      jnp.asarray(np.delete(found, a, 0))))
                for a in range(len(found))
            ])  # fmt: skip
        report["methods"][method], pictures["methods"][method] = {}, {}
        if matched:
            report["matching"][method] = {names[a]: v for a, v in matched.items()}
        for a, name in enumerate(names):
            progress(f"{method}: {name}")
            others = [i for i in key_indices if i != indices[a]]
            m = measure(editor, attacker, faces, conditions, fit[space], found[a],
                        options.degrees, indices[a], others)  # fmt: skip
            report["methods"][method][name] = summarize(m, options.degrees, attacker.threshold)
            pictures["methods"][method][name] = {"strip": m["strip"],
                                                 "probability": m["probability"]}  # fmt: skip
        best_directions[method] = dict(zip(names, found))
    report["best_method"] = max(
        options.methods,
        key=lambda k: np.mean([v["monotonic_fraction"] for v in report["methods"][k].values()]),
    )
    if data is not None and data.name == "synth_faces":
        report["ground_truth"] = ground_truth(
            editor, data, best_directions[report["best_method"]], fit[space], options, progress
        )
    report["degrees"] = [float(d) for d in options.degrees]
    report["attributes"] = names
    report["seconds"] = time.perf_counter() - started
    return report, pictures
