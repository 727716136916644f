"""The independent attacker: a face recognizer and an attribute classifier.

SDN is judged by someone who did not build it. This module trains, once per workdir, a
recognizer that has never seen SDN (its own networks and seed, trained only on original
training-split photos) and caches it in `<workdir>/eval/attacker/`.

The attacker holds a gallery of `gallery_photos` photos of each person it looks for and
verifies a face against their mean embedding (one template per person, as face
recognition systems enrol people). Its threshold is fixed on originals: 1% of pairs of a
photo and the gallery of a *different* person pass. The people it calibrates on are held
out of its training (the last `calibration_people` identities of the train split), so
the threshold is set as it will be used: on faces it never learned. Test people are
never touched. A second threshold, `one_photo_threshold`, is the same for galleries of a
single photo (pairs of photos of different people), the weaker attacker of the paper.

    attacker = get_attacker(settings, workdir)
    e = attacker.embed(images)            # (N, D) unit embeddings; images in [-1, 1]
    g = attacker.galleries(attacker.embed(reference_photos), owner)  # (people, D)
    attacker.same_person(e, g[probe_owner])  # cosine > attacker.threshold, row by row
    attacker.attributes(images)           # (N, 40) probabilities, CelebA order

Settings: `eval.attacker` of the run's config (configs/default.py says why each value).
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import time

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

import sdn_jax.data
from sdn_jax import compiler
from sdn_jax import settings as settings_lib
from sdn_jax.atomic_files import written_atomically
from sdn_jax.batching import map_in_batches
from sdn_jax.data import attributes as attr_lib
from sdn_jax.evaluation import attacker_training, metrics
from sdn_jax.evaluation.recognizer_model import resize_to
from sdn_jax.images import from_uint8, round_to_uint8
from sdn_jax.settings import Settings

log = logging.getLogger("sdn_jax")

CACHE_FORMAT = 2  # 2: gallery verification (threshold per gallery_photos)
PARAMS_FILE = "params.msgpack"
INFO_FILE = "attacker.json"


def resolved_settings(settings: Settings) -> settings_lib.Attacker:
    """`eval.attacker` with its attribute network's input size filled in (None: the
    data's resolution)."""
    attacker = settings.eval.attacker
    if attacker.attribute_input_size is None:
        attacker = dataclasses.replace(attacker, attribute_input_size=settings.data.image_size)
    return attacker


class Attacker:
    """A trained attacker: jitted, batched embedding and attribute functions."""

    def __init__(
        self, settings, identity_params, attribute_params, threshold: float,
        one_photo_threshold: float | None = None, info=None,
    ):  # fmt: skip
        self.settings = settings
        self.identity_params = identity_params
        self.attribute_params = attribute_params
        self.threshold = float(threshold)  # for galleries of settings.gallery_photos photos
        self.one_photo_threshold = (
            None if one_photo_threshold is None else float(one_photo_threshold)
        )
        self.info = dict(info or {})
        identity = attacker_training.identity_network(settings)
        attribute = attacker_training.attribute_network(settings)
        self._embed = compiler.jit(lambda p, x: identity.apply(p, x)[0])
        self._attributes = compiler.jit(lambda p, x: jax.nn.sigmoid(attribute.apply(p, x)[1]))

    def _batched(self, fn, params, images) -> np.ndarray:
        """fn over fixed-size batches (the last one padded): one compile per image size."""
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"Expected (N, H, W, 3) images in [-1, 1], got {images.shape}")
        return map_in_batches(lambda x: fn(params, x), [images], self.settings.batch_size)

    def embed(self, images) -> np.ndarray:
        """(N, D) unit identity embeddings of float images in [-1, 1] (N, H, W, 3)."""
        return self._batched(self._embed, self.identity_params, images)

    def attributes(self, images) -> np.ndarray:
        """(N, 40) attribute probabilities (CelebA order) of float images in [-1, 1]."""
        return self._batched(self._attributes, self.attribute_params, images)

    def galleries(self, reference_embeddings, owners) -> np.ndarray:
        """(people, D) gallery templates: the unit mean embedding of each owner's photos
        (owners: (M,) ints 0..people-1)."""
        return metrics.gallery_templates(reference_embeddings, owners)

    def same_person(self, embeddings, galleries) -> np.ndarray:
        """Row-wise verification of faces against their galleries (cosine > threshold)."""
        return metrics.cosine_similarity(embeddings, galleries) > self.threshold

    def calibrate(self, images, identities) -> dict:
        """Fixes both thresholds at `settings.far` on these people's original photos (the
        first gallery_photos of each form its gallery); returns the rates there."""
        embeddings = self.embed(images)
        positives, negatives = metrics.gallery_verification_pairs(
            embeddings, identities, self.settings.gallery_photos
        )
        self.threshold = metrics.threshold_at_far(negatives, self.settings.far)
        rates = metrics.verification_rates(positives, negatives, self.threshold)
        one_positives, one_negatives = metrics.verification_pairs(embeddings, identities)
        self.one_photo_threshold = metrics.threshold_at_far(one_negatives, self.settings.far)
        one_rates = metrics.verification_rates(
            one_positives, one_negatives, self.one_photo_threshold
        )
        return {
            "calibration_tar": rates["tar"],
            "calibration_far": rates["far"],
            "calibration_tar_one_photo": one_rates["tar"],
            "calibration_far_one_photo": one_rates["far"],
        }


