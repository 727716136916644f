"""latent_report.md and the analysis' pictures (strips, probability vs degree)."""

import os

import numpy as np
from PIL import Image

from sdn_jax.images import to_uint8
from sdn_jax.samples import enlarge, tile

SCALE = 4  # strips: faces enlarged 4x, nearest neighbour


def _fmt(value, digits=3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def report_markdown(report: dict) -> str:
    degrees = [f"{d:g}" for d in report["degrees"]]
    lines = [
        f"# Latent analysis (step {report['step']}, {report['num_faces']} test faces, "
        f"space `{report['space']}`)",
        "",
        f"Best method: **{report['best_method']}** (highest mean monotonic fraction). One "
        "degree = one standard deviation of the fit photos' latents projected on the unit "
        "direction"
        + (
            ", with the other attributes' directions projected out (conditional edits)"
            if report.get("conditional")
            else ""
        )
        + ". Probabilities are the independent attacker's; identity, SSIM and PSNR "
        "compare each edited face with the unedited one (degree 0).",
        "",
        "| method | attribute | monotonic | strict | ratio 2:1 (+/-) | identity kept (+-1) "
        "| max other shift (+-1) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, by_name in report["methods"].items():
        for name, r in by_name.items():
            ratio = r["ratio_2_to_1"]
            lines.append(
                f"| {method} | {name} | {_fmt(r['monotonic_fraction'], 2)} | "
                f"{_fmt(r['monotonic_fraction_strict'], 2)} | {_fmt(ratio['plus'], 2)} / "
                f"{_fmt(ratio['minus'], 2)} | {_fmt(r['identity_kept_fraction'], 2)} | "
                f"{_fmt(r['max_other_attribute_shift'])} |"
            )
    lines += ["", "Paper layout (attribute probability / SSIM / PSNR dB by degree):", ""]
    lines.append("| method | attribute | " + " | ".join(degrees) + " |")
    lines.append("| --- | --- |" + " --- |" * len(degrees))
    for method, by_name in report["methods"].items():
        for name, r in by_name.items():
            cells = [
                f"{v['probability']:.2f} / {v['ssim']:.2f} / {v['psnr']:.1f}"
                for v in (r["degrees"][d] for d in degrees)
            ]
            lines.append(f"| {method} | {name} | " + " | ".join(cells) + " |")
    if report.get("matching"):
        lines += ["", "SeFa / PCA components matched to attributes by effect (what each of "
                  "the first components does to one face: `components_<method>.png`, rows "
                  "components 0, 1, ..., columns degrees):", ""]  # fmt: skip
        lines.append("| method | attribute | component | effect at +1 | cosine with probe "
                     "| best-cosine component |")  # fmt: skip
        lines.append("| --- | --- | --- | --- | --- | --- |")
        for method, by_name in report["matching"].items():
            for name, v in by_name.items():
                lines.append(
                    f"| {method} | {name} | {v['component']} | {v['effect_at_1_degree']:.3f} | "
                    f"{v['cosine_with_probe']:.3f} | {v['best_cosine_component']} |"
                )
    if report.get("ground_truth"):
        lines += ["", "Synthetic ground truth (face editor, +2 degrees on attribute-off photos; "
                  "PSNR to the renderer's attribute-on photo):", ""]  # fmt: skip
        lines.append("| attribute | faces | PSNR before | PSNR after | fraction closer |")
        lines.append("| --- | --- | --- | --- | --- |")
        for name, v in report["ground_truth"].items():
            lines.append(
                f"| {name} | {v['num_faces']} | {v['psnr_before']:.2f} | "
                f"{v['psnr_after']:.2f} | {v['fraction_closer']:.2f} |"
            )
    lines += ["", f"Took {report['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def strip_image(strip: np.ndarray) -> np.ndarray:
    """(rows, degrees, S, S, 3) in [-1, 1] -> one uint8 picture, faces enlarged SCALE x."""
    return tile(enlarge(to_uint8(strip), SCALE), gap=2)


def write_pictures(pictures: dict, report: dict, directory: str) -> list[str]:
    """strip_<method>_<attribute>.png per method and attribute, components_<method>.png
    for SeFa and PCA, probability.png and projection.png."""
    written = []
    for method, by_name in pictures["methods"].items():
        for name, p in by_name.items():
            path = os.path.join(directory, f"strip_{method}_{name}.png")
            Image.fromarray(strip_image(p["strip"])).save(path)
            written.append(path)
    for method, gallery in pictures.get("components", {}).items():
        path = os.path.join(directory, f"components_{method}.png")
        Image.fromarray(strip_image(gallery)).save(path)
        written.append(path)
    written.append(_plot(pictures, report, os.path.join(directory, "probability.png")))
    if "projection" in pictures:
        path = os.path.join(directory, "projection.png")
        written.append(_projection_plot(pictures["projection"], report["space"], path))
    return written


def _projection_plot(projection: dict, space: str, path: str) -> str:
    """One panel per attribute (label off / on) and one for the people with most photos."""
    from matplotlib.figure import Figure  # noqa: PLC0415 (no pyplot: no global state)

    points, labels = projection["points"], projection["labels"]
    panels = len(labels) + 1
    figure = Figure(figsize=(3.2 * panels, 3.2))
    for i, (name, on) in enumerate(labels.items()):
        axis = figure.add_subplot(1, panels, i + 1)
        for value, colour in ((False, "tab:blue"), (True, "tab:orange")):
            chosen = np.asarray(on, bool) == value
            axis.scatter(*points[chosen].T, s=3, alpha=0.5, c=colour,
                         label=("on" if value else "off"))  # fmt: skip
        axis.set(title=name, xlabel="PC 1", ylabel="PC 2")
        axis.legend(fontsize=7, markerscale=3)
    axis = figure.add_subplot(1, panels, panels)
    axis.scatter(*points.T, s=2, c="0.85")
    for person in projection["people"]:
        axis.scatter(*points[projection["identities"] == person].T, s=12, label=str(person))
    axis.set(title="people with most photos", xlabel="PC 1", ylabel="PC 2")
    axis.legend(fontsize=6, markerscale=1, title="identity", title_fontsize=6)
    figure.suptitle(f"fit photos' latents ({space}) on their two principal axes", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    return path


def _plot(pictures: dict, report: dict, path: str) -> str:
    from matplotlib.figure import Figure  # noqa: PLC0415 (no pyplot: no global state)

    methods = list(pictures["methods"])
    figure = Figure(figsize=(4 * len(methods), 3.2))
    for i, method in enumerate(methods):
        axis = figure.add_subplot(1, len(methods), i + 1)
        for name, p in pictures["methods"][method].items():
            axis.plot(report["degrees"], p["probability"].mean(axis=0), marker="o", label=name)
        axis.set(title=method, xlabel="degrees", ylabel="attacker's probability", ylim=(0, 1))
        axis.grid(alpha=0.3)
    figure.axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    return path
