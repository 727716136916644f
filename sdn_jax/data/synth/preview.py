"""A look at the renderer: a grid of people, one row per person and a column per photo.

Run: python -m sdn_jax.data.synth_faces --preview out.png --people 8 --photos 8
(or python -m sdn_jax.data.synth.preview ...).
"""

import argparse

import numpy as np

from sdn_jax.data import synth
from sdn_jax.data.synth.render import IMAGE_SIZES, render_faces


def preview_grid(num_people=8, photos_per_person=8, image_size=64, seed=0, first_identity=0):
    """An (rows*S, cols*S, 3) uint8 grid: a row per person, a column per photo."""
    ids = np.repeat(np.arange(first_identity, first_identity + num_people), photos_per_person)
    photos = np.tile(np.arange(photos_per_person), num_people)
    images, _ = render_faces(ids, photos, image_size, seed)
    s = image_size
    grid = images.reshape(num_people, photos_per_person, s, s, 3)
    return grid.transpose(0, 2, 1, 3, 4).reshape(num_people * s, photos_per_person * s, 3)


def main(argv=None):
    parser = argparse.ArgumentParser(description=synth.__doc__.split("\n")[0])
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