def cache_fingerprint(run: Settings, settings: settings_lib.Attacker) -> dict:
    """What a cached attacker must have been trained with to be used for `run`."""
    data = run.data
    recorded = dataclasses.asdict(settings)
    if recorded["max_train_images"] is None:  # caches from before the cap stay valid
        del recorded["max_train_images"]
    return {
        "format": CACHE_FORMAT,
        "settings": recorded,
        "data": {
            "name": data.name,
            "image_size": int(data.image_size),
            "options": sdn_jax.data.dataset_options(data),
        },
        "key_attributes": list(run.model.key_attributes),
    }


def downsample_uint8(images: np.ndarray, size: int, chunk: int = 2048) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N, size, size, 3), as the networks resize (resize_to)."""
    if images.shape[1:3] == (size, size):
        return images
    out = []
    for start in range(0, len(images), chunk):
        x = np.asarray(resize_to(jnp.asarray(images[start : start + chunk], jnp.float32), size))
        out.append(round_to_uint8(x))
    return np.concatenate(out)


def load_train_images(run: Settings, workdir: str, size: int, max_images: int | None = None):
    """The train split as uint8 images at `size` px (box-averaged), identities, attributes.

    With `max_images` below the split's size, whole people are kept, drawn by a hash of
    their identity (the same people every time), until that many photos: read and
    downsampled 1,024 records at a time, so that memory holds only what is kept (CelebA's
    train split at 128 px would be 8 GB).
    """
    data = run.data
    data_dir = data.data_dir or sdn_jax.data.default_data_dir(workdir)
    source = sdn_jax.data.load_source(
        data.name, "train", data.image_size, data_dir, manual_dir=data.manual_dir,
        prepare_if_missing=data.name == "synth_faces", **sdn_jax.data.dataset_options(data),
    )  # fmt: skip
    share = 1.0 if max_images is None else min(1.0, max_images / len(source))
    images, identities, attributes = [], [], []
    kept = 0
    for start in range(0, len(source), 1024):
        records = source.__getitems__(list(range(start, min(start + 1024, len(source)))))
        people = np.array([r["identity"] for r in records], np.int64)
        chosen = np.flatnonzero(_drawn_people(people, share))
        if max_images is not None:
            chosen = chosen[: max_images - kept]
        if not len(chosen):
            continue
        images.append(downsample_uint8(np.stack([records[i]["image"] for i in chosen]), size))
        identities.append(people[chosen])
        attributes.append(np.stack([records[i]["attributes"] for i in chosen]).astype(bool))
        kept += len(chosen)
        if max_images is not None and kept >= max_images:
            break
    if share < 1.0:
        message = "The attacker trains on %d of the %d train photos (eval.attacker.%s)"
        log.info(message, kept, len(source), "max_train_images: whole people, by identity")
    return {
        "images": np.concatenate(images),
        "identities": np.concatenate(identities),
        "attributes": np.concatenate(attributes),
    }


def _drawn_people(identities: np.ndarray, share: float) -> np.ndarray:
    """True for about `share` of the people, the same ones every time (a multiplicative hash
    of the identity: no person is split between kept and dropped)."""
    if share >= 1.0:
        return np.ones(len(identities), bool)
    hashed = (identities.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)
    return hashed < np.uint64(share * 2**32)


def split_calibration(identities: np.ndarray, calibration_people: int):
    """Masks (train, calibration): the last `calibration_people` identities calibrate."""
    people = np.unique(identities)
    if len(people) < calibration_people + 2 or calibration_people < 2:
        raise ValueError(
            f"The attacker holds out calibration_people ({calibration_people}, at least 2) of "
            f"the {len(people)} training people and needs 2 more to train on"
        )
    calibration = np.isin(identities, people[-calibration_people:])
    return ~calibration, calibration


def attribute_weights(key_attributes, settings) -> np.ndarray:
    """(40,) loss weights: `key_attribute_weight` for the key attributes, 1 for the rest."""
    weights = np.ones(len(attr_lib.CELEBA_ATTRIBUTES), np.float32)
    weights[attr_lib.attribute_indices(key_attributes)] = settings.key_attribute_weight
    return weights


def train_attacker(train: dict, settings, key_attributes=()) -> Attacker:
    """Trains both networks on `train` (load_train_images' dict) and fixes the threshold."""
    start, start_cpu = time.time(), attacker_training.cpu_seconds()
    key = jax.random.key(settings.seed)
    identity_key, attribute_key = jax.random.split(key)
    fit, calibration = split_calibration(train["identities"], settings.calibration_people)
    log.info(
        "Training the attacker: %d images of %d people (%d people held out for the threshold)",
        int(fit.sum()), len(np.unique(train["identities"][fit])), settings.calibration_people,
    )  # fmt: skip
    # Recoloured and learned from at the network's input size: cheaper than per step.
    identity_images = downsample_uint8(train["images"][fit], settings.input_size)
    # The two networks train at once, the attribute one in a second thread: one small
    # network's steps leave the cores partly idle, and JAX releases the GIL while XLA runs.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        attribute_future = pool.submit(
            attacker_training.train_attributes,
            train["images"], train["attributes"], settings, attribute_key,
            attribute_weights(key_attributes, settings),
        )  # fmt: skip
        identity_params = attacker_training.train_identity(
            identity_images, train["identities"][fit], settings, identity_key
        )
        identity_seconds = time.time() - start
        attribute_params = attribute_future.result()
    attacker = Attacker(settings, identity_params, attribute_params, threshold=1.0)
    calibration_images = from_uint8(train["images"][calibration])
    rates = attacker.calibrate(np.asarray(calibration_images), train["identities"][calibration])
    fit_people, fit_counts = np.unique(train["identities"][fit], return_counts=True)
    attacker.info = {
        **rates,
        "train_images": len(train["identities"]),
        "train_people": len(fit_people),
        # too few photos for a batch's photos_per_person: not learned from (attacker_training)
        "train_people_skipped": int((fit_counts < max(2, settings.photos_per_person)).sum()),
        "calibration_people": settings.calibration_people,
        "identity_train_seconds": round(identity_seconds, 1),
        "train_seconds": round(time.time() - start, 1),
        "train_cpu_seconds": round(attacker_training.cpu_seconds() - start_cpu, 1),
    }
    log.info(
        "Attacker threshold %.4f for galleries of %d photos (FAR %.4f on %d held-out people), "
        "TAR there %.3f (one photo: %.3f); trained in %.0f s (%.0f CPU-s)",
        attacker.threshold, settings.gallery_photos, rates["calibration_far"],
        settings.calibration_people, rates["calibration_tar"], rates["calibration_tar_one_photo"],
        attacker.info["train_seconds"], attacker.info["train_cpu_seconds"],
    )  # fmt: skip
    return attacker


