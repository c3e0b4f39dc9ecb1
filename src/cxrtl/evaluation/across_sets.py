"""One model's evaluations on different image sets side by side (``cxrtl compare``): its own test split
beside an external set, say. Different images, so the differences get an unpaired two-sample bootstrap
(each set resampled on its own), not the paired tests of :mod:`cxrtl.evaluation.compare`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CxrtlError
from . import metrics as M

UNPAIRED_METHOD = "unpaired two-sample percentile bootstrap: each evaluation's images resampled independently"


def _load_eval(folder: Path) -> dict[str, Any]:
    from ..fsutil import read_json
    from .compare import read_predictions

    folder = Path(folder).expanduser()
    if not (folder / "metrics.json").is_file() or not (folder / "predictions.csv").is_file():
        raise CxrtlError(
            f"{folder} is not an evaluation folder (no metrics.json and predictions.csv); "
            "give folders written by `cxrtl evaluate --out DIR`"
        )
    metrics = read_json(folder / "metrics.json", "metrics")
    paths, labels, classes, probs = read_predictions(folder / "predictions.csv")
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise CxrtlError(f"{folder}/predictions.csv has labels {unknown} outside its classes; evaluate again")
    y = np.asarray([classes.index(lab) for lab in labels], dtype=np.int64)
    src = metrics.get("source") or {}
    return {
        "folder": folder,
        "name": folder.name,
        "metrics": metrics,
        "classes": classes,
        "y": y,
        "probs": probs,
        "images": {(str(src.get("data")), p) for p in paths},
        "model": src.get("weights_sha256") or str(Path(str(src.get("checkpoint"))).resolve()),
        "subset": src.get("subset"),
    }


def _stats(y: np.ndarray, p: np.ndarray, shared: list[int]) -> dict[str, float]:
    """accuracy, macro F1 over ``shared`` classes, and recall/AUC of each shared class of one sample."""
    from sklearn.metrics import roc_auc_score

    k = p.shape[1]
    pred = p.argmax(axis=1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    prf = M._prf_from_cm(cm)
    out = {"accuracy": float(np.mean(pred == y)), "macro_f1": float(np.mean(prf["f1"][shared]))}
    for i in shared:
        pos = y == i
        out[f"recall:{i}"] = float(prf["recall"][i]) if pos.any() else float("nan")
        out[f"auc:{i}"] = float(roc_auc_score(pos, p[:, i])) if 0 < pos.sum() < len(y) else float("nan")
    return out


def _boot(y: np.ndarray, p: np.ndarray, shared: list[int], n_boot: int, rng) -> dict[str, np.ndarray]:
    rows = [
        _stats(y[idx], p[idx], shared) for idx in (rng.integers(0, len(y), len(y)) for _ in range(n_boot))
    ]
    return {key: np.array([r[key] for r in rows]) for key in rows[0]} if rows else {}


def compare_evaluations(
    folders: Sequence[str | os.PathLike],
    allow_different_models: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Two or more evaluations of one model side by side: each metric with its interval, and each later
    evaluation's difference from the first with an unpaired bootstrap interval."""
    if len(folders) < 2:
        raise CxrtlError("compare needs at least two evaluation folders")
    evals = [_load_eval(Path(f)) for f in folders]
    first = evals[0]
    for e in evals[1:]:
        if e["classes"] != first["classes"]:
            raise CxrtlError(
                f"{first['folder']} and {e['folder']} are for different classes ({first['classes']} vs "
                f"{e['classes']}); compare evaluations of one model"
            )
        if e["model"] != first["model"] and not allow_different_models:
            raise CxrtlError(
                f"{first['folder']} and {e['folder']} evaluate different models; compare evaluations of one "
                "model, or pass --allow-different-models"
            )
    for i, a in enumerate(evals):
        for b in evals[i + 1 :]:
            if a["images"] == b["images"]:
                raise CxrtlError(
                    f"{a['folder']} and {b['folder']} scored the same images; compare evaluations of one "
                    "model on different image sets (internal test beside external)"
                )
    classes = first["classes"]
    shared = [i for i in range(len(classes)) if all(np.any(e["y"] == i) for e in evals)]
    if not shared:
        raise CxrtlError("the evaluations share no class with images in each; nothing to compare")
    rng = np.random.default_rng(seed)
    points = [_stats(e["y"], e["probs"], shared) for e in evals]
    boots = [_boot(e["y"], e["probs"], shared, n_boot, rng) for e in evals] if n_boot else [{} for _ in evals]

    def ci(samples: np.ndarray | None) -> list[float] | None:
        return None if samples is None else M._percentile_ci(samples, M.CONFIDENCE)

    def label(key: str) -> str:
        kind, _, idx = key.partition(":")
        return {"accuracy": "accuracy", "macro_f1": "macro F1"}.get(kind) or f"{kind} {classes[int(idx)]}"

    rows = []
    for key in points[0]:
        row: dict[str, Any] = {"metric": label(key), "key": key, "values": [], "differences": []}
        for e, pt, bt in zip(evals, points, boots):
            row["values"].append({"eval": e["name"], "value": _none(pt[key]), "ci": ci(bt.get(key))})
        for e, pt, bt in zip(evals[1:], points[1:], boots[1:]):
            diff = pt[key] - points[0][key]
            samples = bt[key] - boots[0][key] if bt else None
            row["differences"].append(
                {"eval": e["name"], "minus": first["name"], "difference": _none(diff), "ci": ci(samples)}
            )
        rows.append(row)
    return {
        "evaluations": [
            {
                "name": e["name"],
                "folder": str(e["folder"]),
                "subset": e["subset"],
                "n": len(e["y"]),
                "data": e["metrics"].get("source", {}).get("data"),
                "absent_classes": [c for i, c in enumerate(classes) if not np.any(e["y"] == i)],
            }
            for e in evals
        ],
        "classes": classes,
        "shared_classes": [classes[i] for i in shared],
        "macro_f1_over": [classes[i] for i in shared],
        "metrics": rows,
        "method": UNPAIRED_METHOD + (f", {n_boot} resamples, seed {seed}" if n_boot else " (none)"),
        "confidence": M.CONFIDENCE,
        "_evals": evals,
    }


