"""CelebA's 40 binary face attributes: the label vocabulary of every dataset here.

Both the synthetic faces and CelebA label images with these names in this order, so
a model, a probe or a key built for one dataset reads the other's labels unchanged.
"""

from collections.abc import Iterable, Sequence

import numpy as np

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)
NUM_ATTRIBUTES = len(CELEBA_ATTRIBUTES)
ATTRIBUTE_INDEX: dict[str, int] = {name: i for i, name in enumerate(CELEBA_ATTRIBUTES)}


def attribute_indices(names: Iterable[str]) -> list[int]:
    """Column indices of `names` in the 40-vector; unknown names are a clear error."""
    names = list(names)
    unknown = [n for n in names if n not in ATTRIBUTE_INDEX]
    if unknown:
        raise ValueError(
            f"Unknown attribute name(s) {unknown}; valid names are the CelebA "
            f"attributes: {', '.join(CELEBA_ATTRIBUTES)}"
        )
    return [ATTRIBUTE_INDEX[n] for n in names]


def attributes_to_vector(values: dict[str, bool]) -> np.ndarray:
    """A {name: bool} dict as a (40,) bool vector; names not given are False."""
    vector = np.zeros(NUM_ATTRIBUTES, dtype=bool)
    for index, name in zip(attribute_indices(values), values, strict=True):
        vector[index] = bool(values[name])
    return vector


def vector_to_attributes(vector: Sequence[bool]) -> dict[str, bool]:
    """A (40,) vector as a {name: bool} dict (all 40 names)."""
    if len(vector) != NUM_ATTRIBUTES:
        raise ValueError(f"Expected {NUM_ATTRIBUTES} attribute values, got {len(vector)}")
    return {name: bool(v) for name, v in zip(CELEBA_ATTRIBUTES, vector, strict=True)}
