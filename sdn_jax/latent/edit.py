"""A face editor: edits key attributes of photos by degrees, without anonymizing them.

    python -m sdn_jax.latent.edit --workdir RUN --input PATH... --output DIR --edit Smiling=+2

Each input becomes `<DIR>/<stem>.png` (fitted to the model's size, as anonymize does):
the photo plus what the edit changes in G's output, averaged over a few fixed keys so the
surrogate identity each key draws cancels (editing.edit_photos; 0 degrees returns the
photo). Edits are in the key space (file_edits). Exit 0 all written, 1 some failed, 2 a
usage error; errors are one line each on stderr.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from sdn_jax import image_files, inference
from sdn_jax.batching import map_in_batches
from sdn_jax.images import from_uint8, to_uint8
from sdn_jax.latent import editing, file_edits


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sdn_jax.latent.edit",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--workdir", required=True, metavar="RUN")
    parser.add_argument("--step", type=int)
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--edit", required=True, metavar="NAME=+K,...")
    parser.add_argument("--overwrite", action="store_true")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        model = inference.load(args.workdir, step=args.step)
        edits = editing.parse_edits(args.edit, model.key_attributes)
    except (inference.LoadError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    items, notes = image_files.collect_inputs(args.input)
    image_files.assign_outputs(items, args.output)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    pixels, loaded = [], []
    for item in items:
        try:
            if item.error is None:
                pixels.append(image_files.read_image(item.path, model.image_size))
                loaded.append(item)
        except image_files.ImageError as error:
            item.error = str(error)
    if loaded:  # the output folder is made only when there is something to write
        try:
            os.makedirs(args.output, exist_ok=True)
        except OSError as error:
            print(f"error: cannot make {args.output}: {error.strerror}", file=sys.stderr)
            return 2
        delta = file_edits.key_delta(model.key_attributes, edits)
        conditions = editing.editor_conditions(model.model_settings)

        def run(x):
            d = jnp.broadcast_to(delta, (x.shape[0], delta.shape[0]))
            return editing.edit_photos(model.networks, model.params, x, conditions, "key", d)

        edited = to_uint8(map_in_batches(jax.jit(run), [from_uint8(np.stack(pixels))], 16))
        for item, out in zip(loaded, edited):
            try:
                path = os.path.join(args.output, item.output)
                image_files.write_png(path, out, args.overwrite)
                item.done = True
            except image_files.ImageError as error:
                item.error = str(error)
    failed = [item for item in items if not item.done]
    for item in failed:
        print(f"error: {item.path}: {item.error}", file=sys.stderr)
    print(f"edited {len(items) - len(failed)} image(s) into {args.output} "
          f"({editing.edit_text(edits)}); {len(failed)} failed", file=sys.stderr)  # fmt: skip
    return 1 if failed or not items else 0


if __name__ == "__main__":
    sys.exit(main())
