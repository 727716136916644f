"""Recovers the original faces of anonymized photos, given the key that anonymized them.

    python -m sdn_jax.deanonymize --workdir RUN --input DIR... --output OUT

The inputs are the PNGs that `python -m sdn_jax.anonymize` wrote, unchanged; the run, its
checkpoint step, the passphrase and the --attributes must be the ones that anonymized
them. A wrong passphrase or wrong attributes give another face, not an error: the model
cannot tell a wrong key from a right one, and no check value is stored that could.
"""

import sys

from sdn_jax import image_cli, inference


def main(argv: list[str] | None = None) -> int:
    """Runs the command on argv (default: sys.argv[1:]); returns the exit status."""
    return image_cli.run(
        sys.argv[1:] if argv is None else argv,
        prog="python -m sdn_jax.deanonymize",
        description=__doc__.splitlines()[0],
        anonymizing=False,
        transform=inference.Model.recover,
    )


if __name__ == "__main__":
    sys.exit(main())
