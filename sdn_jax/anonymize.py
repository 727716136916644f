"""Anonymizes face photos with a trained run, under a passphrase and chosen attributes.

    python -m sdn_jax.anonymize --workdir RUN --input PHOTOS... --output DIR

Each input becomes `<DIR>/<stem>.png`: the face, fitted to the model's square geometry,
turned into another person's under the passphrase and the chosen key attributes. Keep
the PNG as it is: `python -m sdn_jax.deanonymize` with the same key and run recovers
the (fitted) original only from its exact pixels. README: "Anonymize your own photos".
"""

import sys

from sdn_jax import image_cli, inference


def main(argv: list[str] | None = None) -> int:
    """Runs the command on argv (default: sys.argv[1:]); returns the exit status."""
    return image_cli.run(
        sys.argv[1:] if argv is None else argv,
        prog="python -m sdn_jax.anonymize",
        description=__doc__.splitlines()[0],
        anonymizing=True,
        transform=inference.Model.anonymize,
    )


if __name__ == "__main__":
    sys.exit(main())