def _none(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def plot_shared_roc(result: dict, out_stem: Path) -> list[Path]:
    """One figure: a panel per shared class, the ROC curve of each evaluation in it."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from .figures import _new_figure, save_figure

    shared = result["shared_classes"]
    classes = result["classes"]
    cols = min(3, len(shared))
    rows = (len(shared) + cols - 1) // cols
    fig = _new_figure(4.2 * cols, 4.0 * rows)
    for j, c in enumerate(shared):
        ax = fig.add_subplot(rows, cols, j + 1)
        i = classes.index(c)
        for e in result["_evals"]:
            pos = e["y"] == i
            if 0 < pos.sum() < len(pos):
                fpr, tpr, _ = roc_curve(pos, e["probs"][:, i])
                auc = roc_auc_score(pos, e["probs"][:, i])
                ax.plot(fpr, tpr, lw=1.5, label=f"{e['name']} (AUC {auc:.3f}, n {len(pos)})")
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="1 - specificity", ylabel="sensitivity", title=c)
        ax.legend(loc="lower right", fontsize=7)
    return save_figure(fig, out_stem)


def comparison_markdown(result: dict, figure: str | None) -> str:
    def fmt(v, ci_=None, signed=False) -> str:
        if v is None:
            return "n/a"
        s = f"{v:+.3f}" if signed else f"{v:.3f}"
        return s + (
            f" [{ci_[0]:+.3f}, {ci_[1]:+.3f}]"
            if signed and ci_
            else f" [{ci_[0]:.3f}, {ci_[1]:.3f}]"
            if ci_
            else ""
        )

    evals = result["evaluations"]
    lines = ["# Evaluations compared", ""]
    for e in evals:
        absent = f"; no images of {', '.join(e['absent_classes'])}" if e["absent_classes"] else ""
        lines.append(f"- **{e['name']}**: {e['subset']} of {e['data']}, n = {e['n']}{absent}")
    lines += [
        "",
        f"Values with {int(result['confidence'] * 100)}% intervals; differences are each evaluation minus "
        f"**{evals[0]['name']}** ({result['method']}). Different images, so the test is not paired. "
        f"Macro F1 is over the classes with images in every set: {', '.join(result['macro_f1_over'])}.",
        "",
        "| metric | "
        + " | ".join(e["name"] for e in evals)
        + " | "
        + " | ".join(f"{e['name']} - {evals[0]['name']}" for e in evals[1:])
        + " |",
        "|---" * (len(evals) * 2) + "|---|",
    ]
    for row in result["metrics"]:
        cells = [fmt(v["value"], v["ci"]) for v in row["values"]]
        cells += [fmt(d["difference"], d["ci"], signed=True) for d in row["differences"]]
        lines.append(f"| {row['metric']} | " + " | ".join(cells) + " |")
    if figure:
        lines += ["", f"![ROC curves per shared class]({figure})"]
    lines += [
        "",
        "A difference whose interval excludes 0 is unlikely to be sampling noise alone; it may still come from "
        "a different class mix, image source or labelling between the sets.",
    ]
    return "\n".join(lines) + "\n"


def write_comparison(result: dict, out: str | os.PathLike, figures: bool = True) -> Path:
    from ..fsutil import ensure_dir, write_json, write_text

    out = ensure_dir(out)
    figure = None
    if figures:
        plot_shared_roc(result, out / "roc_shared")
        figure = "roc_shared.png"
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    write_json(out / "comparison.json", public)
    write_text(out / "report.md", comparison_markdown(result, figure))
    return out