def _save(attacker: Attacker, directory: str, fingerprint: dict) -> None:
    """params.msgpack, then attacker.json with its hash (written last, both atomically)."""
    os.makedirs(directory, exist_ok=True)
    payload = flax.serialization.to_bytes(
        {"identity": attacker.identity_params, "attributes": attacker.attribute_params}
    )
    info = dict(
        fingerprint,
        threshold=attacker.threshold,
        one_photo_threshold=attacker.one_photo_threshold,
        params_sha256=hashlib.sha256(payload).hexdigest(),
        info=attacker.info,
    )
    for name, content in ((PARAMS_FILE, payload), (INFO_FILE, json.dumps(info, indent=2))):
        mode = "wb" if isinstance(content, bytes) else "w"
        with written_atomically(os.path.join(directory, name), mode) as f:
            f.write(content)


class CorruptCacheError(ValueError):
    """The cached attacker cannot be used as it is (unreadable, altered or mismatched)."""


def _load(directory: str, settings, fingerprint: dict) -> Attacker:
    """The cached attacker; CorruptCacheError says why it cannot be used."""
    try:
        with open(os.path.join(directory, INFO_FILE)) as f:
            info = json.load(f)
        with open(os.path.join(directory, PARAMS_FILE), "rb") as f:
            payload = f.read()
    except (OSError, json.JSONDecodeError) as e:
        raise CorruptCacheError(f"unreadable ({e})") from e
    stale = {k for k in fingerprint if info.get(k) != json.loads(json.dumps(fingerprint[k]))}
    if stale:
        raise CorruptCacheError(f"trained with other {', '.join(sorted(stale))}")
    if hashlib.sha256(payload).hexdigest() != info.get("params_sha256"):
        raise CorruptCacheError(f"{PARAMS_FILE} does not match the hash in {INFO_FILE}")
    template = _abstract_params(settings)
    try:
        params = flax.serialization.from_bytes(template, payload)
    except Exception as e:  # msgpack raises several types on bad bytes
        raise CorruptCacheError(f"cannot decode {PARAMS_FILE} ({e})") from e
    shapes = jax.tree.map(lambda a: np.shape(a), params)
    if shapes != jax.tree.map(lambda a: a.shape, template):
        raise CorruptCacheError("parameter shapes differ from the settings' networks")
    return Attacker(
        settings, params["identity"], params["attributes"], info["threshold"],
        info.get("one_photo_threshold"), info.get("info"),
    )  # fmt: skip


