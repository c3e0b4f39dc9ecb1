"""The reproduction's report: one Markdown file and one self-contained HTML page from ``results.json``.

Both are built from the same sections (warnings first, then the paper's tables with our numbers beside
theirs, the best models' figures, training curves, per-run configs and times), so they never disagree.
The HTML embeds every figure as a data URI: one file to mail or attach to a lab notebook.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..formatting import fmt_num, fmt_pct, fmt_seconds
from ..fsutil import write_text
from .seeds import configurations
from .tables import Table, paper_tables, write_tables

PAPER_CITATION = (
    'Sun, Guo, Teoh: "A Transfer Learning Method for Covid-19 and Pneumonia Diagnosis Based on '
    'Chest Radiograph Classification"'
)


@dataclass
class Section:
    """A heading, paragraphs (Markdown-light: `code` and **bold** only), tables, figures and details."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)  # (caption, png path)
    details: list[tuple[str, str]] = field(default_factory=list)  # (summary, preformatted text)


# ------------------------------------------------------------------------------------------ content
def _warnings(payload: dict) -> list[str]:
    """The lines that must come first: random weights, synthetic data."""
    runs, meta = payload["runs"], payload.get("reproduction", {})
    lines = []
    random_runs = [r["name"] for r in runs if r["config"].get("random_init")]
    if random_runs:
        why = (
            " ImageNet weights were unavailable (--allow-random-init)."
            if meta.get("imagenet_unavailable")
            else ""
        )
        lines.append(f"**Runs started from random weights:** {', '.join(random_runs)}.{why}")
    if meta.get("synthetic"):
        lines.append(
            "**Synthetic data:** these results come from cxrtl's generated images and are NOT "
            "comparable with the paper's numbers; they show that the pipeline runs and learns."
        )
    return lines


def _protocol(payload: dict) -> list[str]:
    meta = payload.get("reproduction", {})
    out = [
        f"Profile `{meta.get('profile')}`: {meta.get('image_size')} px, {meta.get('epochs')} epoch(s), "
        f"batch {meta.get('batch_size')}, backbone `{meta.get('backbone')}`, seed {meta.get('seed')}"
        + (
            f", at most {meta['max_per_class']} images per class"
            if meta.get("max_per_class")
            else ", full data"
        )
        + ".",
        (
            f"Experiments {', '.join(map(str, meta.get('experiments', [])))}; training time "
            f"{fmt_seconds(sum(r.get('seconds') or 0 for r in payload['runs']))} over "
            f"{len(payload['runs'])} runs (this call: {fmt_seconds(meta.get('seconds'))})."
        ),
    ]
    seeds = meta.get("seeds") or [meta.get("seed")]
    out.append(
        f"{len(seeds)} training seed(s) per configuration ({', '.join(map(str, seeds))}) on one fixed split"
        + (": tables show mean ± sd over seeds." if len(seeds) > 1 else ".")
        + f" Test metrics are computed in {meta.get('eval_precision', 'fp32')} (the paper's numbers are fp32); "
        "each run's training precision is in the all-runs table."
    )
    if meta.get("covid_best"):
        out.append(
            f"Exp. 3's COVID model is `{meta['covid_best']}`, the Exp. 2 configuration with the highest "
            "**validation** accuracy (the authors compared configurations on the test set). Every "
            '"best" in this report is chosen on validation; its test figure is reported, not maximised.'
        )
    if meta.get("pneumonia"):
        proto = meta.get("split_protocol")
        text = {
            "paper": "the paper's image-level 7:2:1 re-split of all Kermany images (patients may "
            "straddle splits, which inflates results)",
            "patient": "a patient-grouped 7:2:1 re-split (no patient in two splits)",
            "official": "Kermany's official train/val/test folders",
        }.get(proto, proto)
        out.append(f"Pneumonia split protocol `{proto}`: {text}.")
    dropped = (meta.get("splits") or {}).get("overlap_dropped")
    if meta.get("exclude_overlap"):
        out.append(
            f"`--exclude-overlap`: {len(dropped or [])} pneumonia test image(s) whose content also "
            "appears in the COVID training or validation data were dropped from the pneumonia test set."
        )
    out.append(
        "COVID split 0.7/0.15/0.15 as in the paper's text (the authors' notebook used 0.7/0.2/0.1), "
        "stratified by class; validation picks the best epoch, the test split is touched once."
    )
    return out


def _run_figure(run: dict, stem: str) -> Path | None:
    path = Path(run["run_dir"]) / "test" / f"{stem}.png"
    return path if path.is_file() else None


