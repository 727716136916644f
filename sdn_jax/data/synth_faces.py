"""Procedural cartoon faces with exact identity and attribute ground truth.

A person is a seeded draw of continuous traits (face width, height and jaw, skin tone,
eye spacing, size, height and colour, brows, nose, mouth, lips, ears, hair colour,
length, volume, hairline and parting) plus identity-level CelebA attributes. A photo of
that person adds per-photo attributes (Smiling, Mouth_Slightly_Open, Mustache, Goatee,
5_o_Clock_Shadow, Eyeglasses, Bangs, Wearing_Hat, Wearing_Lipstick, Rosy_Cheeks,
Wearing_Earrings) and nuisances that carry no identity: rotation, shift, scale,
lighting, background colours and gradient, clothing colour, gaze and sensor noise.

Labels use CelebA's 40 names in CelebA's order. Drawn here: 5_o_Clock_Shadow,
Arched_Eyebrows, Bags_Under_Eyes, Bald, Bangs, Big_Lips, Big_Nose, Black_Hair,
Blond_Hair, Brown_Hair, Bushy_Eyebrows, Chubby, Eyeglasses, Goatee, Gray_Hair, Male,
Mouth_Slightly_Open, Mustache, Narrow_Eyes, No_Beard, Pale_Skin, Receding_Hairline,
Rosy_Cheeks, Smiling, Straight_Hair, Wavy_Hair, Wearing_Earrings, Wearing_Hat,
Wearing_Lipstick, Young. Always False: Attractive, Blurry, Double_Chin, Heavy_Makeup,
High_Cheekbones, Oval_Face, Pointy_Nose, Sideburns, Wearing_Necklace, Wearing_Necktie.

Rendering evaluates anti-aliased implicit shapes (coverage = clip(0.5 - d / pixel))
on a whole batch at once, each shape only inside the batch's union bounding box.
Pixels depend only on (seed, identity, photo): per-pixel work uses +, -, *, /, sqrt
and floor (exactly rounded in IEEE arithmetic), so they do not depend on the batch,
the machine or the SIMD path. Run `python -m sdn_jax.data.synth_faces --preview
out.png` to look at a grid of people.
"""

import argparse
from collections.abc import Sequence

import numpy as np

from sdn_jax.data import attributes as attr_lib
from sdn_jax.data import face_painter

IMAGE_SIZES = (32, 64, 128)
_NUM_IDENTITY_DRAWS = 64
_NUM_PHOTO_DRAWS = 48
_NOISE_BANK_SEED = 20241122
_NUM_NOISE_FIELDS = 97  # Photos pick one of these sensor-noise fields (and its strength).
_ATTR = attr_lib.ATTRIBUTE_INDEX

# Colour palettes (linear RGB in [0, 1]).
_SKIN_LIGHT = np.array([0.96, 0.80, 0.68], np.float32)
_SKIN_DARK = np.array([0.36, 0.23, 0.15], np.float32)
_SKIN_PALE = np.array([1.00, 0.90, 0.84], np.float32)
_HAIR = {
    "Black_Hair": np.array([0.09, 0.08, 0.08], np.float32),
    "Brown_Hair": np.array([0.42, 0.26, 0.13], np.float32),
    "Blond_Hair": np.array([0.90, 0.76, 0.42], np.float32),
    "Gray_Hair": np.array([0.72, 0.72, 0.72], np.float32),
}
_HAIR_NAMES = tuple(_HAIR)
_HAIR_TABLE = np.stack([_HAIR[n] for n in _HAIR_NAMES])
_IRIS_TABLE = np.array(
    [[0.33, 0.19, 0.09], [0.22, 0.42, 0.72], [0.28, 0.52, 0.30], [0.48, 0.52, 0.58]], np.float32
)


def _lerp(lo, hi, t):
    return lo + (hi - lo) * t


class _Draws:
    """Hands out columns of a (N, k) table of uniform draws, in a fixed order.

    The order is part of the data format: appending a draw keeps every existing
    person and photo unchanged, reordering changes them all.
    """

    def __init__(self, table: np.ndarray):
        self._table, self._next = table, 0

    def __call__(self, k: int | None = None) -> np.ndarray:
        width = 1 if k is None else k
        if self._next + width > self._table.shape[1]:
            raise RuntimeError("synth_faces draw table exhausted: raise its width")
        cols = self._table[:, self._next : self._next + width]
        self._next += width
        return cols[:, 0] if k is None else cols


