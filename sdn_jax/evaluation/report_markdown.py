"""eval/report.md: report.json (sdn_jax.evaluation.evaluate) as tables a person reads.

Beside our figures: issue 4's targets, met or not, and the paper's CelebA figures with a
line on which of them compare with ours.
"""

from sdn_jax.evaluation.outputs import OUTPUTS, SHOULD_MATCH

# The paper's CelebA 128px figures (METHOD.md section 6). Not comparable to ours as
# numbers: other data, resolution and recognizer (FaceNet / VGGFace vs our attacker).
PAPER = {
    ("anonymized", "ssim"): 0.96,
    ("recovered", "psnr"): 28.91,
    ("recovered", "ssim"): 0.872,
    ("anonymized", "fd"): "FID 28 (InceptionV3)",
}


# Issue 4's bars on the test split: (figure, where it is in report.json, at least?, bar).
TARGETS = (
    ("original faces verified", ("original", "identity_match_rate"), True, 0.90),
    ("anonymized faces verified", ("anonymized", "identity_match_rate"), False, 0.05),
    ("recovered faces verified", ("recovered", "identity_match_rate"), True, 0.85),
    ("wrong-password faces verified", ("recovered_wrong_password", "identity_match_rate"),
     False, 0.05),
    ("wrong-attribute faces verified", ("recovered_wrong_attributes", "identity_match_rate"),
     False, 0.10),
    ("recovered PSNR (dB)", ("recovered", "psnr"), True, 24.0),
    ("requested attributes shown", ("anonymized", "attribute_accuracy"), True, 0.80),
    ("anonymized SSIM to the original", ("anonymized", "ssim"), True, 0.5),
    ("one wrong bit fails verification", ("security", "goal_one_bit_fails_verification",
     "fraction"), True, 0.95),
)  # fmt: skip


def _fid_ratio(report: dict, name: str):
    """An output's FID over the blurred-photo reference's, in the same report."""
    fid = _lookup(report, ("realism", "fid")) or {}
    return fid[name] / fid["blurred_reference"] if name in fid else None


# Issue 16's realism bars: (figure, figure of the report, bar); all at most the bar.
REALISM_TARGETS = (
    ("anonymized FID / blurred-photo FID", lambda r: _fid_ratio(r, "anonymized"), 0.6),
    ("anonymized: pixel two-sample accuracy",
     lambda r: _lookup(r, ("realism", "two_sample", "anonymized", "pixel_logistic")), 0.80),
    ("wrong-password FID / blurred-photo FID",
     lambda r: _fid_ratio(r, "recovered_wrong_password"), 0.8),
)  # fmt: skip


