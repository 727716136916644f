"""What a folder of outputs, or a shipped checkpoint, gives away without the key.

Three attacks of issue 18, each scored against the anonymized faces themselves (PSNR to
the original; the attacker's identity match rate at its 1%-false-accept threshold):

* `common_change_attack`: an attacker holding a folder of anonymized faces, and no
  original, subtracts what they have in common: x_A - (mean of the folder's x_A - the
  mean real face). Under one key shared by the folder (the file commands' album mode)
  that mean holds the key's change; under a fresh salt per image (the default) every
  face has its own password, and the mean holds only what G does to every face with
  the folder's one attribute choice (one `--attributes` per `anonymize` call, as here).
* `known_pairs_attack`: an attacker who also knows k (original, anonymized) pairs of the
  folder subtracts their mean change from the other faces.
* `key_predictor_bit_accuracy`: training's key predictor Q reads password bits from
  (x, x_A); a checkpoint that ships it ships a key reader, and its accuracy on faces
  never seen in training says how much x_A leaks of the key (0.5: nothing).

Every attacked face is the anonymized image as an 8-bit PNG holds it, as in the security
study (security.py), whose per-face helpers these reuse.
"""

import jax
import numpy as np

from sdn_jax import compiler, keys
from sdn_jax.batching import map_in_batches
from sdn_jax.evaluation.copies import png_copies
from sdn_jax.evaluation.security import outcome, transform
from sdn_jax.evaluation.security_keys import right_keys
from sdn_jax.images import from_uint8, to_uint8
from sdn_jax.models.sdn import apply

KNOWN_PAIRS = (1, 4)


def _stored_anonymized(model, originals, password, attributes, batch_size) -> np.ndarray:
    anonymized = transform(model, originals, keys.ANONYMIZE, password, attributes, batch_size)
    return from_uint8(png_copies(to_uint8(anonymized)))


def _gain(attacked, anonymized, originals, galleries, attacker) -> dict:
    """How much closer to the original the attack brought the faces (dB; match rate)."""
    before = outcome(anonymized, originals, galleries, attacker)
    after = outcome(np.clip(attacked, -1.0, 1.0), originals, galleries, attacker)
    return {
        "psnr_gain_db": float(np.mean(after["psnr"]) - np.mean(before["psnr"])),
        "match_rate_gain": float(np.mean(after["linked"]) - np.mean(before["linked"])),
    }


def _folders(model, originals, rng, batch_size) -> dict:
    """The faces anonymized under one shared key, and under a password of their own each
    with the folder's one attribute choice (the file commands' default)."""
    n = len(originals)
    password, attributes = right_keys(rng, n, model.model_settings)
    attributes = np.repeat(attributes[:1], n, 0)
    shared = (np.repeat(password[:1], n, 0), attributes)
    return {
        "shared_key": _stored_anonymized(model, originals, *shared, batch_size),
        "per_image_salt": _stored_anonymized(model, originals, password, attributes, batch_size),
    }


def common_change_attack(folders, originals, galleries, attacker, public_mean) -> dict:
    """`common_change_attack` per folder kind (module docstring)."""
    section = {}
    for kind, anonymized in folders.items():
        attacked = anonymized - (anonymized.mean(axis=0) - public_mean)
        section[kind] = _gain(attacked, anonymized, originals, galleries, attacker)
    return section


def known_pairs_attack(folders, originals, galleries, attacker) -> dict:
    """`known_pairs_attack`: the first k faces are known pairs; the rest are attacked
    (k < the number of faces). The per-image-salt figures are the same attack on a folder
    without a shared key."""
    section = {}
    for k in (k for k in KNOWN_PAIRS if k < len(originals)):
        rows = {}
        for kind, anonymized in folders.items():
            change = (anonymized[:k] - originals[:k]).mean(axis=0)
            rest = slice(k, None)
            rows[kind] = _gain(
                anonymized[rest] - change, anonymized[rest], originals[rest], galleries[rest],
                attacker,
            )  # fmt: skip
        section[str(k)] = {**rows.pop("shared_key"), "per_image_salt": rows["per_image_salt"]}
    return section


@compiler.jit(static_argnums=0)
def _bit_logits(key_predictor, params, originals, anonymized):
    return apply(key_predictor, params, originals, anonymized)


def key_predictor_bit_accuracy(key_predictor, params, model, originals, rng, batch_size):
    """Q's share of password bits read right from (x, x_A), each face with its own key."""
    password, attributes = right_keys(rng, len(originals), model.model_settings)
    anonymized = _stored_anonymized(model, originals, password, attributes, batch_size)
    run = lambda x, x_a: _bit_logits(key_predictor, params, x, x_a)  # noqa: E731
    logits = map_in_batches(run, [originals, anonymized], batch_size)  # one compiled shape
    return float(np.mean((logits > 0) == (password > 0)))


def leak_study(model, attacker, originals, galleries, public_mean, *, seed, batch_size,
               key_predictor=None) -> dict:  # fmt: skip
    """The security section's `common_change_attack`, `known_pairs_attack` and (given Q
    as (module, params)) `key_predictor_bit_accuracy`, for faces `originals` ((N, S, S,
    3) in [-1, 1]) with the attacker's `galleries` of their people."""
    if len(originals) < 2:
        raise ValueError(f"the leak study needs at least 2 faces, got {len(originals)}")
    rng_folders, rng_q = jax.random.split(jax.random.key(seed))
    folders = _folders(model, originals, rng_folders, batch_size)
    section = {
        "common_change_attack": common_change_attack(
            folders, originals, galleries, attacker, public_mean
        ),
        "known_pairs_attack": known_pairs_attack(folders, originals, galleries, attacker),
    }
    if key_predictor is not None:
        module, params = key_predictor
        section["key_predictor_bit_accuracy"] = key_predictor_bit_accuracy(
            module, params, model, originals, rng_q, batch_size
        )
    return section
