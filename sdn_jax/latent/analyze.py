"""Attribute directions in a trained run's latent space, edited by degrees and judged.

    python -m sdn_jax.latent.analyze --workdir RUN
        [--attributes Smiling,Mouth_Slightly_Open,Mustache] [--degrees=-2,-1,0,1,2]
        [--method probe|sefa|pca|all] [--space embedding] [--no-conditional] [--output DIR]

Writes `<output, default RUN/latent>/latent_report.json` (INTERFACES.md "Latent
analysis"), `latent_report.md`, `strip_<method>_<attribute>.png` (rows: faces, columns:
degrees), `probability.png`, `components_<sefa|pca>.png` (the component gallery) and
`projection.png` (the latents in 2-D by attribute and person). Latents of the fit
photos are cached in RUN/latent/. Exit 0 done, 2 a usage error (bad flag, unknown
attribute, bad degrees, a run that cannot be loaded), 1 another failure; errors are one
line on stderr.
"""

import argparse
import json
import os
import sys
import time

from sdn_jax.latent import analysis, spaces

LATENT_DIR = "latent"
REPORT_JSON, REPORT_MD = "latent_report.json", "latent_report.md"


class UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sdn_jax.latent.analyze", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--workdir", required=True, metavar="RUN", help="a trained run")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    parser.add_argument("--attributes", default=",".join(analysis.DEFAULT_ATTRIBUTES))
    parser.add_argument("--degrees", default="-2,-1,0,1,2", help="comma-separated, with 0")
    parser.add_argument("--method", default="all", choices=(*analysis.METHODS, "all"))
    parser.add_argument("--space", default="embedding", choices=spaces.SPACES)
    parser.add_argument("--output", metavar="DIR", help="default: RUN/latent")
    parser.add_argument("--num-faces", type=int, default=128)
    parser.add_argument("--fit-photos", type=int, default=2048)
    parser.add_argument("--conditional", action=argparse.BooleanOptionalAction, default=True,
                        help="project the other attributes' directions out of each, so an "
                        "edit keeps them (InterFaceGAN)")  # fmt: skip
    return parser


def parse_degrees(text: str) -> tuple[float, ...]:
    try:
        degrees = tuple(float(d) for d in text.split(",") if d.strip())
    except ValueError:
        raise UsageError(f"--degrees must be comma-separated numbers, got {text!r}") from None
    if 0.0 not in degrees or len(set(degrees)) != len(degrees) or len(degrees) < 2:
        raise UsageError(f"--degrees needs 0 and at least one other degree, no repeats: {text!r}")
    if any(abs(d) > 10 for d in degrees):
        raise UsageError("--degrees must lie between -10 and +10")
    return degrees


def parse_attributes(text: str, space: str, key_attributes) -> tuple[str, ...]:
    from sdn_jax.data import attributes as attr_lib  # noqa: PLC0415

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise UsageError("--attributes names no attribute")
    known = key_attributes if space == "key" else attr_lib.CELEBA_ATTRIBUTES
    for name in names:
        if name not in known:
            raise UsageError(f"unknown attribute {name!r} for space {space}; known: "
                             f"{', '.join(known)}")  # fmt: skip
    if len(set(names)) != len(names):
        raise UsageError("--attributes repeats an attribute")
    return names


def progress_line(started: float):
    def show(message: str) -> None:
        print(f"latent: {message} ({time.perf_counter() - started:.0f} s)", file=sys.stderr,
              flush=True)  # fmt: skip

    return show


def run(args) -> dict:
    from sdn_jax import inference, run_identity  # noqa: PLC0415 (keeps --help fast)
    from sdn_jax.latent import report as report_lib  # noqa: PLC0415

    started = time.perf_counter()
    progress = progress_line(started)
    degrees = parse_degrees(args.degrees)
    if args.num_faces < 2 or args.fit_photos < 8:
        raise UsageError("--num-faces must be at least 2 and --fit-photos at least 8")
    try:
        model = inference.load(args.workdir, step=args.step)
    except inference.LoadError as error:
        raise UsageError(str(error)) from None
    settings = run_identity.stored_settings(args.workdir)
    names = parse_attributes(args.attributes, args.space, model.key_attributes)
    methods = analysis.METHODS if args.method == "all" else (args.method,)
    options = analysis.Options(
        attributes=names, degrees=degrees, methods=methods, space=args.space,
        num_faces=args.num_faces, fit_photos=args.fit_photos, conditional=args.conditional,
    )  # fmt: skip
    output = args.output or os.path.join(args.workdir, LATENT_DIR)
    os.makedirs(output, exist_ok=True)
    report, pictures = analyze_run(model, settings, args.workdir, options, progress)
    with open(os.path.join(output, REPORT_JSON), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(output, REPORT_MD), "w") as f:
        f.write(report_lib.report_markdown(report))
    report_lib.write_pictures(pictures, report, output)
    progress(f"wrote {output}")
    return report


def analyze_run(model, settings, workdir, options, progress, attacker=None, cache_dir=None):
    """The analysis of a loaded run: its attacker (cached in eval/attacker, trained if
    missing), the fit photos' latents (cached in `cache_dir`, default RUN/latent) and the
    test faces."""
    import numpy as np  # noqa: PLC0415

    import sdn_jax.data as data_lib  # noqa: PLC0415
    from sdn_jax.evaluation import attacker as attacker_lib  # noqa: PLC0415
    from sdn_jax.images import from_uint8  # noqa: PLC0415
    from sdn_jax.latent import cache  # noqa: PLC0415

    data = settings.data
    data_dir = data.data_dir or data_lib.default_data_dir(workdir)

    def source(split):
        return data_lib.load_source(data.name, split, data.image_size, data_dir,
                                    manual_dir=data.manual_dir,
                                    **data_lib.dataset_options(data))  # fmt: skip

    if attacker is None:
        progress("the attacker")
        attacker = attacker_lib.get_attacker(settings, workdir)
    progress("latents of the fit photos")
    cache_dir = cache_dir or os.path.join(workdir, LATENT_DIR)
    fit = cache.split_latents(model, source("train"), options.fit_photos, cache_dir)
    test = source(settings.eval.split)
    index = np.linspace(0, len(test) - 1, min(options.num_faces, len(test))).round().astype(int)
    faces = from_uint8(np.stack([test[int(i)]["image"] for i in index]))
    return analysis.analyze(model, attacker, fit, faces, options, data, progress)


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 (one line, not a traceback)
        print(f"error: {type(error).__name__}: {error}".splitlines()[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
