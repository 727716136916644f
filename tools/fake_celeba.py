"""A fake CelebA release in the official formats, for trying the CelebA path without CelebA.

    python -m tools.fake_celeba --out /tmp/fake_celeba --people 60 --max_photos 12

Writes img_align_celeba/*.jpg (178x218, the aligned crops' size) and the four list files
(attributes, identities, partitions, landmarks) as the official release has them. The
faces are the synthetic renderer's at 128 px, enlarged into the frame, with its attribute
labels; people get 2 .. max_photos photos (CelebA has many people with only 2 or 3), and
are split 80/10/10 into train, validation and test, disjoint in people as in CelebA.
"""

import argparse
import os

import numpy as np
from PIL import Image

from sdn_jax.data import attributes, celeba
from sdn_jax.data.synth.render import render_faces

WIDTH, HEIGHT = 178, 218
_FIRST_ID = 100  # raw CelebA ids are arbitrary numbers, not 0..N-1


def photo_counts(people: int, max_photos: int, seed: int) -> np.ndarray:
    """Photos per person: a fifth of the people have only 2 or 3, the rest up to max."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(4, max_photos + 1, people)
    few = rng.random(people) < 0.2
    counts[few] = rng.integers(2, 4, few.sum())
    return counts


def write_fake_release(out: str, people: int, max_photos: int, seed: int = 0) -> int:
    """Writes the release into `out`; returns the number of images."""
    counts = photo_counts(people, max_photos, seed)
    identities = np.repeat(np.arange(people), counts)
    photos = np.concatenate([np.arange(c) for c in counts])
    os.makedirs(os.path.join(out, celeba.IMAGE_DIR), exist_ok=True)
    partition_of = np.minimum(np.arange(people) * 10 // people, 9)
    partition_of = np.where(partition_of < 8, 0, partition_of - 7)  # 80% / 10% / 10%
    names, attribute_rows = [], []
    for start in range(0, len(identities), 256):  # bounded memory for large fakes
        chunk = slice(start, start + 256)
        images, labels = render_faces(identities[chunk], photos[chunk], 128, seed)
        for offset, (image, label) in enumerate(zip(images, labels, strict=True)):
            name = f"{start + offset + 1:06d}.jpg"
            frame = Image.fromarray(image).resize((WIDTH, WIDTH), Image.BILINEAR)
            canvas = Image.new("RGB", (WIDTH, HEIGHT), (128, 128, 128))
            canvas.paste(frame, (0, (HEIGHT - WIDTH) // 2))
            canvas.save(os.path.join(out, celeba.IMAGE_DIR, name), quality=90)
            names.append(name)
            attribute_rows.append(label)
    header = " ".join(attributes.CELEBA_ATTRIBUTES)
    attribute_lines = [f"{n} " + " ".join(f"{1 if v else -1:2d}" for v in row)
                       for n, row in zip(names, attribute_rows, strict=True)]  # fmt: skip
    _write(out, celeba.ATTR_FILE, [str(len(names)), header + " ", *attribute_lines])
    raw_ids = identities + _FIRST_ID
    _write(out, celeba.IDENTITY_FILE, [f"{n} {i}" for n, i in zip(names, raw_ids, strict=True)])
    parts = partition_of[identities]
    _write(out, celeba.PARTITION_FILE, [f"{n} {p}" for n, p in zip(names, parts, strict=True)])
    # Eyes, nose and mouth corners where the aligned crops have them.
    marks = " ".join(f"{v:4d}" for v in (69, 111, 108, 111, 89, 135, 73, 153, 104, 153))
    landmark_lines = [str(len(names)), " ".join(celeba.LANDMARK_NAMES)]
    _write(out, celeba.LANDMARKS_FILE, landmark_lines + [f"{n}  {marks}" for n in names])
    return len(names)


def _write(out: str, file: str, lines: list[str]) -> None:
    with open(os.path.join(out, file), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the release into")
    parser.add_argument("--people", type=int, default=60)
    parser.add_argument("--max_photos", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.people < 10 or args.max_photos < 4:
        parser.error("--people must be at least 10 and --max_photos at least 4")
    count = write_fake_release(args.out, args.people, args.max_photos, args.seed)
    print(f"Wrote a fake CelebA release of {count} images of {args.people} people to {args.out}")


if __name__ == "__main__":
    main()
