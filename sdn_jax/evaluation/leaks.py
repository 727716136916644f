"""What a folder of outputs, or a shipped checkpoint, gives away without the key.

Three attacks of issue 18, each scored against the anonymized faces themselves (PSNR to
the original; the attacker's identity match rate at its 1%-false-accept threshold):

* `common_change_attack`: an attacker holding a folder of anonymized faces, and no
  original, subtracts what they have in common: x_A - (mean of the folder's x_A - the
  mean real face). Three folders (FOLDERS): under one key shared by the folder (the file
  commands' album mode) that mean holds the key's change; with a fresh salt per image
  and no attribute chosen (the default) every face has its own password and its own
  attribute values, and the mean holds only what G does to every face; with a salt per
  image and one attribute choice for the folder (`--attributes` naming every key
  attribute) it also holds what that choice draws. `attribute_reading_attack` goes one
  step further on the default folder: it reads each face's attributes with the
  attacker's classifier and subtracts the change the read values predict.
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
from sdn_jax.data.attributes import attribute_indices
from sdn_jax.evaluation.copies import png_copies
from sdn_jax.evaluation.security import outcome, transform
from sdn_jax.evaluation.security_keys import right_keys
from sdn_jax.images import from_uint8, to_uint8
from sdn_jax.models.sdn import apply

KNOWN_PAIRS = (1, 4)
# The folders attacked: an album (one key), the default (a salt and attribute values per
# image), and a salt per image with one attribute choice for the folder.
FOLDERS = ("shared_key", "per_image_salt", "per_image_salt_chosen_attributes")


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


def _folders(model, originals, rng, batch_size) -> tuple[dict, np.ndarray]:
    """FOLDERS' anonymized faces, and the per-image attribute values of the default one."""
    n = len(originals)
    password, attributes = right_keys(rng, n, model.model_settings)
    chosen = np.repeat(attributes[:1], n, 0)  # one choice for the whole folder
    folder_keys = {
        "shared_key": (np.repeat(password[:1], n, 0), chosen),
        "per_image_salt": (password, attributes),
        "per_image_salt_chosen_attributes": (password, chosen),
    }
    folders = {kind: _stored_anonymized(model, originals, *folder_keys[kind], batch_size)
               for kind in FOLDERS}  # fmt: skip
    return folders, attributes


def common_change_attack(folders, originals, galleries, attacker, public_mean) -> dict:
    """`common_change_attack` per folder kind (module docstring)."""
    section = {}
    for kind, anonymized in folders.items():
        attacked = anonymized - (anonymized.mean(axis=0) - public_mean)
        section[kind] = _gain(attacked, anonymized, originals, galleries, attacker)
    return section


def attribute_reading_attack(anonymized, attributes, key_index, originals, galleries, attacker,
                             public_mean) -> dict:  # fmt: skip
    """The folder's change modelled as a per-pixel linear function of each face's key
    attributes as the attacker's classifier reads them (least squares over the folder),
    and subtracted: `common_change_attack` for a folder whose faces drew their own
    attribute values. `attributes`: the values they drew ({-0.5, +0.5}, (N, A)), only to
    report how many were read right; `key_index`: the key attributes' classifier outputs."""
    read = attacker.attributes(anonymized)[:, key_index] > 0.5
    design = np.concatenate([np.ones((len(read), 1)), read - 0.5], axis=1)
    flat = anonymized.reshape(len(anonymized), -1)
    fitted = design @ np.linalg.lstsq(design, flat, rcond=None)[0]
    attacked = anonymized - (fitted.reshape(anonymized.shape) - public_mean)
    gain = _gain(attacked, anonymized, originals, galleries, attacker)
    return {**gain, "attribute_read_accuracy": float(np.mean(read == (attributes > 0)))}


def known_pairs_attack(folders, originals, galleries, attacker) -> dict:
    """`known_pairs_attack`: the first k faces are known pairs; the rest are attacked
    (k < the number of faces), in each folder of `folders` (the shared key's figures at
    the top level, the others under their folder's name)."""
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
        section[str(k)] = {**rows.pop("shared_key"), **rows}
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
    folders, attributes = _folders(model, originals, rng_folders, batch_size)
    common = common_change_attack(folders, originals, galleries, attacker, public_mean)
    key_index = np.asarray(attribute_indices(model.model_settings.key_attributes))
    common["per_image_salt_attributes_read"] = attribute_reading_attack(
        folders["per_image_salt"], attributes, key_index, originals, galleries, attacker,
        public_mean,
    )  # fmt: skip
    section = {
        "common_change_attack": common,
        "known_pairs_attack": known_pairs_attack(folders, originals, galleries, attacker),
    }
    if key_predictor is not None:
        module, params = key_predictor
        section["key_predictor_bit_accuracy"] = key_predictor_bit_accuracy(
            module, params, model, originals, rng_q, batch_size
        )
    return section