def _shortcut_table(runs: list[dict]) -> Table | None:
    """Grad-CAM mass inside the lung mask per COVID run: low values flag shortcut learning."""
    return _cam_table([r for r in runs if r["dataset"] == "covid"], "cam", "", chance=False)


def _pneumonia_cam_table(runs: list[dict], masks: dict | None) -> Table | None:
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
    title = f"Grad-CAM energy inside the lungs{where} (test set)"
    if not rows:
        if not skipped:
            return None
        t = Table(key, title, ["Why it is missing"])
        t.rows += [[reason] for reason in skipped]
        return t
    t = Table(
        key,
        title,
        ["Run", "Input", "Channels", "Overall"]
        + (["Lung share (chance)"] if chance else [])
        + list(rows[0]["test"]["classes"]),
    )
    for r in rows:
        cam = r["test"]["cam_in_lungs"]
        t.rows.append(
            [
                r["name"],
                r["config"].get("input", ""),
                str(r["config"].get("channels", "")),
                fmt_num(cam["overall"].get("mean"), 3),
            ]
            + ([fmt_num(cam["overall"].get("mask_share"), 3)] if chance else [])
            + [fmt_num((cam["per_class"].get(c) or {}).get("mean"), 3) for c in r["test"]["classes"]]
        )
    t.notes.append(
        "Fraction of each image's Grad-CAM mass that falls inside its lung mask, averaged per true "
        "class. A model reading the lungs scores near 1; one reading markers, borders or body "
        "habitus scores low (DeGrave et al. 2021)."
        + (
            " A model that ignores position scores about the lung share of the image (chance)."
            if chance
            else ""
        )
    )
    return t


def _operating_table(runs: list[dict]) -> Table | None:
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


def _comparison_section(comparisons: list[dict]) -> Section:
    """The paper's comparisons, each in words, then as a table."""
    from ..evaluation.compare import in_words

    t = Table(
        "compare",
        "Paired comparisons on the same test images (accuracy of a minus b)",
        ["Exp.", "a", "b", "Difference", "95% interval", "p (McNemar exact)", "n", "a-only / b-only right"],
    )
    for c in comparisons:
        lo, hi = c["ci95"]
        t.rows.append(
            [
                str(c.get("experiment", "")),
                c["a"],
                c["b"],
                f"{100 * c['difference']:+.1f} pp",
                f"[{100 * lo:+.1f}, {100 * hi:+.1f}]",
                f"{c['p_value']:.3g}",
                str(c["n"]),
                "{} / {}".format(*c.get("discordant", ["", ""])),
            ]
        )
    t.notes.append(
        "McNemar's exact test counts the test images exactly one of the two gets right; the interval is a "
        "paired bootstrap over test images. With several seeds each side's probabilities are averaged over "
        "its seeds first. p < 0.05 is read as a real difference; several comparisons are made, so a "
        "p-value just under 0.05 deserves caution."
    )
    return Section(
        "Is a difference real? (the paper's comparisons)",
        [in_words(c) + "." for c in comparisons],
        [t],
    )


def _headline_runs(payload: dict) -> list[dict]:
    """Every seed's run of each dataset's best configuration by mean validation accuracy."""
    configs = payload.get("configurations") or configurations(payload["runs"], {})
    out = []
    for dataset in ("covid", "pneumonia"):
        pool = [c for c in configs if c["dataset"] == dataset and c.get("best_val_acc")]
        if pool:
            best = max(pool, key=lambda c: (c["best_val_acc"]["mean"], -pool.index(c)))
            out += [r for r in payload["runs"] if r.get("configuration", r["name"]) == best["name"]]
    return out


def _recall_tables(runs: list[dict]) -> list[Table]:
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


def _conformal_table(runs: list[dict]) -> Table | None:
    """Coverage and set sizes of the conformal prediction sets of the headline runs."""
    rows = [r for r in runs if r["test"].get("conformal")]
    if not rows:
        return None
    t = Table(
        "conformal",
        "Conformal prediction sets of the headline models (LAC, fitted on validation, scored on test)",
        ["Run", "alpha", "Test coverage", "Mean set size", "Single-class sets", "Per-class coverage"],
    )
    for r in rows:
        c = r["test"]["conformal"]
        per = ", ".join(f"{k} {fmt_pct(v)}" for k, v in c["per_class_coverage"].items())
        t.rows.append(
            [
                r["name"],
                f"{c['alpha']:g}",
                f"{fmt_pct(c['coverage'])} (target {fmt_pct(1 - c['alpha'])})",
                f"{c['mean_set_size']:.2f}",
                fmt_pct(c["singleton_fraction"]),
                per,
            ]
        )
    t.notes.append(
        "A set holds the true class with probability at least 1 - alpha over test images (split conformal, "
        "LAC: every class with probability at least 1 - threshold). A set with more than one class is the "
        "model saying it is unsure; `cxrtl predict` prints these sets as `prediction_set`."
    )
    return t


