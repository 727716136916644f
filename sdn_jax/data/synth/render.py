"""Renders photos of the synthetic people: traits and photo draws (world.py) to pixels.

Rendering evaluates anti-aliased implicit shapes (coverage = clip(0.5 - d / pixel))
on a whole batch at once, each shape only inside the batch's union bounding box
(painter.py, on canvas.py). Pixels depend only on (seed, identity, photo): per-pixel
work uses +, -, *, /, sqrt and floor (exactly rounded in IEEE arithmetic), so they do
not depend on the batch, the machine or the SIMD path.
"""

from collections.abc import Sequence

import numpy as np

from sdn_jax.data.synth import painter, world

IMAGE_SIZES = (32, 64, 128)
_NOISE_BANK_SEED = 20241122
_NOISE_BANKS: dict[int, np.ndarray] = {}


def _noise_bank(size: int) -> np.ndarray:
    """Fixed Gaussian noise fields, (3, size, size, K); each photo adds one of them."""
    if size not in _NOISE_BANKS:
        rng = np.random.default_rng(_NOISE_BANK_SEED)
        shape = (3, size, size, world.NUM_NOISE_FIELDS)
        _NOISE_BANKS[size] = rng.standard_normal(shape, dtype=np.float32)
    return _NOISE_BANKS[size]


def render_faces(
    identities: Sequence[int],
    photos: Sequence[int],
    image_size: int = 64,
    seed: int = 0,
    return_nuisance: bool = False,
    overrides: dict | None = None,
):
    """Renders photo `photos[i]` of person `identities[i]` for every i.

    Returns (images uint8 (N, S, S, 3), attributes bool (N, 40)) and, with
    return_nuisance, a dict of the per-photo nuisance values (pose, lighting,
    background, clothing) as (N, k) float arrays.

    overrides: {name: scalar or (N,) value} replaces drawn per-photo attributes
    (CelebA names in PHOTO_ATTRIBUTES) or pose values (POSE_KEYS) while everything
    else stays as drawn: counterfactual photos with exact ground truth.
    """
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {image_size}")
    identities = np.asarray(identities, np.int64).reshape(-1)
    photos = np.asarray(photos, np.int64).reshape(-1)
    if identities.shape != photos.shape:
        raise ValueError(
            f"identities and photos differ in length: {identities.shape} vs {photos.shape}"
        )
    if len(identities) and (identities.min() < 0 or photos.min() < 0):
        raise ValueError("identity and photo indices must be non-negative")
    traits = world.draw_identities(identities, seed)
    photo = world.draw_photos(identities, photos, seed, traits)
    world.apply_overrides(photo, traits, overrides or {}, len(identities))
    painted = painter.paint_faces(image_size, traits, photo)  # (3, S, S, N)
    noise = np.take(_noise_bank(image_size), photo["noise_field"], axis=-1)
    painted += photo["noise_sigma"] * noise
    np.clip(painted, 0.0, 1.0, out=painted)
    painted *= 255.0
    painted += 0.5
    images = np.ascontiguousarray(painted.astype(np.uint8).transpose(3, 1, 2, 0))
    labels = world.attribute_labels(traits, photo)
    if not return_nuisance:
        return images, labels
    nuisance = {
        "pose": np.stack([photo["angle"], photo["scale"], photo["tx"], photo["ty"]], 1),
        "lighting": np.stack([photo["light_x"], photo["light_y"], photo["exposure"]], 1),
        "background": np.concatenate([photo["bg0"], photo["bg1"], photo["bg_dir"]], 1),
        "clothing": photo["cloth"],
    }
    return images, labels, nuisance
