"""The realism judge: do SDN's outputs look like real photos? (report.json `realism`)

Proxies such as SSIM let garbled faces pass (issue 16), so the outputs are judged
against the split's real probe photos by judges that were not trained with SDN:
- FID and KID on TF-FID InceptionV3 pool3 features (sdn_jax.evaluation.inception),
  with two reference rows computed the same way: `real_floor` (other real photos of the
  same people, as many as the probes: what real photos score, since FID at a few
  hundred faces is biased well above 0) and `blurred_reference` (the probes blurred with
  sigma = 1 px: visibly degraded, still a face). Compare FIDs only at equal sizes.
- classifier two-sample tests (two_sample.py) for anonymized and wrong-password faces.
Without the Inception weights, FID / KID are left out and `missing` says how to get them.

The Inception pass (~10-15 images/s on 2 CPU cores) is the slow part, so the real
photos' features are cached in a file beside the prepared dataset, named by a hash of
what they depend on; an evaluation then computes only the outputs' features.
"""

import dataclasses
import hashlib
import json
import logging
import os
import time
import zipfile

import jax
import numpy as np
from PIL import Image

from sdn_jax import samples
from sdn_jax.atomic_files import written_atomically
from sdn_jax.evaluation import metrics, two_sample
from sdn_jax.evaluation.outputs import OUTPUTS
from sdn_jax.images import gaussian_blur, to_uint8

log = logging.getLogger("sdn_jax")

BLUR_SIGMA = 1.0  # the blurred reference's Gaussian, in pixels (issue 16)
REFERENCES = ("real_floor", "blurred_reference")
ROWS = (*OUTPUTS, *REFERENCES)  # the fid / kid keys, in INTERFACES.md's order
JUDGED = ("anonymized", "recovered_wrong_password")  # the two-sample rows
PICTURE = "realism.png"
PICTURE_FACES = 16
CACHE_FOLDER = "realism_features"  # in the data dir, beside the prepared datasets


def load_inception(batch_size: int):
    """(features_fn, weights_id), or (None, why) where the Inception weights are not
    installed. Imported here: most runs never need it."""
    from sdn_jax.evaluation import inception  # noqa: PLC0415

    try:
        params = inception.load_params()
    except inception.InceptionWeightsMissing as error:
        return None, str(error)
    return inception.make_feature_fn(params, batch_size), params_digest(params)