def _interval(m: dict) -> str:
    return f"{fmt_num(m.get('mean'), 3)} [{fmt_num(m.get('ci_low'), 3)}, {fmt_num(m.get('ci_high'), 3)}]"


def _segmenter_section(seg: dict | None) -> Section | None:
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


def _external_section(ext: dict | None) -> Section | None:
    """The best COVID model on an external set beside its own test split (``reproduce --external``)."""
    if not ext:
        return None
    if "skipped" in ext:
        return Section("External validation", [f"Not run: {ext['skipped']}."])
    cmp = ext["comparison"]
    names = [e["name"] for e in cmp["evaluations"]]
    t = Table(
        "external",
        f"{ext['run']}: its test split beside {ext['data']}",
        ["Metric", "Internal test", "External", "External - internal [95% interval]"],
    )
    for row in cmp["metrics"]:
        a, b = row["values"]
        d = row["differences"][0]
        cell = (
            "n/a"
            if d["difference"] is None
            else f"{d['difference']:+.3f}" + (f" [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" if d["ci"] else "")
        )
        t.rows.append([row["metric"], _num(a["value"]), _num(b["value"]), cell])
    info = ext.get("external") or {}
    paras = [
        f"The {ext.get('choice', 'best COVID model by validation accuracy')} (`{ext['run']}`) scored on "
        f"{ext['n']} external images "
        f"(`{names[1]}`) and on its own test split (`{names[0]}`). Differences use an unpaired bootstrap "
        "(different images). The guard against shared images ran first: "
        + _overlap_words(info.get("overlap") or {})
    ]
    if info.get("dropped_per_label"):
        paras.append(
            "Dropped (label not mapped): "
            + ", ".join(f"{k} {v}" for k, v in info["dropped_per_label"].items())
        )
    if info.get("note"):
        paras.append(f"Note: {info['note']}.")
    return Section("External validation", paras, [t])


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _overlap_words(check: dict) -> str:
    if not check.get("checked"):
        return f"not checked ({check.get('reason')})."
    if check.get("overlap"):
        return f"**{check['overlap']} image(s) duplicate training images (allowed with --allow-overlap).**"
    return f"no duplicates of the {check['training_images']} training and validation images."


def build_sections(payload: dict) -> list[Section]:
    """Every section of the report, in order."""
    runs = payload["runs"]
    tables = paper_tables(runs)
    sections = [Section("Protocol", _protocol(payload))]
    paper_keys = [k for k in ("II", "III", "IV", "V", "VI") if k in tables]
    if paper_keys:
        widest = max(r["test"]["accuracy_ci"][1] - r["test"]["accuracy_ci"][0] for r in runs)
        sections.append(
            Section(
                "Results beside the paper's",
                [
                    (
                        "Each cell is this reproduction's value with its 95% interval in brackets (mean ± sd "
                        "where a configuration ran with several seeds); the paper's published value stands "
                        "beside it, labelled as what it is (Table III's are macro averages, whatever its "
                        "caption says). Accuracy is counted over all test images, as the paper's is. "
                        f"The widest accuracy interval here spans {100 * widest:.1f} "
                        "points: differences smaller than an interval are not evidence that one configuration is "
                        "better."
                    )
                ],
                [tables[k] for k in paper_keys],
            )
        )
    figures = []
    headline = _headline_runs(payload)
    covid_best = next((r for r in headline if r["dataset"] == "covid"), None)
    pneu_best = next((r for r in headline if r["dataset"] == "pneumonia"), None)
    for label, run in (("COVID", covid_best), ("pneumonia", pneu_best)):
        if run is None:
            continue
        for stem, what in (("roc", "ROC curves"), ("confusion", "confusion matrix")):
            fig = _run_figure(run, stem)
            if fig:
                figures.append(
                    (
                        (
                            f"Best {label} model (`{run['name']}`, chosen on validation): {what} on the "
                            "test set"
                        ),
                        fig,
                    )
                )
    if figures:
        sections.append(Section("Best models (paper Fig. 6-8)", figures=figures))
    if payload.get("comparisons"):
        sections.append(_comparison_section(payload["comparisons"]))
    extra = [
        t
        for t in (
            *_recall_tables(headline),
            _conformal_table(headline),
            _operating_table(runs),
            _shortcut_table(runs),
            _pneumonia_cam_table(runs, payload.get("pneumonia_masks")),
        )
        if t
    ]
    if extra:
        sections.append(
            Section(
                "Beyond the paper",
                [
                    (
                        "The paper scores argmax predictions; a screening user needs a threshold with known "
                        "sensitivity, and a set of classes with known coverage tells a reader when the model is "
                        "unsure. Grad-CAM mass inside the lungs shows whether a model looks where a "
                        "radiologist would. Headline models: the best configuration of each dataset by "
                        "validation accuracy."
                    )
                ],
                extra,
            )
        )
    seg_section = _segmenter_section(payload.get("segmenter"))
    if seg_section:
        sections.append(seg_section)
    ext_section = _external_section(payload.get("external"))
    if ext_section:
        sections.append(ext_section)
    sections.append(Section("All runs", tables=[tables["runs"]]))
    curves = [(f"`{r['name']}`", fig) for r in runs if (fig := _run_figure(r, "history"))]
    if curves:
        sections.append(Section("Training curves", figures=curves))
    details = [(f"{r['name']}: config", json.dumps(r["config"], indent=2, sort_keys=True)) for r in runs]
    sections.append(Section("Exact configuration of each run", details=details))
    return sections


