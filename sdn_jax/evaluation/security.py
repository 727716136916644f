"""Security studies: how recovery fails under wrong keys and survives lossy copies.

SDN's promise is a cliff: the right key gives the face back, a key one bit off gives
someone else. For each studied face (its own seeded random right key) this measures,
against the original photo and the attacker's recognizer (verification against its
gallery of the person, at the attacker's fixed 1%-false-accept threshold):

* `hamming`: recovery with passwords 0, 1, 2, 4, 8, 16 and K/2 bits away from the right
  one (exactly that many bits flipped per face), the right attribute choices;
* `attribute_flips`: the right password with one key attribute flipped, per attribute;
* `random_key_attack`: an attacker trying N random keys (password and attributes) per
  face and keeping the best recovery (highest PSNR; highest similarity);
* `recompression`: the right key on copies of the anonymized image: PNG (lossless),
  JPEG at each quality (Pillow's encoder, its default 4:2:0 chroma subsampling) and a
  2x down-up resize (Pillow, bicubic both ways);
* the key space in bits and the scrypt KDF's seconds per passphrase guess.

Every recovery starts from the right key's anonymized image as an 8-bit PNG holds it
(what a user stores). Per-face distributions, not only means: each row has PSNR's 10th
and 90th percentiles, its `psnr_worst_decile` (the 90th percentile for wrong keys: the
tenth of faces a wrong key brings closest back; the 10th for the right key: the tenth
recovered worst) and `fraction_failing`: for a wrong key the faces it gives back (within
4 dB (WITHIN_DB) of the right key's PSNR, or verified as the person); for the right key the
faces it loses (not verified, or more than 4 dB below the lossless recovery).

The keys come from security_keys, the lossy copies from copies (sdn_jax.evaluation).
"""

import dataclasses
import logging
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sdn_jax import compiler, keys
from sdn_jax import passphrase as passphrase_lib
from sdn_jax.batching import map_in_batches
from sdn_jax.evaluation import metrics
from sdn_jax.evaluation.copies import jpeg_copies, png_copies, resized_copies
from sdn_jax.evaluation.security_keys import (
    attribute_flipped,
    hamming_distances,
    password_at_distance,
    random_attack_keys,
    right_keys,
)
from sdn_jax.images import from_uint8, to_uint8, to_unit
from sdn_jax.models import sdn
from sdn_jax.models.sdn import apply
from sdn_jax.settings import Security

log = logging.getLogger("sdn_jax")  # main.py shows it at INFO; absl is at WARNING

GOAL_FRACTION = 0.95  # one wrong bit must fail verification for at least this share
WITHIN_DB = 4.0  # a wrong key this close to the right key's PSNR gave the face back
MAX_PSNR = 100.0  # PSNR of identical images is infinite; JSON needs a number
YEAR = 365.25 * 24 * 3600  # seconds


# ------------------------------------------------------------------- SDN passes


@compiler.jit(static_argnums=(0, 1))
def _generate(encoder, decoder, params, images, direction, password, attributes):
    """G(E(x)) with a key of its own per row."""
    condition = keys.condition_vector(direction, password, attributes)
    return sdn.generate({"encoder": encoder, "decoder": decoder}, params, images, condition)


@compiler.jit(static_argnums=(0, 1))
def _recover_one_many_keys(encoder, decoder, params, image, password, attributes):
    """One anonymized image (1, S, S, 3) recovered under every row's key; E runs once."""
    latent = apply(encoder, params["encoder"], image)
    n = password.shape[0]
    latent = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape[1:])), latent)
    condition = keys.condition_vector(keys.RECOVER, password, attributes)
    inputs = jnp.broadcast_to(image, (n, *image.shape[1:]))
    return apply(decoder, params["decoder"], latent, condition, inputs)


