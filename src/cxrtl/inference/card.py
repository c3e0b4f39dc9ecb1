"""The model card of a bundle: generated from what cxrtl recorded about a run, never written by hand.

:func:`cxrtl.inference.card_facts.gather_facts` collects the facts into one dict; :func:`render_card` turns it
into a Hugging Face model card (YAML front matter with ``model-index``, then Markdown). What was never
measured is said to be unmeasured, never shown as an empty table; synthetic data and random initial weights
are stated first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.records import SPLITS
from ..decisions import Decisions
from .card_facts import LAYOUT_NAMES


# ------------------------------------------------------------------------------------------ rendering
def _fitted(part) -> str:
    """``fitted on the val subset (120 images, 2026-12-03)``."""
    n = f"{part.n} images, " if part.n else ""
    when = (part.fitted_utc or "")[:10] or "date not recorded"
    return f"fitted on the {part.fitted_on} subset ({n}{when})"


def decision_sentences(record: Decisions, metrics: dict) -> list[str]:
    """The model's decision settings in sentences, rounded, each with what it was fitted on."""
    lines = []
    t = record.temperature
    if t is not None:
        after = (metrics.get("calibrated") or {}).get("ece")
        lines.append(
            f"- Temperature scaling: T = {t.value:.3f}, {_fitted(t)}; test ECE after scaling "
            f"{_num(after, '.4f')}. Prediction applies T."
        )
    else:
        lines.append("- Not temperature-calibrated (`cxrtl evaluate --calibrate` fits it).")
    op = record.operating_point
    if op is not None:
        target = f" to reach sensitivity {100 * op.target_sensitivity:.0f}%" if op.target_sensitivity else ""
        lines.append(
            f"- Operating point: a row is flagged {op.positive} when P({op.positive}) >= {op.threshold:.3f}, "
            f"chosen{target}, {_fitted(op)}."
        )
    c = record.conformal
    if c is not None:
        scored = metrics.get("conformal") or {}
        tested = ""
        if isinstance(scored.get("coverage"), (int, float)):
            tested = (
                f" On the test subset the sets covered the true class for {100 * scored['coverage']:.1f}% of "
                f"{scored.get('n', '?')} images (target {100 * (1 - c.alpha):.0f}%, "
                + ("for each class" if c.class_thresholds else "a marginal guarantee, not per class")
                + f"), with {scored.get('mean_set_size', 0):.2f} classes per set on average"
                + (
                    f" and {100 * scored['empty_fraction']:.1f}% empty sets (no class plausible: look at the image)."
                    if scored.get("empty_fraction")
                    else "."
                )
            )
        kind = "one threshold per class" if c.class_thresholds else f"threshold {c.threshold:.3f}"
        lines.append(
            f"- Conformal prediction sets ({c.method.upper()}, coverage {100 * (1 - c.alpha):.0f}%, {kind}), "
            f"{_fitted(c)}.{tested}"
        )
        if record.usable_conformal is None:
            lines.append("  They are not applied: the temperature changed after they were fitted.")
    else:
        lines.append("- Conformal prediction sets: not fitted (`cxrtl evaluate --conformal 0.1` fits them).")
    return lines


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _ci(ci) -> str:
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def front_matter(f: dict) -> str:
    """Hugging Face model card metadata: license, tags, library, pipeline and ``model-index``."""
    import yaml

    m = f["metrics"]
    head: dict[str, Any] = {
        "license": f.get("license", "other"),
        "library_name": "cxrtl",
        "pipeline_tag": "image-classification",
        "tags": ["cxrtl", "chest-x-ray", "radiography", "medical-imaging", "research-only", f["backbone"]],
    }
    if f["data"].get("synthetic"):
        head["tags"].append("synthetic-data")
    if m is not None:
        values: list[tuple[str, str, Any, dict | None]] = [
            ("accuracy", "Test accuracy", m.get("accuracy"), None)
        ]
        for avg in ("macro", "weighted"):
            values += [
                (k, f"{avg.title()} {k} (test)", (m.get(avg) or {}).get(k), {"average": avg})
                for k in ("precision", "recall", "f1")
            ]
        values.append(("roc_auc", "Macro ROC AUC (test)", m.get("roc_auc_macro"), {"average": "macro"}))
        metrics = [
            {"type": t, "name": n, "value": round(float(v), 6), **({"args": a} if a else {})}
            for t, n, v, a in values
            if isinstance(v, (int, float))
        ]
        dataset = {"name": Path(f["data"]["root"]).name or "unknown", "type": "image-folder", "split": "test"}
        head["model-index"] = [
            {
                "name": f["name"],
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "Image Classification"},
                        "dataset": dataset,
                        "metrics": metrics,
                    }
                ],
            }
        ]
    return "---\n" + yaml.safe_dump(head, sort_keys=False, allow_unicode=True) + "---\n"