def params_digest(params) -> str:
    """A short hash of a params pytree (names, shapes and values): the weights' id."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        leaf = np.ascontiguousarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}{leaf.shape}{leaf.dtype}".encode())
        digest.update(leaf.tobytes())
    return digest.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class FeatureCache:
    """Where the real photos' features are kept: `directory`, and what they depend on
    beside the images themselves (dataset, split, image size, the weights' id)."""

    directory: str
    description: dict
    write: bool = True  # False on all but one process

    def path(self, images: dict) -> str:
        """The file for these real images: named by a hash of the description, the blur
        and every image's bytes (so another selection of photos is another file)."""
        digest = hashlib.sha256(
            json.dumps({**self.description, "blur_sigma": BLUR_SIGMA}, sort_keys=True).encode()
        )
        for name in sorted(images):
            digest.update(name.encode() + str(images[name].shape).encode())
            digest.update(np.ascontiguousarray(images[name]).tobytes())
        d = self.description
        stem = "_".join(str(d[k]) for k in ("dataset", "image_size", "split") if k in d)
        return os.path.join(self.directory, f"{stem}_{digest.hexdigest()[:20]}.npz")


def _timed_features(features_fn, images: np.ndarray, what: str) -> np.ndarray:
    start = time.perf_counter()
    features = np.asarray(features_fn(images), np.float64)
    seconds = time.perf_counter() - start
    log.info("Inception features of %d %s in %.1f s (%.1f images/s)", len(images), what,
             seconds, len(images) / max(seconds, 1e-9))  # fmt: skip
    return features


def real_features(real: np.ndarray, floor: np.ndarray, features_fn, cache=None) -> dict:
    """Features of the probes ("real"), the floor and the blurred probes: read from the
    cache when it holds them, else computed (and written, atomically)."""
    images = {"real": real, "real_floor": floor}
    path = cache.path(images) if cache is not None else None
    if path is not None and os.path.exists(path):
        try:
            with np.load(path) as stored:
                features = {name: stored[name] for name in ("real", *REFERENCES)}
            log.info("Loaded the real photos' Inception features from %s", path)
            return features
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            # A damaged file: compute again (and replace it).
            log.warning("Ignoring the feature cache %s (%s)", path, error)
    features = {
        "real": _timed_features(features_fn, real, "real photos"),
        "real_floor": _timed_features(features_fn, floor, "other real photos (the floor)"),
        "blurred_reference": _timed_features(
            features_fn, gaussian_blur(real, BLUR_SIGMA), "blurred real photos"
        ),
    }
    if path is not None and cache.write:
        try:
            with written_atomically(path) as f:
                np.savez(f, **features)
            log.info("Cached the real photos' Inception features in %s", path)
        except OSError as error:  # e.g. a read-only data dir: the next run computes again
            log.warning("Could not cache the real photos' features in %s (%s)", path, error)
    return features


def realism_section(
    real, floor, outputs: dict, owners, *, features_fn, settings, missing: str | None = None,
    cache: FeatureCache | None = None,
) -> dict:  # fmt: skip
    """report.json's `realism`: uint8 (N, H, W, 3) real probe photos, other real photos
    of the same people (`floor`, N of them if there are as many), each output of OUTPUTS
    (uint8, row i from probe i) and the probes' person ids. `features_fn` None: no FID /
    KID, and `missing` says why. `settings`: eval.realism."""
    section = {"num_images": len(real)}
    if features_fn is None:
        section["missing"] = missing or "the Inception weights are not installed"
    else:
        features = real_features(real, floor, features_fn, cache)
        for name in OUTPUTS:
            features[name] = _timed_features(features_fn, outputs[name], name)
        reference = features["real"]
        section["fid"] = {
            name: metrics.frechet_distance(features[name], reference) for name in ROWS
        }
        section["kid"] = {}
        for name in ROWS:
            size = min(settings.kid_subset_size, len(features[name]), len(reference))
            kid = metrics.kernel_inception_distance(
                features[name], reference, num_subsets=settings.kid_subsets,
                subset_size=size, seed=settings.seed,
            )  # fmt: skip
            section["kid"][name] = {"mean": float(kid["mean"]), "std": float(kid["std"])}
    section["two_sample"] = {}
    for name in JUDGED:
        start = time.perf_counter()
        section["two_sample"][name] = two_sample.two_sample_tests(
            real, outputs[name], owners, owners, settings
        )
        log.info("Two-sample tests of %s: %s in %.1f s", name, section["two_sample"][name],
                 time.perf_counter() - start)  # fmt: skip
    return section


def realism_picture(real, outputs: dict, count: int = PICTURE_FACES) -> np.ndarray:
    """uint8 picture of the first `count` faces, each beside its original, enlarged
    (nearest neighbour), four pairs to a row: above, (original | anonymized); below,
    after a wider gap, (original | wrong password)."""
    count = min(count, len(real))
    per_row = min(4, count)
    rows = -(-count // per_row)
    scale = samples.display_scale(real.shape[1])
    blocks = []
    for name in JUDGED:
        pairs = np.concatenate([real[:count], outputs[name][:count]], axis=2)  # side by side
        blank = np.full((rows * per_row - count, *pairs.shape[1:]), 255, np.uint8)
        pairs = np.concatenate([pairs, blank]).reshape(rows, per_row, *pairs.shape[1:])
        blocks.append(samples.tile(samples.enlarge(pairs, scale), gap=8))
    separator = np.full((32, blocks[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([blocks[0], separator, blocks[1]])


def write_picture(path: str, real, outputs: dict) -> None:
    """eval/realism.png (realism_picture), written aside and renamed over."""
    with written_atomically(path) as f:
        Image.fromarray(realism_picture(real, outputs)).save(f, format="PNG")


def evaluate_realism(settings, probes, floor, owners, outputs: dict, *, data_dir, eval_dir) -> dict:
    """The `realism` section of the evaluation of `settings.eval.split`, and
    eval/realism.png, from float [-1, 1] probes, floor photos and outputs (evaluate.py
    orders them so that the first faces are of different people: the picture shows
    them). The real photos' features are cached in `data_dir`."""
    start = time.perf_counter()
    real, floor = to_uint8(probes), to_uint8(floor)
    outputs = {name: to_uint8(outputs[name]) for name in OUTPUTS}
    if len(floor) != len(real):
        log.warning("Realism: %d floor photos for %d probes: the floor's FID is not at the "
                    "probes' sample size", len(floor), len(real))  # fmt: skip
    options = settings.eval.realism
    features_fn, weights_or_why = load_inception(options.inception_batch_size)
    cache = None
    if features_fn is not None:
        description = dict(
            dataset=settings.data.name, image_size=settings.data.image_size,
            split=settings.eval.split, weights=weights_or_why,
        )  # fmt: skip
        cache = FeatureCache(os.path.join(data_dir, CACHE_FOLDER), description,
                             write=jax.process_index() == 0)  # fmt: skip
    else:
        log.warning("Realism: no FID / KID: %s", weights_or_why)
    section = realism_section(
        real, floor, outputs, owners, features_fn=features_fn, settings=options,
        missing=None if features_fn is not None else weights_or_why, cache=cache,
    )  # fmt: skip
    if jax.process_index() == 0:
        write_picture(os.path.join(eval_dir, PICTURE), real, outputs)
    log.info("Realism judged in %.0f s", time.perf_counter() - start)
    return section