def transform(model, images, direction, password, attributes, batch_size: int) -> np.ndarray:
    """Anonymize (keys.ANONYMIZE) or recover (keys.RECOVER) each row under its own key."""
    networks, direction = model.networks, np.float32(direction)
    run = lambda x, p, a: _generate(
        networks["encoder"], networks["decoder"], model.params, x, direction, p, a
    )
    arrays = [np.asarray(x, np.float32) for x in (images, password, attributes)]
    return map_in_batches(run, arrays, batch_size)  # one compiled shape


def recover_with_many_keys(model, image, password, attributes, keys_per_call: int):
    """`image` (S, S, 3) recovered under each of the keys' rows: (num_keys, S, S, 3)."""
    networks, image = model.networks, np.asarray(image, np.float32)[None]
    run = lambda p, a: _recover_one_many_keys(
        networks["encoder"], networks["decoder"], model.params, image, p, a
    )
    arrays = [np.asarray(x, np.float32) for x in (password, attributes)]
    return map_in_batches(run, arrays, keys_per_call)


# ---------------------------------------------------------------------- figures


def _psnr(images, originals) -> np.ndarray:
    """Per-image PSNR (dB) of [-1, 1] images on the [0, 1] scale, capped at MAX_PSNR."""
    value = metrics.psnr(to_unit(images), to_unit(originals))
    return np.minimum(np.asarray(value, np.float64), MAX_PSNR)


def outcome(images, originals, galleries, attacker) -> dict:
    """Per-face PSNR, attacker similarity to the person's gallery, and verification."""
    embeddings = attacker.embed(images)
    return {
        "psnr": _psnr(images, originals),
        "similarity": metrics.cosine_similarity(embeddings, galleries),
        "linked": np.asarray(attacker.same_person(embeddings, galleries), bool),
    }


def figures(result: dict, right: dict, *, right_key: bool) -> dict:
    """Means, per-face tails and failure shares of one row (see the module docstring)."""
    psnr, similarity, linked = result["psnr"], result["similarity"], result["linked"]
    p10, p90 = np.percentile(psnr, [10, 90])
    s10, s90 = np.percentile(similarity, [10, 90])
    within = psnr >= right["psnr"] - WITHIN_DB
    failing = ~(linked & within) if right_key else linked | within
    return {
        "psnr_mean": float(np.mean(psnr)),
        "psnr_p10": float(p10),
        "psnr_p90": float(p90),
        "psnr_worst_decile": float(p10 if right_key else p90),
        "identity_match_rate": float(np.mean(linked)),
        "similarity_mean": float(np.mean(similarity)),
        "similarity_worst_decile": float(s10 if right_key else s90),
        "fraction_within_4db_of_right_key": float(np.mean(within)),
        "fraction_failing": float(np.mean(failing)),
    }


# ----------------------------------------------------------------------- studies


@dataclasses.dataclass
class _Faces:
    """The studied faces, what every study scores against, and where it reports."""

    model: object
    attacker: object
    originals: np.ndarray  # (n, S, S, 3) in [-1, 1]
    galleries: np.ndarray  # (n, D) the attacker's template of each face's person
    stored: np.ndarray  # the right key's anonymized images, as a PNG holds them
    password: np.ndarray
    attributes: np.ndarray
    batch_size: int
    say: Callable
    right: dict | None = None  # the right key's per-face outcome

    def recover(self, anonymized, password, attributes) -> dict:
        recovered = transform(
            self.model, anonymized, keys.RECOVER, password, attributes, self.batch_size
        )
        return outcome(recovered, self.originals, self.galleries, self.attacker)


def hamming_study(faces: _Faces, rng, distances) -> tuple[list, dict]:
    """Rows of `hamming` and each distance's per-face outcome."""
    rows, outcomes = [], {}
    for d in distances:
        wrong = password_at_distance(jax.random.fold_in(rng, d), faces.password, d)
        outcomes[d] = faces.recover(faces.stored, wrong, faces.attributes)
        row = {"bits": int(d), **figures(outcomes[d], faces.right, right_key=d == 0)}
        rows.append(row)
        faces.say("security: %d wrong password bits: PSNR %.2f dB, match rate %.3f",
                  d, row["psnr_mean"], row["identity_match_rate"])  # fmt: skip
    return rows, outcomes