def _warnings(f: dict) -> list[str]:
    """The lines that must be read first."""
    out = []
    synthetic = f["data"].get("synthetic")
    if synthetic:
        out.append(
            "> **Trained on synthetic data.** This model learned cxrtl's generated images, not radiographs. "
            "Its numbers show that the pipeline runs; they say nothing about real chest X-rays."
        )
    elif not f["data"].get("available"):
        out.append(
            f"> **Training data not checked:** the data folder `{Path(f['data']['root']).name}` was not available when "
            "this card was made, so whether it was synthetic, and its leakage, are unknown."
        )
    init = f["init"]
    if init["random"]:
        out.append(
            "> **Started from random weights**, not ImageNet: expect far lower accuracy than a pretrained model."
        )
    elif init.get("source_random"):
        out.append(
            f"> **Transferred from `{init['init']}`, which itself started from random weights** (not ImageNet)."
        )
    if f["metrics"] is None:
        out.append(
            "> **Never evaluated:** this run has no test metrics (`metrics.json`), so nothing below says how "
            "well it works. Evaluate it with `cxrtl evaluate RUN --data ROOT --out RUN/test` and export again."
        )
    return out


def _intended_use(f: dict) -> list[str]:
    return [
        "## Intended use",
        "",
        "Research on transfer learning for chest-radiograph classification: reproducing, comparing and "
        f"probing models. It outputs probabilities over {', '.join(f'`{c}`' for c in f['classes'])}.",
        "",
        "**Out of scope:** this is not a medical device and not for diagnosis, triage or any decision about "
        "a patient. It has not been validated on a clinical population, on other scanners or hospitals, or "
        "prospectively. Public COVID-19 datasets carry documented shortcuts (text markers, borders, "
        "adult vs pediatric sources), which a model can learn instead of disease.",
        "",
    ]