def _lookup(report: dict, path):
    value = report
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def targets_markdown(report: dict) -> str:
    """The targets table: each bar, our figure, met or not (figures absent are skipped).
    Identity figures also show the one-photo attacker's, for comparison only."""
    lines = [
        "| figure | target | ours | met | one-photo attacker |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, path, at_least, bar in TARGETS:
        value = _lookup(report, path)
        if value is None:
            continue
        met = value >= bar if at_least else value <= bar
        target = f"{'>=' if at_least else '<='} {bar:g}"
        one_photo = _lookup(report, (*path[:-1], path[-1] + "_one_photo"))
        lines.append(
            f"| {label} | {target} | {value:.3f} | {'yes' if met else '**no**'} | "
            f"{_fmt(one_photo)} |"
        )
    for label, figure, bar in REALISM_TARGETS:
        value = figure(report)
        if value is not None:
            lines.append(f"| {label} | <= {bar:g} | {value:.3f} | "
                         f"{'yes' if value <= bar else '**no**'} | - |")  # fmt: skip
    return "\n".join(lines)


def _fmt(value, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "-" if value is None else str(value)


def _photos(section: dict) -> str:
    """Gallery photos per person, as a count ("4") or a mean ("3.5")."""
    count = section.get("reference_photos_per_person")
    return "-" if count is None else f"{count:g}"


def _far_line(original: dict) -> str:
    """The false-accept rates the thresholds give on this split's originals."""
    if "false_accept_rate" not in original:
        return ""
    one = original.get("false_accept_rate_one_photo")
    return (
        f"On this split's originals they pass {original['false_accept_rate']:.4f} of "
        "pairs of a face and another person's gallery"
        + ("." if one is None else f" ({one:.4f} of pairs with another person's photo).")
    )


def _dataset(report: dict) -> str:
    """What the evaluation ran on, in words (older reports did not record it)."""
    data = report.get("dataset")
    if not data:
        return "an unrecorded dataset"
    name = {"synth_faces": "synthetic faces", "celeba": "CelebA"}.get(data["name"], data["name"])
    return f"{name} at {data['image_size']} px"


def _attacker_data(report: dict) -> str:
    """What the attacker learned from, where the report records it."""
    info = report["attacker"]
    if "train_images" not in info:
        return ""
    return (
        f" The attacker learned from {info['train_images']} train photos of "
        f"{info['train_people']} people ({info['train_people_skipped']} of them skipped: too "
        "few photos for its batches)."
    )


def report_markdown(report: dict) -> str:
    """report.json as tables a person reads, with the paper's figures beside ours."""
    lines = [
        f"# Evaluation at step {report['step']}",
        "",
        f"Dataset: {_dataset(report)}. {report['num_images']} faces of {report['num_people']} "
        f"people of the `{report['split']}` split (never seen in training), each with its own "
        "random key. Identity: the independent attacker verifies each output against its "
        f"gallery of the person (the mean embedding of {_photos(report)} other photos of them) "
        f"at its 1%-false-accept threshold ({report['attacker']['threshold']:.3f}). "
        f"{_far_line(report['original'])} One photo: the same attacker holding a single "
        f"other photo (its own 1% threshold), averaged over which.{_attacker_data(report)}",
        "",
        "| output | goal | identity match rate | one photo | faces failing | "
        "PSNR dB (worst decile) | SSIM | paper (CelebA 128px) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("original", *OUTPUTS):
        entry = report[name]
        goal = "recognised" if SHOULD_MATCH[name] else "not recognised"
        psnr = (
            f"{entry['psnr']:.2f} ({entry['psnr_distribution']['worst_decile']:.2f})"
            if "psnr" in entry
            else "-"
        )
        paper = ", ".join(
            f"{metric.upper()} {value}" for (out, metric), value in PAPER.items() if out == name
        )
        lines.append(
            f"| {name} | {goal} | {entry['identity_match_rate']:.3f} | "
            f"{_fmt(entry.get('identity_match_rate_one_photo'))} | "
            f"{entry['fraction_failing']:.3f} | {psnr} | {_fmt(entry.get('ssim'))} | "
            f"{paper or '-'} |"
        )
    anonymized = report["anonymized"]
    per_attribute = anonymized["attribute_accuracy_per_attribute"].items()
    wrong_password = report["recovered_wrong_password"]["fraction_within_4db_of_right_key"]
    wrong_attributes = report["recovered_wrong_attributes"]["fraction_within_4db_of_right_key"]
    lines += [
        "",
        "Anonymized faces:",
        f"- requested key attributes shown (attacker's attribute classifier): "
        f"{anonymized['attribute_accuracy']:.3f} "
        f"({', '.join(f'{k} {v:.2f}' for k, v in per_attribute)}); "
        f"the classifier on the real photos: {report['original']['attribute_accuracy']:.3f}",
        f"- fd_attacker (Frechet distance of attacker embeddings, anonymized vs real): "
        f"{anonymized['fd_attacker']:.4f}. This is not FID (see Realism for FID); the "
        "paper's FID 28 is not comparable.",
        f"- identity distance to the original (1 - cos): "
        f"{anonymized['identity_distance_to_original']:.3f}; "
        f"diversity (two passwords, one face): {anonymized['diversity']:.3f}",
        f"- edge-map linkage (nearest original by edges is the right one, chance "
        f"{1 / report['num_images']:.4f}): {anonymized['edge_map_linkage']:.3f}",
        f"- wrong password within 4 dB of the right key's recovery: {wrong_password:.3f} of "
        f"faces; wrong attributes: {wrong_attributes:.3f}",
        "",
        "Comparability: the paper measured CelebA at 128px with pretrained FaceNet / VGGFace, "
        f"LPIPS and InceptionV3 FID. Ours are {_dataset(report)} and an attacker trained "
        "here; PSNR and SSIM are the same definitions (scikit-image's), so only they compare "
        "in kind, and even they not in value unless the data is CelebA at 128 px.",
    ]
    lines += ["", "## Targets (issue 4)", "", targets_markdown(report)]
    if "realism" in report:
        lines += ["", "## Realism", "", realism_markdown(report["realism"])]
    if "validation" in report:
        v = report["validation"]
        lines += [
            "",
            f"## Known people (validation split, {v['num_images']} faces)",
            "",
            f"Galleries of {_photos(v)} photos. {_far_line(v['original'])}",
            "",
            "| output | identity match rate | one photo | faces failing | PSNR dB | SSIM |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name in ("original", *OUTPUTS):
            e = v[name]
            lines.append(
                f"| {name} | {e['identity_match_rate']:.3f} | "
                f"{_fmt(e.get('identity_match_rate_one_photo'))} | {e['fraction_failing']:.3f} | "
                f"{_fmt(e.get('psnr'), 2)} | {_fmt(e.get('ssim'))} |"
            )
    if "security" in report:
        lines += ["", "## Security", "", security_markdown(report["security"])]
    lines += ["", f"Evaluation time: {report['seconds']:.0f} s."]
    return "\n".join(lines)


# The realism table's rows: (report.json key, label), references first.
REALISM_ROWS = (
    ("real_floor", "other real photos (floor)"),
    ("blurred_reference", "real photos blurred, sigma 1 px"),
    ("anonymized", "anonymized"),
    ("recovered", "recovered"),
    ("recovered_wrong_password", "wrong password"),
    ("recovered_wrong_attributes", "wrong attributes"),
)


def realism_markdown(section: dict) -> str:
    """The realism judge's table (FID, KID, two-sample accuracies), what its reference
    rows mean, and the picture of anonymized and wrong-password faces."""
    n = section["num_images"]
    fid, kid, judged = section.get("fid", {}), section.get("kid", {}), section["two_sample"]
    lines = [
        "| set | FID | KID x 1000 | CNN two-sample | pixel-logistic two-sample |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, label in REALISM_ROWS:
        k = kid.get(name)
        kid_text = "-" if k is None else f"{1000 * k['mean']:.1f} ± {1000 * k['std']:.1f}"
        tests = judged.get(name, {})
        lines.append(
            f"| {label} | {_fmt(fid.get(name), 1)} | {kid_text} | {_fmt(tests.get('cnn'))} | "
            f"{_fmt(tests.get('pixel_logistic'))} |"
        )
    lines += [
        "",
        f"FID and KID (TF-FID InceptionV3 pool3) of each set against the {n} real probe "
        f"photos. The floor is {n} other real photos of the same people: what real photos "
        "score, since FID is biased upward at this sample size (real against real is not 0); "
        "compare FIDs only at equal sample sizes. KID is unbiased (about 0 for real photos). "
        "Two-sample: held-out accuracy of a classifier telling real photos from the outputs, "
        "trained on half of the people and tested on the other half, classes balanced "
        "(0.5: indistinguishable, 1.0: always told apart).",
    ]
    if "missing" in section:
        lines += ["", f"No FID / KID: {section['missing']}"]
    lines += [
        "",
        "![16 anonymized faces (above) and 16 wrong-password faces (below), each right of its "
        "original](realism.png)",
        "",
        "Above: original | anonymized; below: original | recovered with a wrong password "
        "(nearest-neighbour enlargement).",
    ]
    return "\n".join(lines)


def security_markdown(section: dict) -> str:
    """The security study's tables."""
    lines = [
        f"Key space: {section['key_space_bits']} bits; KDF (scrypt) "
        f"{section['kdf_seconds_per_guess']:.3f} s per guess.",
        "",
        "Worst decile: the 90th percentile of PSNR for wrong keys (the tenth of faces a "
        "wrong key brings closest back), the 10th for the right key (row 0).",
        "",
        "| wrong password bits | PSNR dB (worst decile) | identity match rate | "
        "within 4 dB of right key |",
        "| --- | --- | --- | --- |",
    ]
    for row in section["hamming"]:
        lines.append(
            f"| {row['bits']} | {row['psnr_mean']:.2f} ({row['psnr_worst_decile']:.2f}) | "
            f"{row['identity_match_rate']:.3f} | {row['fraction_within_4db_of_right_key']:.3f} |"
        )
    lines += ["", "| flipped key attribute | PSNR dB | identity match rate | within 4 dB |",
              "| --- | --- | --- | --- |"]  # fmt: skip
    for name, row in section["attribute_flips"].items():
        lines.append(
            f"| {name} | {row['psnr_mean']:.2f} | {row['identity_match_rate']:.3f} | "
            f"{row['fraction_within_4db_of_right_key']:.3f} |"
        )
    attack = section["random_key_attack"]
    goal = section["goal_one_bit_fails_verification"]
    lines += [
        "",
        f"Best of {attack['num_keys']} random keys on {attack['num_faces']} faces: best PSNR "
        f"{attack['best_psnr_mean']:.2f} dB (right key {attack['right_key_psnr_mean']:.2f}), best "
        f"similarity {attack['best_similarity_mean']:.3f} (right key "
        f"{attack['right_key_similarity_mean']:.3f}); faces linked by the best key: "
        f"{attack['fraction_faces_linked']:.3f}.",
        "",
        "| anonymized image stored as | recovered PSNR dB | identity match rate |",
        "| --- | --- | --- |",
    ]
    for name, row in section["recompression"].items():
        lines.append(f"| {name} | {row['psnr_mean']:.2f} | {row['identity_match_rate']:.3f} |")
    lines += [
        "",
        f"Goal (one wrong bit fails verification for >= 95% of faces): "
        f"{goal['fraction']:.3f} -> {'met' if goal['met'] else 'NOT met'}.",
    ]
    if "common_change_attack" in section:
        lines += ["", leaks_markdown(section)]
    return "\n".join(lines)


def leaks_markdown(section: dict) -> str:
    """What a folder of outputs gives away without the key (evaluation/leaks.py)."""
    common, pairs = section["common_change_attack"], section["known_pairs_attack"]
    chosen = "per_image_salt_chosen_attributes"
    rows = [
        ("folder mean subtracted, no original known", common["shared_key"],
         common["per_image_salt"], common.get(chosen)),
        *((f"mean change of {k} known pair(s) subtracted", pairs[k], pairs[k]["per_image_salt"],
           pairs[k].get(chosen)) for k in sorted(pairs, key=int)),
    ]  # fmt: skip
    lines = [
        "Attacks on a folder of anonymized faces: gains over the anonymized faces themselves "
        "(PSNR to the original, dB; the attacker's identity match rate). One shared key is the "
        "file commands' album mode; 'salt per image' (their default) gives each face its own "
        "password and, for the attributes `--attributes` leaves unchosen, its own attribute "
        "values; the last columns give each face its own password and the folder one "
        "attribute choice (`--attributes` naming every key attribute).",
        "",
        "| attack | one shared key: PSNR | match | salt per image: PSNR | match | "
        "salt per image, chosen attributes: PSNR | match |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def cells(gain):
        if gain is None:
            return "- | -"
        return f"{gain['psnr_gain_db']:+.2f} | {gain['match_rate_gain']:+.3f}"

    for name, *gains in rows:
        lines.append(f"| {name} | " + " | ".join(cells(g) for g in gains) + " |")
    read = common.get("per_image_salt_attributes_read")
    if read is not None:
        lines += [
            "",
            "Reading each face's attributes with the attacker's classifier "
            f"({read['attribute_read_accuracy']:.3f} of them right) and subtracting the "
            "change they predict (least squares over the folder) gains "
            f"{read['psnr_gain_db']:+.2f} dB and {read['match_rate_gain']:+.3f} match rate "
            "on the salt-per-image folder.",
        ]
    if "key_predictor_bit_accuracy" in section:
        lines += [
            "",
            f"Training's key predictor Q reads {section['key_predictor_bit_accuracy']:.3f} of "
            "password bits right from (original, anonymized) (0.5: nothing leaks; the file "
            "commands and `sdn_jax.export` never load or ship Q).",
        ]
    return "\n".join(lines)