def attribute_study(faces: _Faces) -> dict:
    """`attribute_flips`: the right password, one key attribute flipped."""
    rows = {}
    for index, name in enumerate(faces.model.key_attributes):
        flipped = attribute_flipped(faces.attributes, index)
        result = faces.recover(faces.stored, faces.password, flipped)
        rows[name] = figures(result, faces.right, right_key=False)
    faces.say("security: one key attribute flipped: match rates %s",
              {n: round(r["identity_match_rate"], 3) for n, r in rows.items()})  # fmt: skip
    return rows


def recompression_study(faces: _Faces, settings) -> dict:
    """`recompression`: the right key on lossless and lossy copies of the anonymized image."""
    anonymized = to_uint8(faces.stored)
    copies = {"png": png_copies(anonymized)}
    for quality in settings.jpeg_qualities:
        copies[f"jpeg{int(quality)}"] = jpeg_copies(anonymized, quality)
    factor = int(settings.resize_factor)
    copies[f"resize{factor}x"] = resized_copies(anonymized, factor)
    rows = {}
    for name, copy in copies.items():
        result = faces.recover(from_uint8(copy), faces.password, faces.attributes)
        rows[name] = figures(result, faces.right, right_key=True)
        rows[name]["psnr_drop_mean"] = float(np.mean(faces.right["psnr"] - result["psnr"]))
    faces.say("security: recovery from copies, PSNR %s",
              {n: round(r["psnr_mean"], 2) for n, r in rows.items()})  # fmt: skip
    return rows