_MASK64 = (1 << 64) - 1


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser: a bijective uint64 mix (wrapping integer arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform_draws(*keys, width: int) -> np.ndarray:
    """(N, width) float32 uniforms in [0, 1), a pure function of the integer keys.

    Counter-based (a hash of keys and column), vectorised over the batch and exact
    on every machine: per-image numpy Generators cost ~15 us each, this ~0.1 us.
    Each key is a Python int or an (N,) integer array.
    """
    state = np.zeros(1, np.uint64)
    for key in keys:
        key = np.asarray(key, np.int64).astype(np.uint64)
        state = _splitmix64(state ^ (key + np.uint64(0x9E3779B97F4A7C15)))
    counters = np.arange(width, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    bits = _splitmix64(state[:, None] + counters[None, :])
    return ((bits >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)).astype(np.float32)


def _float32_values(values: dict) -> dict:
    """Float traits as float32: one float64 trait would double every pixel array."""
    return {
        k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
        for k, v in values.items()
    }


def _draw_identities(identities: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Identity traits, one entry per image: (N,) arrays (colours (N, 3))."""
    d = _Draws(uniform_draws(seed, 1, identities, width=_NUM_IDENTITY_DRAWS))
    t = {}
    t["male"] = d() < 0.5
    t["young"] = d() < 0.7
    old = ~t["young"]
    hair_u = d()
    gray_p = np.where(old, 0.45, 0.02)
    # Hair colour class: gray first (age), then black / brown / blond.
    rest = (hair_u - gray_p) / (1 - gray_p)
    hair_class = np.where(hair_u < gray_p, 3, np.where(rest < 0.38, 0, np.where(rest < 0.74, 1, 2)))
    t["hair_class"] = hair_class
    t["hair_color"] = np.clip(
        _HAIR_TABLE[hair_class] * _lerp(0.85, 1.15, d())[:, None]
        + _lerp(-0.04, 0.04, d())[:, None],
        0,
        1,
    )
    bald_p = np.where(t["male"], np.where(old, 0.35, 0.04), 0.0)
    t["bald"] = d() < bald_p
    t["receding"] = ~t["bald"] & (d() < np.where(t["male"], 0.25, 0.03))
    t["pale"] = d() < 0.12
    tone = d()
    skin = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * (tone[:, None] ** 1.3)
    skin = np.where(t["pale"][:, None], _SKIN_PALE, skin)
    warm = _lerp(-0.04, 0.04, d())
    t["skin"] = np.clip(skin + np.stack([warm, 0 * warm, -warm], 1), 0, 1)
    t["chubby"] = d() < 0.12
    t["face_w"] = _lerp(0.34, 0.42, d()) + 0.02 * t["male"] + 0.045 * t["chubby"]
    t["face_h"] = _lerp(0.47, 0.57, d())
    t["jaw"] = np.where(t["male"], _lerp(0.05, 0.3, d()), _lerp(0.25, 0.5, d()))
    t["face_cy"] = _lerp(0.02, 0.08, d())
    t["eye_dx"] = _lerp(0.13, 0.2, d())
    t["eye_y"] = _lerp(-0.06, 0.02, d())
    t["eye_a"] = _lerp(0.05, 0.075, d())
    t["narrow_eyes"] = d() < 0.15
    t["eye_b"] = t["eye_a"] * _lerp(0.5, 0.72, d()) * np.where(t["narrow_eyes"], 0.55, 1.0)
    iris_u = d()
    iris_class = np.minimum((iris_u * 4).astype(int), 3)
    t["iris"] = np.clip(_IRIS_TABLE[iris_class] * _lerp(0.8, 1.2, d())[:, None], 0, 1)
    t["bushy"] = d() < 0.15
    t["brow_t"] = _lerp(0.011, 0.022, d()) + 0.006 * t["male"] + np.where(t["bushy"], 0.016, 0.0)
    t["brow_h"] = _lerp(0.085, 0.13, d())
    t["brow_tilt"] = _lerp(-0.25, 0.25, d())
    t["arched"] = d() < np.where(t["male"], 0.08, 0.4)
    t["brow_arch"] = np.where(t["arched"], _lerp(4.0, 7.0, d()), _lerp(0.0, 1.5, d()))
    t["big_nose"] = d() < 0.2
    t["nose_len"] = _lerp(0.12, 0.18, d()) + np.where(t["big_nose"], 0.04, 0.0)
    t["nose_w"] = _lerp(0.035, 0.055, d()) + np.where(t["big_nose"], 0.028, 0.0)
    t["mouth_w"] = _lerp(0.1, 0.16, d())
    t["big_lips"] = d() < 0.15
    t["lip_t"] = _lerp(0.014, 0.024, d()) + np.where(t["big_lips"], 0.014, 0.0)
    t["mouth_y"] = _lerp(0.25, 0.32, d())
    t["lip_color"] = np.clip(t["skin"] * np.array([0.9, 0.68, 0.66], np.float32), 0, 1)
    t["ear_h"] = _lerp(0.06, 0.1, d())
    t["ear_y"] = _lerp(0.0, 0.08, d())
    long_p = np.where(t["male"], 0.1, 0.75)
    t["hair_len"] = np.where(d() < long_p, _lerp(0.3, 1.0, d()), 0.0) * ~t["bald"]
    t["hair_vol"] = _lerp(0.02, 0.12, d())
    t["hairline"] = _lerp(0.0, 0.08, d()) + np.where(t["receding"], 0.12, 0.0)
    t["part"] = _lerp(-0.35, 0.35, d())
    t["wavy"] = ~t["bald"] & (d() < 0.3)
    t["straight"] = ~t["bald"] & ~t["wavy"] & (d() < 0.6)
    t["wave_freq"] = _lerp(14.0, 24.0, d())
    t["bag_strength"] = np.where(old & (d() < 0.8), _lerp(0.25, 0.4, d()), 0.0)
    return _float32_values(t)


def _draw_photos(
    identities: np.ndarray, photos: np.ndarray, seed: int, traits: dict
) -> dict[str, np.ndarray]:
    """Per-photo attributes and nuisances, one entry per image."""
    d = _Draws(uniform_draws(seed, 2, identities, photos, width=_NUM_PHOTO_DRAWS))
    male, bald = traits["male"], traits["bald"]
    p = {}
    p["smiling"] = d() < 0.5
    p["mouth_open"] = d() < 0.45
    p["mustache"] = d() < np.where(male, 0.3, 0.04)
    p["goatee"] = d() < np.where(male, 0.18, 0.0)
    p["shadow"] = ~p["goatee"] & (d() < np.where(male, 0.25, 0.0))
    p["glasses"] = d() < 0.25
    p["bangs"] = ~bald & (d() < 0.3)
    p["hat"] = d() < 0.15
    p["lipstick"] = d() < np.where(male, 0.0, 0.45)
    p["rosy"] = d() < 0.15
    p["earrings"] = d() < np.where(male, 0.05, 0.35)
    p["angle"] = _lerp(-0.2, 0.2, d())  # radians, about +-11 degrees
    p["scale"] = _lerp(1.12, 1.32, d())
    p["tx"] = _lerp(-0.08, 0.08, d())
    p["ty"] = _lerp(-0.06, 0.08, d())
    p["light_x"] = _lerp(-0.25, 0.25, d())
    p["light_y"] = _lerp(-0.2, 0.2, d())
    p["exposure"] = _lerp(0.85, 1.1, d())
    p["bg0"], p["bg1"] = d(3), d(3) * 0.8 + 0.1
    angle = d() * 2 * np.pi
    p["bg_dir"] = np.stack([np.cos(angle), np.sin(angle)], 1).astype(np.float32)
    p["bg_strength"] = d() * 0.9
    p["cloth"] = d(3) * 0.85 + 0.05
    p["hat_color"] = d(3) * 0.8 + 0.05
    p["frame_color"] = np.stack([d() * 0.5] * 3, 1) * np.array([1.0, 0.8, 0.6], np.float32)
    p["gaze"] = _lerp(-0.35, 0.35, d())
    p["lipstick_color"] = np.stack(
        [_lerp(0.55, 0.8, d()), _lerp(0.03, 0.12, d()), _lerp(0.1, 0.3, d())], 1
    )
    p["noise_sigma"] = _lerp(0.005, 0.025, d())
    p["noise_field"] = np.minimum((d() * _NUM_NOISE_FIELDS).astype(np.int64), _NUM_NOISE_FIELDS - 1)
    return _float32_values(p)


_NOISE_BANKS: dict[int, np.ndarray] = {}


def _noise_bank(size: int) -> np.ndarray:
    """Fixed Gaussian noise fields, (3, size, size, K); each photo adds one of them."""
    if size not in _NOISE_BANKS:
        rng = np.random.default_rng(_NOISE_BANK_SEED)
        shape = (3, size, size, _NUM_NOISE_FIELDS)
        _NOISE_BANKS[size] = rng.standard_normal(shape, dtype=np.float32)
    return _NOISE_BANKS[size]


def _labels(t: dict, p: dict) -> np.ndarray:
    n = len(p["angle"])
    labels = np.zeros((n, attr_lib.NUM_ATTRIBUTES), bool)
    hair = ~t["bald"]
    values = {
        "5_o_Clock_Shadow": p["shadow"],
        "Arched_Eyebrows": t["arched"],
        "Bags_Under_Eyes": t["bag_strength"] > 0,
        "Bald": t["bald"],
        "Bangs": p["bangs"],
        "Big_Lips": t["big_lips"],
        "Big_Nose": t["big_nose"],
        "Bushy_Eyebrows": t["bushy"],
        "Chubby": t["chubby"],
        "Eyeglasses": p["glasses"],
        "Goatee": p["goatee"],
        "Male": t["male"],
        "Mouth_Slightly_Open": p["mouth_open"],
        "Mustache": p["mustache"],
        "Narrow_Eyes": t["narrow_eyes"],
        "No_Beard": ~(p["goatee"] | p["shadow"] | p["mustache"]),
        "Pale_Skin": t["pale"],
        "Receding_Hairline": t["receding"],
        "Rosy_Cheeks": p["rosy"],
        "Smiling": p["smiling"],
        "Straight_Hair": t["straight"],
        "Wavy_Hair": t["wavy"],
        "Wearing_Earrings": p["earrings"],
        "Wearing_Hat": p["hat"],
        "Wearing_Lipstick": p["lipstick"],
        "Young": t["young"],
    }
    for i, name in enumerate(_HAIR_NAMES):
        values[name] = hair & (t["hair_class"] == i)
    for name, value in values.items():
        labels[:, _ATTR[name]] = value
    return labels


# Per-photo attributes that `render_faces(overrides=...)` can set: CelebA name -> photo key.
PHOTO_ATTRIBUTES = {
    "Smiling": "smiling",
    "Mouth_Slightly_Open": "mouth_open",
    "Mustache": "mustache",
    "Goatee": "goatee",
    "5_o_Clock_Shadow": "shadow",
    "Eyeglasses": "glasses",
    "Bangs": "bangs",
    "Wearing_Hat": "hat",
    "Wearing_Lipstick": "lipstick",
    "Rosy_Cheeks": "rosy",
    "Wearing_Earrings": "earrings",
}
POSE_KEYS = ("angle", "scale", "tx", "ty")  # radians, zoom, shift in image units [-1, 1]


def _apply_overrides(photo: dict, traits: dict, overrides: dict, n: int) -> None:
    for name, value in overrides.items():
        if name in PHOTO_ATTRIBUTES:
            photo[PHOTO_ATTRIBUTES[name]] = np.broadcast_to(np.asarray(value, bool), (n,)).copy()
        elif name in POSE_KEYS:
            photo[name] = np.broadcast_to(np.asarray(value, np.float32), (n,)).copy()
        else:
            raise ValueError(
                f"Cannot override {name!r}; choose per-photo attributes "
                f"{sorted(PHOTO_ATTRIBUTES)} or pose keys {list(POSE_KEYS)}"
            )
    # What a photo cannot show (a goatee and a 5 o'clock shadow together, bangs on a bald head) is
    # not drawn, so it is not labelled either.
    photo["shadow"] &= ~photo["goatee"]
    photo["bangs"] &= ~traits["bald"]


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
    traits = _draw_identities(identities, seed)
    photo = _draw_photos(identities, photos, seed, traits)
    _apply_overrides(photo, traits, overrides or {}, len(identities))
    painted = face_painter.paint_faces(image_size, traits, photo)  # (3, S, S, N)
    noise = np.take(_noise_bank(image_size), photo["noise_field"], axis=-1)
    painted += photo["noise_sigma"] * noise
    np.clip(painted, 0.0, 1.0, out=painted)
    # [0, 1] -> uint8 rounding half up (+0.5, then truncation), not sdn_jax.images'
    # half-to-even rounding of [-1, 1]: changing it would change every rendered face.
    painted *= 255.0
    painted += 0.5
    images = np.ascontiguousarray(painted.astype(np.uint8).transpose(3, 1, 2, 0))
    labels = _labels(traits, photo)
    if not return_nuisance:
        return images, labels
    nuisance = {
        "pose": np.stack([photo["angle"], photo["scale"], photo["tx"], photo["ty"]], 1),
        "lighting": np.stack([photo["light_x"], photo["light_y"], photo["exposure"]], 1),
        "background": np.concatenate([photo["bg0"], photo["bg1"], photo["bg_dir"]], 1),
        "clothing": photo["cloth"],
    }
    return images, labels, nuisance


def preview_grid(num_people=8, photos_per_person=8, image_size=64, seed=0, first_identity=0):
    """An (rows*S, cols*S, 3) uint8 grid: a row per person, a column per photo."""
    ids = np.repeat(np.arange(first_identity, first_identity + num_people), photos_per_person)
    photos = np.tile(np.arange(photos_per_person), num_people)
    images, _ = render_faces(ids, photos, image_size, seed)
    s = image_size
    grid = images.reshape(num_people, photos_per_person, s, s, 3)
    return grid.transpose(0, 2, 1, 3, 4).reshape(num_people * s, photos_per_person * s, 3)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preview", required=True, help="PNG file to write the grid to")
    parser.add_argument("--people", type=int, default=8)
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=64, choices=IMAGE_SIZES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from PIL import Image

    grid = preview_grid(args.people, args.photos, args.image_size, args.seed)
    Image.fromarray(grid).save(args.preview)
    print(f"Wrote {args.people} people x {args.photos} photos to {args.preview}")


if __name__ == "__main__":
    main()