def _abstract_params(settings) -> dict:
    def init():
        key = jax.random.key(0)
        identity = attacker_training.identity_network(settings)
        attribute = attacker_training.attribute_network(settings)
        shape = (1, settings.attribute_input_size, settings.attribute_input_size, 3)
        return {
            "identity": identity.init(key, jnp.zeros(shape)),
            "attributes": attribute.init(key, jnp.zeros(shape)),
        }

    return jax.eval_shape(init)


def get_attacker(run: Settings, workdir: str) -> Attacker:
    """The workdir's attacker: loaded from `<workdir>/eval/attacker/`, else trained there.

    A cache that is unreadable, altered, or made with other settings or data is not used:
    a warning says why, and the attacker is trained again and the cache replaced.
    """
    settings = resolved_settings(run)
    directory = os.path.join(workdir, "eval", "attacker")
    fingerprint = cache_fingerprint(run, settings)
    if os.path.exists(os.path.join(directory, INFO_FILE)):
        try:
            attacker = _load(directory, settings, fingerprint)
            log.info("Loaded the attacker from %s (threshold %.4f)", directory, attacker.threshold)
            return attacker
        except CorruptCacheError as e:
            log.warning("Not using the cached attacker in %s: %s. Training it again.", directory, e)
    train = load_train_images(
        run, workdir, settings.attribute_input_size, settings.max_train_images
    )
    attacker = train_attacker(train, settings, run.model.key_attributes)
    if jax.process_index() == 0:
        _save(attacker, directory, fingerprint)
    return attacker
