"""The privacy-realism plane of several runs: one point per run, from its eval/report.json.

x: how realistic the anonymized faces are (FID against real photos, divided by the same
report's blurred-photo reference FID, so runs evaluated on other face sets compare; the
target is <= 0.6). y: the share of anonymized faces the independent attacker links to
their person (the target is <= 0.05). The good corner is bottom left.

    python -m tools.privacy_realism_plot --run default=runs/default --run e55=runs/e55 \\
        --default default --out docs/privacy_realism.png

A run whose report has no realism section (no Inception weights, or evaluated before
the section existed) is named and left out.

Runs whose workdirs are gone can be kept on the plot: `--save-points FILE` writes the
figures the plot read (an excerpt of each report: the anonymized match rate and the
realism FIDs), and `--points FILE` reads such a file back beside the `--run`s (a `--run`
of the same name wins). docs/privacy_realism_points.json holds the runs of
docs/experiments.md.
"""

import argparse
import json
import os
import sys

FID_TARGET, MATCH_TARGET = 0.6, 0.05


class ReportError(ValueError):
    """A run's report is missing or lacks a figure the plot needs."""


def point(report: dict) -> tuple[float, float, float]:
    """(FID / blurred-reference FID, anonymized match rate, wrong-password FID ratio)."""
    fid = report.get("realism", {}).get("fid")
    if not fid:
        why = report.get("realism", {}).get("missing", "no realism section in the report")
        raise ReportError(why)
    reference = fid["blurred_reference"]
    return (
        fid["anonymized"] / reference,
        report["anonymized"]["identity_match_rate"],
        fid["recovered_wrong_password"] / reference,
    )


def excerpt(report: dict) -> dict:
    """The part of a report that `point` reads."""
    fid = report["realism"]["fid"]
    keys = ("anonymized", "recovered_wrong_password", "blurred_reference")
    return {
        "anonymized": {"identity_match_rate": report["anonymized"]["identity_match_rate"]},
        "realism": {"fid": {k: fid[k] for k in keys}},
    }


def read_reports(runs: dict[str, str]) -> tuple[dict, dict]:
    """name -> report excerpt for the runs that have figures; name -> why for the others."""
    reports, skipped = {}, {}
    for name, workdir in runs.items():
        path = os.path.join(workdir, "eval", "report.json")
        try:
            with open(path) as f:
                report = json.load(f)
            point(report)
            reports[name] = excerpt(report)
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ReportError) as e:
            skipped[name] = f"{path}: {e}"
    return reports, skipped


def read_points_file(path: str) -> dict:
    """name -> report excerpt, as `--save-points` wrote them."""
    try:
        with open(path) as f:
            reports = json.load(f)
        if not isinstance(reports, dict):
            raise ReportError("not a JSON object of run name -> report excerpt")
        for report in reports.values():
            point(report)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ReportError) as e:
        raise ReportError(f"{path}: {e}") from None
    return reports


def plot(points: dict, path: str, default: str | None = None) -> None:
    from matplotlib.figure import Figure  # noqa: PLC0415 (no pyplot: no global state)

    figure = Figure(figsize=(7, 5), layout="constrained")
    ax = figure.subplots()
    for name, (fid, match, _) in points.items():
        chosen = name == default
        ax.scatter(fid, match, s=120 if chosen else 40, marker="*" if chosen else "o",
                   color="tab:red" if chosen else "tab:blue", zorder=3,
                   label="the chosen default" if chosen else None)  # fmt: skip
        ax.annotate(name, (fid, match), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.axvline(FID_TARGET, color="grey", ls="--", label=f"FID target ({FID_TARGET} x blurred)")
    ax.axhline(MATCH_TARGET, color="grey", ls=":", label=f"match-rate target ({MATCH_TARGET})")
    ax.axvline(1.0, color="tab:orange", lw=0.8, label="blurred real photos (sigma 1 px)")
    ax.set(
        xlabel="anonymized FID / blurred-photo FID (lower: more realistic)",
        ylabel="anonymized faces linked by the attacker (lower: more private)",
        title="Privacy vs realism, one point per run",
    )
    ax.set_xlim(0, max(1.5, 1.1 * max(p[0] for p in points.values())))
    ax.set_ylim(0, max(2 * MATCH_TARGET, 1.15 * max(p[1] for p in points.values())))
    ax.legend(fontsize=7, loc="upper left")
    figure.savefig(path, dpi=100)


def _run_arg(text: str) -> tuple[str, str]:
    name, sep, workdir = text.partition("=")
    if not sep or not name or not workdir:
        raise argparse.ArgumentTypeError(f"expected NAME=WORKDIR, got {text!r}")
    return name, workdir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=_run_arg, action="append", default=[],
                        metavar="NAME=WORKDIR", help="a run to plot (repeat)")  # fmt: skip
    parser.add_argument("--points", help="a JSON file of earlier runs' figures (--save-points)")
    parser.add_argument("--save-points", help="write the plotted runs' figures to this JSON")
    parser.add_argument("--default", help="the NAME to mark as the chosen default")
    parser.add_argument("--out", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    if not args.run and not args.points:
        parser.error("give at least one --run or --points")
    try:
        reports = read_points_file(args.points) if args.points else {}
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runs = dict(args.run)
    if args.default is not None and args.default not in {**reports, **runs}:
        names = ", ".join({**reports, **runs})
        parser.error(f"--default {args.default!r} is not one of the runs: {names}")
    read, skipped = read_reports(runs)
    reports.update(read)
    points = {name: point(report) for name, report in reports.items()}
    for name, why in skipped.items():
        print(f"left out {name}: {why}", file=sys.stderr)
    if not points:
        print("no run has realism figures: nothing to plot", file=sys.stderr)
        return 1
    plot(points, args.out, args.default)
    if args.save_points:
        with open(args.save_points, "w") as f:
            json.dump(reports, f, indent=1)
            f.write("\n")
    for name, (fid, match, wrong_fid) in points.items():
        print(f"{name:12s} anonymized FID/blurred {fid:.3f}  match {match:.3f}  "
              f"wrong-password FID/blurred {wrong_fid:.3f}")  # fmt: skip
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
