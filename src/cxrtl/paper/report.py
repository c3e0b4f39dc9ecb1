"""The reproduction's report: one Markdown file and one self-contained HTML page from ``results.json``.

Both are built from the same sections (warnings first, then the paper's tables with our numbers beside
theirs, the best models' figures, training curves, per-run configs and times), so they never disagree.
The HTML embeds every figure as a data URI: one file to mail or attach to a lab notebook. This module
chooses and orders the sections; ``beyond`` builds the tables beyond the paper, ``render`` writes the files.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..formatting import fmt_pct, fmt_seconds
from ..fsutil import write_text
from .beyond import (
    conformal_table,
    operating_table,
    pneumonia_cam_table,
    recall_tables,
    segmenter_section,
    shortcut_table,
)
from .comparison_section import DATASET_NAMES, comparison_section
from .render import PAPER_CITATION, Section, render_html, render_markdown
from .seeds import configurations
from .table import Table
from .tables import fmt_mean_sd, paper_tables, write_tables

__all__ = ["PAPER_CITATION", "Section", "build_sections", "write_report"]


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


def _best_configurations(payload: dict) -> dict[str, dict]:
    """Each dataset's best configuration by mean validation accuracy (ties: the earlier one)."""
    configs = payload.get("configurations") or configurations(payload["runs"], {})
    out = {}
    for dataset in ("covid", "pneumonia"):
        pool = [c for c in configs if c["dataset"] == dataset and c.get("best_val_acc")]
        if pool:
            out[dataset] = max(pool, key=lambda c: (c["best_val_acc"]["mean"], -pool.index(c)))
    return out


def _headline_runs(payload: dict) -> list[dict]:
    """Every seed's run of each dataset's best configuration by mean validation accuracy."""
    best = {c["name"] for c in _best_configurations(payload).values()}
    return [r for r in payload["runs"] if r.get("configuration", r["name"]) in best]


def _summary(payload: dict) -> list[str]:
    """One paragraph: each dataset's best configuration (by validation) with its test accuracy."""
    runs = payload["runs"]
    parts = []
    for dataset, config in _best_configurations(payload).items():
        seeds = [r for r in runs if r.get("configuration", r["name"]) == config["name"]]
        test = seeds[0]["test"]
        val = config["best_val_acc"]["mean"]
        if len(seeds) == 1:
            figure = (
                f"test accuracy {fmt_pct(test['accuracy'], test.get('accuracy_ci'))} (95% Wilson interval)"
            )
        else:
            acc = config["accuracy"]
            figure = f"test accuracy {fmt_mean_sd(acc['mean'], acc['sd'])} (mean ± sd of {len(seeds)} seeds)"
        parts.append(
            f"the best {DATASET_NAMES.get(dataset, dataset)} configuration by validation accuracy "
            f"({fmt_pct(val)}) is `{config['name']}`: {figure} on {test['n']} test images"
        )
    if not parts:
        return []
    text = "; ".join(parts)
    text = text[0].upper() + text[1:] + "."
    n_comp = [c for c in payload.get("comparisons") or [] if not c.get("identical")]
    if n_comp:
        better = sum("is better" in (c.get("verdict") or "") for c in n_comp)
        text += (
            f" The paper's comparisons that show a difference after Holm's adjustment: {better} of "
            f"{len(n_comp)} (see below)."
        )
    return [
        text + " Configurations are chosen on validation; their test figures are reported, not maximised."
    ]


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
    summary = _summary(payload)
    sections = [Section("Summary", summary)] if summary else []
    sections.append(Section("Protocol", _protocol(payload)))
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
        sections.append(comparison_section(payload["comparisons"]))
    extra = [
        t
        for t in (
            *recall_tables(headline),
            conformal_table(headline),
            operating_table(runs),
            shortcut_table(runs),
            pneumonia_cam_table(runs, payload.get("pneumonia_masks")),
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
    seg_section = segmenter_section(payload.get("segmenter"))
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


def _md(payload: dict, sections: list[Section], out: Path) -> str:
    return render_markdown(_warnings(payload), sections, out)


def write_report(out: str | Path, payload: dict) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the tables (``tables/``) into ``out``."""
    out = Path(out).resolve()
    sections = build_sections(payload)
    write_tables(payload["runs"], out / "tables")
    return {
        "markdown": write_text(out / "report.md", _md(payload, sections, out)),
        "html": write_text(out / "report.html", render_html(_warnings(payload), sections)),
    }
