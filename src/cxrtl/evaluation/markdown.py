"""The Markdown summary (``report.md``) of one evaluation's ``metrics.json``."""

from __future__ import annotations

from pathlib import Path

from ..formatting import DASH, fmt_num, fmt_pct

NA = "n/a"  # a metric whose denominator is empty (e.g. precision of a class never predicted)


def _headline(m: dict, title: str) -> list[str]:
    """Title, source, headline numbers with intervals, and how far apart two accuracies must be."""
    lines = [f"# {title}", ""]
    src = m.get("source") or {}
    for key in ("checkpoint", "data", "split", "subset"):
        if src.get(key) is not None:
            lines.append(f"- {key}: `{src[key]}`")
    lo, hi = m["accuracy_ci"]
    return lines + [
        f"- images: {m['n']}",
        (
            f"- accuracy: {fmt_pct(m['accuracy'], m['accuracy_ci'], 2)} "
            f"({m['correct']}/{m['n']}, counted over all images)"
        ),
        f"- test loss (unweighted cross entropy): {m['loss']:.4f}",
        (
            f"- weighted F1: {fmt_pct(m['weighted']['f1'], m['weighted'].get('f1_ci'), 2)}; "
            f"macro F1: {fmt_pct(m['macro']['f1'], m['macro'].get('f1_ci'), 2)}"
        ),
        f"- expected calibration error: {m['ece']:.4f}",
        "",
        (
            f"With {m['n']} images the 95% interval on accuracy is {100 * (hi - lo):.1f} points wide: "
            "accuracies closer than about half that are not distinguishable on this subset."
        ),
        "",
    ]


def _prf_cells(e: dict) -> str:
    """Precision, recall, F1 cells with intervals; "n/a" where the metric is undefined (None)."""
    cells = (NA if e[k] is None else fmt_pct(e[k], e.get(f"{k}_ci")) for k in ("precision", "recall", "f1"))
    return " | ".join(cells)


