"""The report's tables beyond the paper: per-class recall, conformal sets, operating points, the Grad-CAM
lung share (COVID and pneumonia), and the lung segmenter's section."""

from __future__ import annotations

from pathlib import Path

from ..formatting import fmt_num, fmt_pct
from .render import Section
from .table import Table


def shortcut_table(runs: list[dict]) -> Table | None:
    """Grad-CAM mass inside the lung mask per COVID run: low values flag shortcut learning."""
    return _cam_table([r for r in runs if r["dataset"] == "covid"], "cam", "", chance=False)


def pneumonia_cam_table(runs: list[dict], masks: dict | None) -> Table | None:
    """Exp. 3's Grad-CAM lung share, measured on masks the COVID-trained segmenter predicted (or given ones)."""
    runs = [r for r in runs if r["dataset"] == "pneumonia"]
    if not runs:
        return None
    title = " on the pneumonia set, Exp. 3"
    if masks is None:
        missing = Table("cam_pneumonia", f"Grad-CAM energy inside the lungs{title}", ["Why it is missing"])
        missing.rows.append(
            [
                "no lung masks for the pneumonia set: train a segmenter (--segmenter-epochs N) or pass "
                "--pneumonia-masks MASK_DIR"
            ]
        )
        return missing
    t = _cam_table(runs, "cam_pneumonia", title, chance=True)
    if t is not None and masks.get("source") == "segmenter":
        t.notes.append(
            "The pneumonia set ships no masks: these are the reproduction's lung segmenter's predictions "
            "(`pneumonia_masks/`). It trained on the COVID split only, so it never saw a pneumonia image."
        )
    elif t is not None:
        t.notes.append(f"Masks given with --pneumonia-masks ({masks.get('dir')}).")
    return t


def _cam_table(runs: list[dict], key: str, where: str, chance: bool) -> Table | None:
    rows = [r for r in runs if (r["test"].get("cam_in_lungs") or {}).get("overall")]
    skipped = sorted(
        {
            r["test"]["cam_in_lungs"]["skipped"]
            for r in runs
            if (r["test"].get("cam_in_lungs") or {}).get("skipped")
        }
    )
    title = f"Grad-CAM energy inside the lungs{where} (test set; CAM of the predicted class, grouped by true class)"
    if not rows:
        if not skipped:
            return None
        t = Table(key, title, ["Why it is missing"])
        t.rows += [[reason] for reason in skipped]
        return t
    t = Table(
        key,
        title,
        ["Run", "Input", "Channels", "All test images"]
        + (["Lung share of the image (chance)"] if chance else [])
        + [f"True {c}" for c in rows[0]["test"]["classes"]],
    )
    for r in rows:
        cam = r["test"]["cam_in_lungs"]
        t.rows.append(
            [
                r["name"],
                r["config"].get("input", ""),
                str(r["config"].get("channels", "")),
                _with_ci(cam["overall"]),
            ]
            + ([fmt_num(cam["overall"].get("mask_share"), 3)] if chance else [])
            + [_with_ci(cam["per_class"].get(c) or {}) for c in r["test"]["classes"]]
        )
    t.notes.append(
        "CAM of the predicted class, grouped by true class: the fraction of each image's Grad-CAM mass "
        "for the class the model predicted that falls inside its lung mask, averaged over all test images "
        "and over the images of each true class, with its 95% interval (t, over images) in brackets. A model "
        "reading the lungs scores near 1; one reading "
        "markers, borders or body habitus scores low (DeGrave et al. 2021)."
        + (
            " A model that ignores position scores about the lung share of the image (chance)."
            if chance
            else ""
        )
    )
    return t


def _with_ci(summary: dict) -> str:
    """``0.412 [0.371, 0.453]``: a mean Grad-CAM share with its 95% interval, when one was recorded."""
    ci = summary.get("ci")
    text = fmt_num(summary.get("mean"), 3)
    if ci and ci[0] is not None and ci[1] is not None:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def operating_table(runs: list[dict]) -> Table | None:
    rows = [r for r in runs if r["test"].get("operating_point")]
    if not rows:
        return None
    t = Table(
        "op",
        "Operating points chosen on validation (target sensitivity 0.95)",
        [
            "Run",
            "Positive class",
            "Threshold",
            "Test sensitivity",
            "Test specificity",
            "Argmax sensitivity",
            "Argmax specificity",
        ],
    )
    for r in rows:
        op = r["test"]["operating_point"]
        te, am = op["test"], op["test_argmax"]
        t.rows.append(
            [
                r["name"],
                op["positive"],
                f"{op['threshold']:.3f}",
                fmt_pct(te["sensitivity"], te.get("sensitivity_ci")),
                fmt_pct(te["specificity"], te.get("specificity_ci")),
                fmt_pct(am["sensitivity"]),
                fmt_pct(am["specificity"]),
            ]
        )
    return t