# ------------------------------------------------------------------------------------------ rendering
def _md(payload: dict, sections: list[Section], out: Path) -> str:
    lines = [f"> {w}" for w in _warnings(payload)]
    if lines:
        lines.append("")
    lines += [
        f"# cxrtl reproduction of {PAPER_CITATION}",
        "",
        "_A research tool's output, not a medical device's._",
        "",
    ]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for p in s.paragraphs:
            lines += [p, ""]
        for t in s.tables:
            lines += [t.to_markdown(), ""]
        for caption, fig in s.figures:
            lines += [
                f"![{caption}]({_link(fig, out)})",
                "",
                f"_{caption}_",
                "",
            ]
        for summary, text in s.details:
            lines += [f"<details><summary>{summary}</summary>", "", "```json", text, "```", "</details>", ""]
    return "\n".join(lines).rstrip() + "\n"


def _link(path: Path, out: Path) -> str:
    """``path`` relative to the folder of report.md (``out``), so links work wherever the report is opened."""
    import os

    return Path(os.path.relpath(Path(path).resolve(), Path(out).resolve())).as_posix()


def _inline(text: str) -> str:
    """Escape, then render `code` and **bold**."""
    import re

    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in t.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in t.rows
    )
    notes = "".join(f"<p class='note'>{_inline(n)}</p>" for n in t.notes if n)
    return f"<h3>{html.escape(t.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em}
th{background:#f3f3f3}.warn{background:#fff3cd;border:1px solid #e0c060;padding:.6em 1em;margin:.4em 0}
figure{display:inline-block;margin:.5em;max-width:48%;vertical-align:top}figure img{max-width:100%}
figcaption{font-size:.85em;color:#555}.note{font-size:.85em;color:#555}pre{background:#f7f7f7;padding:.6em;
overflow:auto}code{background:#f3f3f3;padding:0 .2em}"""


def _html(payload: dict, sections: list[Section]) -> str:
    parts = [f"<div class='warn'>{_inline(w)}</div>" for w in _warnings(payload)]
    parts += [
        f"<h1>cxrtl reproduction of {html.escape(PAPER_CITATION)}</h1>",
        "<p><em>A research tool's output, not a medical device's.</em></p>",
    ]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts += [f"<p>{_inline(p)}</p>" for p in s.paragraphs]
        parts += [_html_table(t) for t in s.tables]
        parts += [
            f"<figure><img alt='{html.escape(c)}' src='{_data_uri(f)}'><figcaption>{_inline(c)}"
            "</figcaption></figure>"
            for c, f in s.figures
        ]
        parts += [
            f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>"
            for summary, text in s.details
        ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>cxrtl reproduction</title>"
        f"<style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n"
    )


def write_report(out: str | Path, payload: dict) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the tables (``tables/``) into ``out``."""
    out = Path(out).resolve()
    sections = build_sections(payload)
    write_tables(payload["runs"], out / "tables")
    return {
        "markdown": write_text(out / "report.md", _md(payload, sections, out)),
        "html": write_text(out / "report.html", _html(payload, sections)),
    }