def _training_data(f: dict) -> list[str]:
    d, cfg = f["data"], f["config"]
    lines = ["## Training data", ""]
    layout = LAYOUT_NAMES.get(d.get("layout", ""), d.get("layout") or "unknown (data folder not available)")
    synthetic = "yes" if d.get("synthetic") else "no" if d.get("available") else "unknown"
    lines += [f"- Dataset folder: `{Path(d['root']).name}` ({layout}).", f"- Synthetic: {synthetic}."]
    lines.append(f"- Split protocol: {_protocol(cfg, d.get('layout'))}, seed {cfg.get('seed', 'n/a')}.")
    if f["split"]:
        cols = [s for s in SPLITS if s != "calibration" or f["split"].get(s)]  # calibration only when made
        lines += ["", "| class | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
        for c in f["classes"]:
            lines.append(f"| {c} | " + " | ".join(str(f["split"].get(s, {}).get(c, 0)) for s in cols) + " |")
        totals = [str(sum(f["split"].get(s, {}).values())) for s in cols]
        lines.append("| **all** | " + " | ".join(totals) + " |")
    lines += ["", *_leakage(d), ""]
    return lines


def _protocol(cfg: dict, layout: str | None) -> str:
    if cfg.get("official"):
        return "the dataset's official folders"
    ratios = cfg.get("ratios") or {
        "covid-radiography": "ratios 0.7/0.15/0.15",
        None: "the default ratios (COVID database 0.7/0.15/0.15, others 0.7/0.2/0.1)",
    }.get(layout, "ratios 0.7/0.2/0.1")
    grouped = (
        "grouped by patient" if cfg.get("group_by") == "patient" else "image-level (not grouped by patient)"
    )
    return f"stratified random split, {ratios}, {grouped}"


def _leakage(d: dict) -> list[str]:
    leak = d.get("leakage")
    if leak is None:
        return ["- Leakage check: not run (no data folder at export, or `--no-leakage-check`)."]
    pairs = ", ".join(f"{k}: {v}" for k, v in leak["pairs_by_splits"].items()) or "none"
    patients = (
        f"{len(leak['patients_straddling'])} patients have images in more than one split"
        if leak["patients_known"]
        else "patient ids unknown for this layout, so patient leakage could not be checked"
    )
    verdict = "no leakage found" if leak["ok"] else "**leakage found: test numbers may be inflated**"
    return [
        f"- Leakage check of this split over {leak['images']} images ({verdict}): "
        f"{len(leak['exact'])} exact and {len(leak['near'])} near-duplicate pairs across splits "
        f"(pHash distance <= {leak['threshold']}; by splits: {pairs}); {patients}."
    ]


def _preprocessing(f: dict) -> list[str]:
    pp = f["preprocess"]
    lines = [
        "## Preprocessing",
        "",
        f"- Input: {pp.get('input', 'raw')} images, {pp.get('channels')} channel(s), resized (shorter side "
        f"{pp.get('resize_size')}) and centre-cropped to {pp.get('image_size')} px, normalised with mean "
        f"{pp.get('mean')} and std {pp.get('std')}. cxrtl applies all of this itself (the ONNX graph too).",
    ]
    if pp.get("input") == "masked" and f.get("segmenter"):
        lines.append(
            "- **Lung masks are predicted for you:** this model was trained on lung-masked images, and the "
            "bundle carries its lung segmenter (`segmenter.safetensors`), which `cxrtl predict` and "
            "`cxrtl serve` use for every image given without a mask (`--save-masks DIR` writes them)."
        )
    elif pp.get("input") == "masked":
        lines.append(
            "- **Lung masks are needed at prediction time:** this model was trained on lung-masked images; "
            "give each image's mask (`--mask` / `--mask-dir`)."
        )
    return [*lines, ""]


def _training(f: dict) -> list[str]:
    import yaml

    s, cfg = f["summary"], f["config"]
    init = f["init"]["init"]
    start = {"imagenet": "ImageNet weights", "none": "random weights"}.get(init, f"the checkpoint `{init}`")
    keep = {"data", "out", "split", "device", "workers", "cache_dir", "overwrite", "progress"}
    shown = {k: v for k, v in cfg.items() if k not in keep}
    return [
        "## Training",
        "",
        f"- Backbone `{f['backbone']}` with the paper's head (Linear -> Mish -> Linear), started from {start}.",
        f"- Best epoch {s.get('best_epoch', f['epoch'])} of {s.get('epochs_completed', 'n/a')} "
        f"(validation accuracy {_pct(s.get('best_val_acc'))}); {s.get('seconds', 'n/a')} s on "
        f"{s.get('device', 'n/a')}.",
        "",
        "```yaml",
        yaml.safe_dump(shown, sort_keys=False).rstrip(),
        "```",
        "",
    ]


def _metrics(f: dict) -> list[str]:
    m = f["metrics"]
    if m is None:
        return ["## Test metrics", "", "Not evaluated: there are no test metrics for this model.", ""]
    lines = [
        "## Test metrics",
        "",
        f"On the run's test split ({m.get('n')} images), with 95% intervals "
        f"({(m.get('intervals') or {}).get('proportions', 'Wilson')} for proportions, bootstrap for F1 "
        "and AUC).",
        "",
        f"- Accuracy: {_pct(m.get('accuracy'))}{_ci(m.get('accuracy_ci'))} ({m.get('correct')}/{m.get('n')})",
        f"- Macro ROC AUC: {_num(m.get('roc_auc_macro'))}",
        "",
        "| class | precision | recall | F1 | AUC | support |",
        "| --- | --- | --- | --- | --- | ---: |",
    ]
    auc, auc_ci = m.get("roc_auc") or {}, m.get("roc_auc_ci") or {}
    for c, r in (m.get("per_class") or {}).items():
        a = auc.get(c)
        lines.append(
            f"| {c} | {_pct(r.get('precision'))}{_ci(r.get('precision_ci'))} | {_pct(r.get('recall'))}"
            f"{_ci(r.get('recall_ci'))} | {_pct(r.get('f1'))}{_ci(r.get('f1_ci'))} | {_num(a)}"
            f"{'' if not auc_ci.get(c) else ' [' + ', '.join(f'{x:.3f}' for x in auc_ci[c]) + ']'} "
            f"| {r.get('support')} |"
        )
    for avg in ("macro", "weighted"):
        r = m.get(avg) or {}
        lines.append(
            f"| *{avg}* | {_pct(r.get('precision'))}{_ci(r.get('precision_ci'))} | {_pct(r.get('recall'))}"
            f"{_ci(r.get('recall_ci'))} | {_pct(r.get('f1'))}{_ci(r.get('f1_ci'))} | | |"
        )
    return [*lines, ""]


def _calibration(f: dict) -> list[str]:
    m, record = f["metrics"] or {}, f["decisions"]
    lines = ["## Calibration and explanations", ""]
    ece = m.get("ece", (m.get("calibration") or {}).get("ece"))
    lines.append(f"- Expected calibration error on test: {_num(ece, '.4f')} (temperature 1).")
    lines += decision_sentences(record, m)
    cam = m.get("cam_in_lungs")
    if isinstance(cam, dict) and cam.get("overall"):
        overall = cam["overall"]
        chance = overall.get("mask_share")
        line = (
            f"- Grad-CAM energy inside the lung masks (test, mean over {overall.get('n')} images): "
            f"{_pct(overall.get('mean'))}"
        )
        if chance is not None:
            line += (
                f", against {_pct(chance)} of the image that the lungs cover (the chance level: a map that "
                "ignores anatomy scores about this; only a share well above it says the model looks at the lungs)"
            )
        lines.append(line + ".")
        if cam.get("warning"):
            lines.append(f"  Not informative here: {cam['warning']}.")
    elif isinstance(cam, dict) and cam.get("skipped"):
        lines.append(f"- Grad-CAM lung share: not measured ({cam['skipped']}).")
    else:
        lines.append("- Grad-CAM lung share: not measured.")
    return [*lines, ""]


def _int8(f: dict) -> list[str]:
    q = f["int8"]
    if not q:
        return []
    lines = [
        "## int8 model (`model.int8.onnx`)",
        "",
        f"Static int8 quantization (onnxruntime, {q['format']}, per-channel weights), calibrated on "
        f"{q['calibration_images']} validation images; compared with the fp32 ONNX model on "
        f"{q['test_images']} test images:",
        "",
        f"- Accuracy: fp32 {_pct(q['accuracy_fp32'])}, int8 {_pct(q['accuracy_int8'])} "
        f"(difference {100 * q['accuracy_diff']:+.1f} points).",
        f"- Largest probability difference: {q['max_prob_diff']:.4f}; predicted labels agree on "
        f"{_pct(q['label_agreement'])} of images.",
    ]
    if q.get("speed_cpu"):  # the int8 speed-up depends on the CPU (VNNI/AMX), so it names the one measured on
        lines.append(f"- Speed: int8 {q['speedup']:.2f}x fp32 over that pass, measured on {q['speed_cpu']}.")
    if q.get("warning"):
        lines.append(f"- **Warning:** {q['warning']}")
    return [*lines, ""]


def _limitations(f: dict) -> list[str]:
    lines = ["## Limitations", ""]
    if f["data"].get("synthetic"):
        lines.append("- **Trained and tested on synthetic images**: not a model of real radiographs.")
    if f["init"]["random"] or f["init"].get("source_random"):
        lines.append("- **Started from random weights** (no ImageNet pretraining reached this model).")
    m = f["metrics"]
    if m is not None and (m.get("n") or 0) < 500:
        lines.append(
            f"- The test set has {m.get('n')} images: the intervals above are wide, and small differences "
            "between models are not meaningful."
        )
    lines += [
        "- Test images come from the same sources as the training images: expect lower performance elsewhere.",
        "- Probabilities are calibrated only as well as the Calibration section says.",
        "",
    ]
    return lines


def _usage(f: dict) -> list[str]:
    needs_masks = f["preprocess"].get("input") == "masked" and not f.get("segmenter")
    mask = " --mask-dir MASKS/" if needs_masks else ""
    masks_arg = ', masks=["a_mask.png"]' if needs_masks else ""
    return [
        "## How to use",
        "",
        "```sh",
        "pip install 'cxrtl[onnx]'",
        f"cxrtl predict BUNDLE_DIR scans/{mask} --format json                 # the PyTorch checkpoint",
        f"cxrtl predict BUNDLE_DIR scans/{mask} --backend onnx --format json  # onnxruntime only, no torch",
        f"cxrtl predict hf://OWNER/NAME scans/{mask}                          # from the Hugging Face Hub",
        "```",
        "",
        "```python",
        "import cxrtl",
        'p = cxrtl.Predictor.from_checkpoint("BUNDLE_DIR")   # checksums are verified first',
        f'probs = p.predict_proba(["a.png"]{masks_arg})  # [N, k] in p.classes order',
        "print(dict(zip(p.classes, probs[0].round(3))))",
        "```",
        "",
        "Every file of this folder is listed with its SHA-256 in `bundle.json`; cxrtl refuses a bundle whose "
        "files do not match.",
        "",
    ]


def render_card(f: dict) -> str:
    """The model card (README.md) of a bundle from :func:`gather_facts`' dict."""
    title = f"# {f['name']}: {f['backbone']} chest-radiograph classifier ({', '.join(f['classes'])})"
    parts = [title, "", *[w + "\n" for w in _warnings(f)]]
    parts.append(
        "Generated by cxrtl from the run's own records (summary, config, split, metrics, calibration). "
        "**Research tool, not a medical device; not for diagnosis.**\n"
    )
    for section in (
        _intended_use,
        _training_data,
        _preprocessing,
        _training,
        _metrics,
        _calibration,
        _int8,
        _limitations,
        _usage,
    ):
        parts += section(f)
    return front_matter(f) + "\n" + "\n".join(parts).rstrip() + "\n"