def recall_tables(runs: list[dict]) -> list[Table]:
    """Per-class recall (sensitivity) with Wilson intervals of the headline runs, one table per dataset."""
    tables = []
    for dataset in ("covid", "pneumonia"):
        pool = [r for r in runs if r["dataset"] == dataset]
        if not pool:
            continue
        classes = pool[0]["test"]["classes"]
        t = Table(
            f"recall-{dataset}",
            f"Per-class recall (sensitivity) of the headline {dataset} model, test set",
            ["Run", *classes],
        )
        for r in pool:
            pc = r["test"]["per_class"]
            t.rows.append([r["name"]] + [fmt_pct(pc[c]["recall"], pc[c].get("recall_ci")) for c in classes])
        t.notes.append("Brackets: Wilson 95% intervals. The paper stresses COVID and PNEUMONIA sensitivity.")
        tables.append(t)
    return tables


def conformal_table(runs: list[dict]) -> Table | None:
    """Coverage and set sizes of the conformal prediction sets of the headline runs."""
    rows = [r for r in runs if r["test"].get("conformal")]
    if not rows:
        return None
    t = Table(
        "conformal",
        "Conformal prediction sets of the headline models (LAC, fitted on validation, scored on test)",
        [
            "Run",
            "alpha",
            "Test coverage",
            "Mean set size",
            "Single-class sets",
            "Empty sets",
            "Per-class coverage (n)",
        ],
    )
    for r in rows:
        c = r["test"]["conformal"]
        counts = c.get("per_class_n") or {}
        per = ", ".join(
            f"{k} {fmt_pct(v)}" + (f" (n = {counts[k]})" if k in counts else "")
            for k, v in c["per_class_coverage"].items()
        )
        t.rows.append(
            [
                r["name"],
                f"{c['alpha']:g}",
                f"{fmt_pct(c['coverage'])} (target {fmt_pct(1 - c['alpha'])})",
                f"{c['mean_set_size']:.2f}",
                fmt_pct(c["singleton_fraction"]),
                fmt_pct(c.get("empty_fraction")),
                per,
            ]
        )
    t.notes.append(
        "A set holds the true class with probability at least 1 - alpha over test images (split conformal, "
        "LAC: every class with probability at least 1 - threshold). The guarantee is marginal, over all test "
        "images: a single class's coverage is not guaranteed, and a rare class's can fall well below the target "
        "(hence each class's n). A set with more than one class is the model saying it is unsure; an empty set "
        "says no class is plausible at this coverage, a reason to look at the image. `cxrtl predict` prints these "
        "sets as `prediction_set`."
    )
    return t


def _interval(m: dict) -> str:
    return f"{fmt_num(m.get('mean'), 3)} [{fmt_num(m.get('ci_low'), 3)}, {fmt_num(m.get('ci_high'), 3)}]"


def segmenter_section(seg: dict | None) -> Section | None:
    """The lung segmenter trained on the COVID split: test Dice and IoU with intervals, and the overlays."""
    if not seg:
        return None
    if "skipped" in seg:
        return Section("Lung segmenter", [f"No lung segmenter was trained: {seg['skipped']}"])
    test = seg["test"]
    t = Table("segmenter", "Lung segmenter on the COVID test split", ["Metric", "Mean [95% interval]"])
    t.rows += [["Dice", _interval(test["dice"])], ["IoU", _interval(test["iou"])]]
    t.notes.append(
        f"{test['n_images']} test images; {test['interval']}. Published U-Nets on the real COVID-19 "
        "Radiography Database masks reach Dice 0.95-0.97 (not measured here)."
    )
    init = "random weights" if seg.get("random_init") else "ImageNet encoder weights"
    para = (
        f"A U-Net (`{seg.get('encoder')}` encoder, {seg.get('image_size')} px, {seg.get('epochs')} epochs from "
        f"{init}; best epoch {seg.get('best_epoch')} by validation Dice) trained on the train part of this "
        "reproduction's COVID split, so no classifier's test image trained it. Its masks let masked models "
        "and the Grad-CAM lung check work on images without masks (`cxrtl data masks`, `predict --segmenter`)."
    )
    fig = Path(seg["figure"])
    figures = [("Best, median and worst test images: true lungs (green), predicted (red)", fig)]
    return Section("Lung segmenter", [para], [t], figures if fig.is_file() else [])