def random_key_attack(faces: _Faces, settings, rng) -> dict:
    """`random_key_attack`: the best of N random keys per face, by PSNR and by similarity."""
    count = min(int(settings.random_attack_faces), len(faces.stored))
    n = int(settings.num_random_keys)
    num_attributes = faces.attributes.shape[-1]
    best_psnr, best_similarity, linked, keys_linked = (np.zeros(count) for _ in range(4))
    start = time.perf_counter()
    for i in range(count):
        password, attributes = random_attack_keys(
            jax.random.fold_in(rng, i), faces.password[i], n, num_attributes
        )
        recovered = recover_with_many_keys(
            faces.model, faces.stored[i], password, attributes, settings.keys_per_call
        )
        original = np.broadcast_to(faces.originals[i], recovered.shape)
        result = outcome(recovered, original, faces.galleries[[i] * n], faces.attacker)
        best_psnr[i], best_similarity[i] = result["psnr"].max(), result["similarity"].max()
        linked[i], keys_linked[i] = result["linked"].any(), result["linked"].mean()
        if i == 0 or (i + 1) % max(1, count // 4) == 0:
            elapsed = time.perf_counter() - start
            faces.say("security: best of %d random keys, face %d/%d (%.0f s, about %.0f s left)",
                      n, i + 1, count, elapsed, elapsed / (i + 1) * (count - i - 1))  # fmt: skip
    seconds = time.perf_counter() - start
    right_psnr, right_similarity = faces.right["psnr"][:count], faces.right["similarity"][:count]
    within = best_psnr >= right_psnr - WITHIN_DB
    return {
        "num_keys": n,
        "num_faces": count,
        "best_psnr_mean": float(best_psnr.mean()),
        "best_psnr_worst_decile": float(np.percentile(best_psnr, 90)),
        "right_key_psnr_mean": float(right_psnr.mean()),
        "best_similarity_mean": float(best_similarity.mean()),
        "best_similarity_worst_decile": float(np.percentile(best_similarity, 90)),
        "right_key_similarity_mean": float(right_similarity.mean()),
        "fraction_faces_linked": float(linked.mean()),
        "fraction_faces_within_4db_of_right_key": float(within.mean()),
        "fraction_failing": float(np.mean((linked > 0) | within)),
        "fraction_keys_linked": float(keys_linked.mean()),
        "seconds_per_key": seconds / (count * n),
    }


def _check_inputs(model, images: np.ndarray, galleries: np.ndarray) -> None:
    size = model.image_size
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(f"images must be (N, {size}, {size}, 3), got {images.shape}")
    if images.size and not (images.min() >= -1.0 and images.max() <= 1.0):
        raise ValueError("images must be in [-1, 1]")
    if galleries.ndim != 2 or len(images) != len(galleries) or not len(images):
        raise ValueError(
            f"need at least one image and one gallery embedding (N, D) per image, got "
            f"{len(images)} images and galleries of shape {galleries.shape}"
        )


def _prepare(model, attacker, images, galleries, settings, rng, say) -> _Faces:
    """The right keys, the anonymized faces as stored, and the right key's recovery."""
    n = len(images)
    password, attributes = right_keys(rng, n, model.model_settings)
    anonymized = transform(model, images, keys.ANONYMIZE, password, attributes, settings.batch_size)
    faces = _Faces(
        model=model, attacker=attacker, originals=images, galleries=galleries,
        stored=from_uint8(png_copies(to_uint8(anonymized))), password=password,
        attributes=attributes, batch_size=int(settings.batch_size), say=say,
    )  # fmt: skip
    faces.right = faces.recover(faces.stored, password, attributes)
    return faces


def security_study(model, attacker, images, galleries, settings: Security, *, progress=True):
    """report.json's `security` section (module docstring) for `images` ((N, S, S, 3) in
    [-1, 1], people never seen in training) and `galleries` ((N, D): the attacker's
    template of each image's person, from other photos: Attacker.galleries).

    `settings`: the run's `eval.security` (configs/default.py).
    """
    images, galleries = np.asarray(images, np.float32), np.asarray(galleries, np.float32)
    _check_inputs(model, images, galleries)
    started, say = time.perf_counter(), log.info if progress else lambda *args: None
    n = min(int(settings.num_faces), len(images))
    k, num_attributes = model.model_settings.password_bits, len(model.key_attributes)
    say("security: %d faces, each with its own key (%d password bits, %d key attributes)",
        n, k, num_attributes)  # fmt: skip
    rng_right, rng_hamming, rng_attack = jax.random.split(jax.random.key(settings.seed), 3)
    faces = _prepare(model, attacker, images[:n], galleries[:n], settings, rng_right, say)
    anonymized = outcome(faces.stored, faces.originals, faces.galleries, attacker)
    hamming, per_distance = hamming_study(faces, rng_hamming, hamming_distances(settings, k))
    fraction = float(np.mean(~per_distance[1]["linked"]))
    section = {
        "num_faces": n,
        "seed": int(settings.seed),
        "key_space_bits": k + num_attributes,
        "password_bits": k,
        "attribute_bits": num_attributes,
        "kdf_seconds_per_guess": passphrase_lib.kdf_seconds_per_guess(settings.kdf_repeats),
        "right_key": figures(faces.right, faces.right, right_key=True),
        "anonymized": figures(anonymized, faces.right, right_key=False),
        "hamming": hamming,
        "attribute_flips": attribute_study(faces),
        "recompression": recompression_study(faces, settings),
        "random_key_attack": random_key_attack(faces, settings, rng_attack),
        "goal_one_bit_fails_verification": {
            "fraction": fraction,
            "target": GOAL_FRACTION,
            "met": bool(fraction >= GOAL_FRACTION),
        },
    }
    # Raw key bits need no KDF: a brute force over them pays one SDN pass (and one
    # recognizer pass) per key; expected over half the key space, on this machine.
    seconds_per_key = section["random_key_attack"]["seconds_per_key"]
    section["raw_key_search_years"] = 2.0 ** (k + num_attributes - 1) * seconds_per_key / YEAR
    section["seconds"] = time.perf_counter() - started
    say("security: one wrong bit fails verification for %.3f of faces (goal %.2f: %s); %.0f s",
        fraction, GOAL_FRACTION, "met" if fraction >= GOAL_FRACTION else "NOT met",
        section["seconds"])  # fmt: skip
    return section