def _class_table(m: dict) -> list[str]:
    """Per-class precision/recall/F1/AUC, then the weighted, macro and micro averages, each of its kind."""
    lines = [
        "| Class | Support | Precision | Recall (sensitivity) | F1 | ROC AUC |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in m["classes"]:
        e = m["per_class"][c]
        auc, auc_ci = m["roc_auc"].get(c), (m.get("roc_auc_ci") or {}).get(c)
        auc_txt = (
            DASH if auc is None else f"{auc:.4f}" + (f" [{auc_ci[0]:.4f}, {auc_ci[1]:.4f}]" if auc_ci else "")
        )
        mark = " †" if e.get("ci_unreliable") else ""
        lines.append(f"| {c}{mark} | {e['support']} | {_prf_cells(e)} | {auc_txt} |")
    for avg in ("weighted", "macro"):
        auc = m.get(f"roc_auc_{avg}")
        lines.append(f"| *{avg} avg* | {m['n']} | {_prf_cells(m[avg])} | {fmt_num(auc)} |")
    if m.get("roc_auc_micro") is not None:
        lines.append(
            f"| *micro avg (AUC only)* | {m['n']} | {DASH} | {DASH} | {DASH} | {fmt_num(m['roc_auc_micro'])} |"
        )
    return lines + _interval_notes(m)


def _interval_notes(m: dict) -> list[str]:
    """Which intervals rest on too few images (†), and how many bootstrap resamples each AUC interval used."""
    lines = [
        f"† {m['per_class'][c]['ci_note']}." for c in m["classes"] if m["per_class"][c].get("ci_unreliable")
    ]
    boot = m.get("bootstrap")
    if boot:
        dropped = [
            f"{c} {v['used']} ({v['dropped']} lacked {c} or had only {c})"
            for c, v in boot["roc_auc"].items()
            if v["dropped"] and m["roc_auc"].get(c) is not None
        ]
        lines.append(
            f"Bootstrap: {boot['resamples']} resamples of the images (seed {boot['seed']})"
            + (
                f"; resamples used by the AUC intervals: {', '.join(dropped)}."
                if dropped
                else ", none dropped."
            )
        )
    return [""] + lines if lines else []


def _confusion(m: dict) -> list[str]:
    lines = [
        "",
        "Confusion matrix (rows: true, columns: predicted):",
        "",
        "| True \\ Predicted | " + " | ".join(m["classes"]) + " |",
        "| --- |" + " --- |" * len(m["classes"]),
    ]
    for c, row in zip(m["classes"], m["confusion_matrix"]):
        lines.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
    return lines


def _operating_point(op: dict) -> list[str]:
    te, am = op["test"], op["test_argmax"]
    where = _SUBSET_WORDS.get(op.get("fitted_on", "val"), "validation")
    caveat = ["", f"Caution: {op['warning']}"] if op.get("warning") else []
    return caveat + [
        "",
        (
            f"Operating point for {op['positive']}: threshold {op['threshold']:.4f} on "
            f"P({op['positive']}), chosen on {where} for sensitivity "
            f">= {op['target_sensitivity']:.2f} "
            f"({where} sensitivity {fmt_pct(op['val']['sensitivity'])})."
        ),
        (
            f"On this subset: sensitivity {fmt_pct(te['sensitivity'], te['sensitivity_ci'])}, "
            f"specificity {fmt_pct(te['specificity'], te['specificity_ci'])} "
            f"(argmax: {fmt_pct(am['sensitivity'])} / {fmt_pct(am['specificity'])})."
        ),
    ]


def _conformal(c: dict) -> list[str]:
    """Coverage, set sizes, the empty fraction and per-class coverage with each class's n; what is guaranteed."""
    by_class = c.get("class_thresholds")
    limits = (
        "thresholds " + ", ".join(f"{k} {v:.4f}" for k, v in by_class.items())
        if by_class
        else f"threshold {c['threshold']:.4f}"
    )
    n_of = c.get("per_class_n") or {}
    per = ", ".join(
        f"{k} {NA if v is None else fmt_pct(v)} (n={n_of.get(k, '?')})"
        for k, v in c["per_class_coverage"].items()
    )
    kind = "class-conditional (Mondrian) LAC" if by_class else "LAC"
    guarantee = (
        "Each class has its own threshold, fitted on that class's images alone, so the 1 - alpha guarantee "
        "holds for each true class."
        if by_class
        else "The guarantee is marginal: at least 1 - alpha of all images, not of each class; a class's own "
        "coverage can be lower (`cxrtl evaluate --conformal-by-class` fits one threshold per class)."
    )
    return [
        "",
        "## Conformal prediction sets",
        "",
        (
            f"{kind} at alpha {c['alpha']:g} ({limits}), fitted on {c['n_calibration']} "
            f"{_SUBSET_WORDS.get(c['fitted_on'], c['fitted_on'])} images."
        ),
        "",
        "| Coverage (target) | Mean set size | Single-class sets | Empty sets |",
        "| --- | --- | --- | --- |",
        (
            f"| {fmt_pct(c['coverage'])} ({fmt_pct(1 - c['alpha'])}) | {c['mean_set_size']:.2f} | "
            f"{fmt_pct(c['singleton_fraction'])} | {fmt_pct(c['empty_fraction'])} |"
        ),
        "",
        f"Coverage per true class: {per}. {guarantee}",
        "An empty set means no class is plausible at this coverage: a reason to look at the image, not a "
        "prediction (`cxrtl predict` writes it `(empty)` in CSV and table output, `[]` in JSON).",
    ]


_SUBSET_WORDS = {"val": "validation", "calibration": "calibration"}
_PART_WORDS = {
    "temperature": "temperature",
    "operating_point": "operating point",
    "conformal": "conformal threshold",
}


def _fitted_on(parts: dict) -> list[str]:
    """Which subset each decision setting was fitted on; one line when that was the validation subset."""
    lines = [
        "",
        "Decision settings fitted on: "
        + "; ".join(f"{_PART_WORDS.get(k, k)}: {_SUBSET_WORDS.get(v, v)} subset" for k, v in parts.items())
        + ".",
    ]
    if "val" in parts.values():
        lines.append(
            "These were fitted on the validation subset, the one that chose the checkpoint, so their "
            "validation scores are slightly optimistic: coverage and sensitivity here can fall a little "
            "below target (a split with a calibration subset avoids this)."
        )
    return lines


def _cam(cam: dict) -> list[str]:
    """Share of CAM energy inside the lungs per true class (95% interval), beside the lungs' share (chance)."""
    if cam.get("skipped"):
        return ["", f"Grad-CAM mass inside the lung mask: not computed ({cam['skipped']})."]

    def cell(v: dict) -> str:
        chance, ci = v.get("mask_share"), v.get("ci")
        interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        vs = "" if chance is None else f" vs {fmt_num(chance, 3)} lung area"
        return f"{fmt_num(v.get('mean'), 3)}{interval}{vs} (n={v.get('n')})"

    lines = [
        "",
        "Grad-CAM mass inside the lung mask (CAM of the predicted class, grouped by true class; mean with its "
        "95% interval over images), beside the lung mask's share of the image, the level a CAM spread evenly "
        "would reach: " + ", ".join(f"{c} {cell(v)}" for c, v in cam.get("per_class", {}).items()),
    ]
    if cam.get("warning"):
        lines.append(f"Caution: {cam['warning']}.")
    return lines


def _extras(m: dict) -> list[str]:
    """Optional paragraphs: temperature scaling, operating point, Grad-CAM, figure links."""
    lines = []
    cal = m.get("calibrated")
    if cal:
        lines += [
            "",
            (
                f"Temperature scaling: T = {cal['temperature']:.4f}; loss {cal['loss']:.4f}, "
                f"ECE {cal['ece']:.4f} (uncalibrated: {m['loss']:.4f}, {m['ece']:.4f})."
            ),
        ]
        if cal["ece"] > m["ece"]:
            lines.append(
                "Temperature scaling made the ECE on this subset worse: the temperature fitted on validation "
                "does not carry over here, so prefer the uncalibrated probabilities."
            )
    if m.get("operating_point"):
        lines += _operating_point(m["operating_point"])
    if m.get("conformal"):
        lines += _conformal(m["conformal"])
    if m.get("fitted_on"):
        lines += _fitted_on(m["fitted_on"])
    if m.get("cam_in_lungs"):
        lines += _cam(m["cam_in_lungs"])
    if m.get("external"):
        lines += _external(m["external"])
    if m.get("ood"):
        lines += _ood(m["ood"])
    figs = m.get("figures") or []
    if figs:
        lines += [
            "",
            "Figures: "
            + ", ".join(f"[{Path(f).name}]({Path(f).name})" for f in figs if str(f).endswith(".png")),
        ]
    return lines


def _interval(ci) -> str:
    return f" [{100 * ci[0]:.1f}%, {100 * ci[1]:.1f}%]" if ci else ""


def _external(ext: dict) -> list[str]:
    """An external set: its class map, what was dropped, absent classes, the overlap check."""
    lines = ["", "## External set", ""]
    if ext.get("class_map"):
        lines.append("Class map: " + ", ".join(f"{k} -> {v}" for k, v in ext["class_map"].items()) + ".")
    if "kept" in ext:
        lines.append(f"Images scored: {ext['kept']} of {ext['images']}.")
    if ext.get("dropped_per_label"):
        lines.append(
            "Dropped (label not mapped): "
            + ", ".join(f"{k} {v}" for k, v in ext["dropped_per_label"].items())
            + "."
        )
    if ext.get("note"):
        lines.append(f"Note: {ext['note']}.")
    check = ext.get("overlap") or {}
    if check.get("checked"):
        if check["overlap"]:
            lines.append(
                f"**Overlap with training: {check['overlap']} image(s) duplicate images the model was trained "
                "or selected on; evaluated anyway (--allow-overlap), so these numbers are not a clean external "
                "validation.**"
            )
        else:
            lines.append(
                f"Overlap with training: none found among {check['training_images']} training and validation "
                "images (exact and near duplicates)."
            )
    elif check:
        lines.append(f"Overlap with training: not checked ({check.get('reason')}).")
    return lines


def _ood(o: dict) -> list[str]:
    """The out-of-distribution guard on this subset (and on --ood-data)."""
    external = "flag_rate" in o
    rate, ci = (
        (o["flag_rate"], o["flag_rate_ci"]) if external else (o["false_flag_rate"], o["false_flag_rate_ci"])
    )
    lines = [
        "",
        "## Out-of-distribution guard",
        "",
        f"Mahalanobis score on {o['layer']} features; threshold {o['threshold']:.4g} (the {o['percentile']:g}th "
        f"percentile of validation scores). Flagged {'on this external set' if external else 'here'}: "
        f"{o['flagged']} of {o['n']} = "
        + (f"{100 * rate:.1f}%{_interval(ci)}" if o["n"] else "n/a")
        + f" (about {100 * o['expected_false_flag_rate']:.1f}% of in-distribution images are, by design).",
    ]
    d = o.get("ood_data")
    if d:
        auroc = "n/a" if d["auroc"] is None else f"{d['auroc']:.3f}"
        lines.append(
            f"On --ood-data ({d['n']} images): detection AUROC {auroc}; flagged {d['flagged']} = "
            f"{100 * d['true_flag_rate']:.1f}%{_interval(d['true_flag_rate_ci'])}."
        )
    lines.append(
        'The guard asks "is this like the training images?"; a radiograph from another hospital usually is, '
        "and may still shift the classifier: measure that with an external evaluation."
    )
    return lines


def evaluation_markdown(metrics: dict, title: str = "Evaluation") -> str:
    """A human-readable summary of one ``metrics.json``: headline numbers with intervals, per class."""
    lines = _headline(metrics, title) + _class_table(metrics) + _confusion(metrics) + _extras(metrics)
    return "\n".join(lines) + "\n"
