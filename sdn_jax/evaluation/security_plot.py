"""The security study's figure (sdn_jax.evaluation.security) as one PNG."""

import numpy as np

from sdn_jax.evaluation.security import GOAL_FRACTION, WITHIN_DB


def _bars(ax, rows: dict, title: str) -> None:
    """PSNR means with 10th-90th percentile whiskers; the match rate written on each bar."""
    names = list(rows)
    means = np.array([rows[n]["psnr_mean"] for n in names])
    spread = np.array([[means[i] - rows[n]["psnr_p10"], rows[n]["psnr_p90"] - means[i]]
                       for i, n in enumerate(names)]).T  # fmt: skip
    ax.bar(names, means, yerr=np.maximum(spread, 0), capsize=3, color="tab:blue", alpha=0.7)
    for i, name in enumerate(names):
        ax.annotate(f"match {rows[name]['identity_match_rate']:.2f}", (i, means[i]),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 3),
                    textcoords="offset points")  # fmt: skip
    ax.set(title=title, ylabel="recovery PSNR (dB)")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)


def _reference_lines(ax, section: dict) -> None:
    right, anonymized = section["right_key"]["psnr_mean"], section["anonymized"]["psnr_mean"]
    ax.axhline(right, color="tab:green", label="right key")
    ax.axhline(right - WITHIN_DB, color="tab:green", ls="--", label="right key - 4 dB")
    ax.axhline(anonymized, color="grey", ls=":", label="anonymized image")


def _hamming_panels(psnr_ax, match_ax, section: dict) -> None:
    rows = section["hamming"]
    x = np.arange(len(rows))
    psnr_ax.plot(x, [r["psnr_mean"] for r in rows], "o-", label="mean")
    psnr_ax.fill_between(x, [r["psnr_p10"] for r in rows], [r["psnr_p90"] for r in rows],
                         alpha=0.25, label="10th-90th percentile")  # fmt: skip
    _reference_lines(psnr_ax, section)
    psnr_ax.set(title="Recovery vs wrong password bits", ylabel="PSNR vs original (dB)")
    match_ax.plot(x, [r["identity_match_rate"] for r in rows], "o-", label="identity match rate")
    failing = [r["fraction_failing"] for r in rows]
    match_ax.plot(x, failing, "s--", label="faces failing (at 0 bits: the right key's)")
    match_ax.axhline(1 - GOAL_FRACTION, color="tab:red", ls=":", label="goal at 1 bit (max)")
    match_ax.set(title="Attacker verification vs wrong bits", ylabel="share of faces",
                 ylim=(-0.02, 1.02))  # fmt: skip
    for ax in (psnr_ax, match_ax):
        ax.set_xticks(x, [str(r["bits"]) for r in rows])
        ax.set_xlabel("Hamming distance to the right password (bits)")
        ax.legend(fontsize=7)


def _summary_text(ax, section: dict) -> None:
    attack, goal = section["random_key_attack"], section["goal_one_bit_fails_verification"]
    lines = [
        f"faces studied: {section['num_faces']}",
        f"key space: {section['key_space_bits']} bits "
        f"({section['password_bits']} password + {section['attribute_bits']} attributes)",
        f"scrypt KDF: {section['kdf_seconds_per_guess']:.3f} s per passphrase guess",
        f"raw-key search: {section['raw_key_search_years']:.3g} years (this machine)",
        f"best of {attack['num_keys']} random keys ({attack['num_faces']} faces):",
        f"  PSNR {attack['best_psnr_mean']:.2f} dB vs right key "
        f"{attack['right_key_psnr_mean']:.2f}",
        f"  similarity {attack['best_similarity_mean']:.3f} vs right key "
        f"{attack['right_key_similarity_mean']:.3f}",
        f"  faces linked by some key: {attack['fraction_faces_linked']:.3f}",
        f"one wrong bit fails verification: {goal['fraction']:.3f} "
        f"(goal {goal['target']:.2f}: {'met' if goal['met'] else 'NOT met'})",
    ]
    ax.axis("off")
    ax.text(0.0, 1.0, "\n".join(lines), va="top", family="monospace", fontsize=8)


def plot_security(section: dict, path: str) -> None:
    """The study as one PNG: Hamming curves, attribute flips, copies, attack summary."""
    from matplotlib.figure import Figure  # noqa: PLC0415 (no pyplot: no global state)

    figure = Figure(figsize=(15, 8.5), layout="constrained")
    axes = figure.subplots(2, 3)
    _hamming_panels(axes[0, 0], axes[0, 1], section)
    _bars(axes[0, 2], section["attribute_flips"], "Right password, one key attribute flipped")
    _reference_lines(axes[0, 2], section)
    axes[0, 2].legend(fontsize=7, loc="lower right")
    _bars(axes[1, 0], section["recompression"], "Right key on copies of the anonymized image")
    attack = section["random_key_attack"]
    axes[1, 1].bar(["right key", f"best of {attack['num_keys']}", "anonymized"],
                   [attack["right_key_psnr_mean"], attack["best_psnr_mean"],
                    section["anonymized"]["psnr_mean"]],
                   color=["tab:green", "tab:red", "grey"])  # fmt: skip
    axes[1, 1].set(title="Random-key attack (mean over faces)", ylabel="recovery PSNR (dB)")
    _summary_text(axes[1, 2], section)
    figure.suptitle("SDN security study")
    figure.savefig(path, dpi=80)
