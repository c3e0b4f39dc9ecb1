"""Evaluation figures (ROC, confusion matrix, training curves, reliability) written as PNG and SVG.

Figures are drawn with matplotlib's object API on an Agg canvas (no screen, no pyplot global state) and
written atomically; matplotlib is imported inside the functions so that ``cxrtl --help`` stays fast.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import CxrtlError
from ..fsutil import atomic_path

log = logging.getLogger(__name__)


def _new_figure(width: float = 6.4, height: float = 4.8):
    """A Figure on an Agg canvas, independent of pyplot and of any display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, out_stem: str | Path) -> list[Path]:
    """Write ``<out_stem>.png`` and ``<out_stem>.svg`` atomically (no timestamps, so bytes are stable)."""
    import matplotlib

    out_stem = Path(out_stem)
    paths = []
    with matplotlib.rc_context({"svg.hashsalt": "cxrtl", "svg.fonttype": "none"}):
        for fmt, meta in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
            path = out_stem.with_name(out_stem.name + f".{fmt}")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, metadata=meta, dpi=150 if fmt == "png" else None)
            paths.append(path)
    return paths


def plot_roc(
    y_true, probs, classes: Sequence[str], out_stem: str | Path, title: str | None = None
) -> list[Path]:
    """One-vs-rest ROC curve per class with its AUC, plus micro and macro averages (paper Fig. 6-7).

    Every AUC in the legend is :func:`~cxrtl.evaluation.metrics.roc_auc_averages` (scikit-learn), the same
    numbers as ``metrics.json`` and report.md; the macro curve is drawn by averaging the per-class curves,
    but its legend gives the mean of the per-class AUCs, not the area under that interpolated curve.
    """
    from sklearn.metrics import roc_curve

    from .metrics import roc_auc_averages

    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    aucs = roc_auc_averages(y, p, classes)
    fig = _new_figure(6.0, 5.4)
    ax = fig.add_subplot()
    grid = np.linspace(0, 1, 501)
    tprs = []
    for i, c in enumerate(classes):
        if aucs["per_class"][c] is None:
            log.info(
                "no ROC curve for %s: the subset has %s of its images", c, "all" if (y == i).all() else "none"
            )
            continue
        fpr, tpr, _ = roc_curve(y == i, p[:, i])
        tprs.append(np.interp(grid, fpr, tpr))
        ax.plot(fpr, tpr, lw=1.5, label=f"{c} (AUC = {aucs['per_class'][c]:.4f})")
    if tprs and k > 2:
        fpr, tpr, _ = roc_curve(np.eye(k)[y].ravel(), p.ravel())
        ax.plot(fpr, tpr, ":", lw=2, color="deeppink", label=f"micro-average (AUC = {aucs['micro']:.4f})")
        mean_tpr = np.mean(tprs, axis=0)
        mean_tpr[0] = 0.0
        ax.plot(grid, mean_tpr, ":", lw=2, color="navy", label=f"macro-average (AUC = {aucs['macro']:.4f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="False positive rate (1 - specificity)",
        ylabel="True positive rate (sensitivity)",
        title=title or f"ROC, one-vs-rest (n = {len(y)})",
    )
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, out_stem)


def plot_confusion(
    confusion_matrix, classes: Sequence[str], out_stem: str | Path, title: str | None = None
) -> list[Path]:
    """Confusion matrix: rows True, columns Predicted; cells show the count and the row-normalised recall."""
    cm = np.asarray(confusion_matrix, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(rows > 0, cm / np.maximum(rows, 1), 0.0)
    k = len(classes)
    size = 3.2 + 0.9 * k
    fig = _new_figure(size + 1.0, size)
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="fraction of the true class (recall on the diagonal)")
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{100 * frac[i, j]:.1f}%",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if frac[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(k), labels=list(classes), rotation=30, ha="right")
    ax.set_yticks(range(k), labels=list(classes))
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title or f"Confusion matrix (n = {int(cm.sum())})")
    return save_figure(fig, out_stem)


def read_history(history_csv: str | Path) -> dict[str, list[float]]:
    """Columns of a ``history.csv`` as float lists (empty cells become NaN)."""
    path = Path(history_csv)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise CxrtlError(
            f"cannot read training history {path}: {exc.strerror or exc}; pass a run directory's history.csv"
        ) from None
    if not rows or "epoch" not in rows[0]:
        raise CxrtlError(f"training history {path} has no epochs; train the run first")
    cols: dict[str, list[float]] = {key: [] for key in rows[0]}
    for row in rows:
        for key, values in cols.items():
            try:
                values.append(float(row.get(key) or "nan"))
            except ValueError:
                values.append(float("nan"))
    return cols


def plot_history(history_csv: str | Path, out_stem: str | Path, title: str | None = None) -> list[Path]:
    """Training curves from ``history.csv``: loss, accuracy and learning rate per epoch; best epoch marked."""
    from matplotlib.ticker import MaxNLocator

    h = read_history(history_csv)
    epochs = h["epoch"]
    fig = _new_figure(12.0, 3.8)
    axes = fig.subplots(1, 3)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, metric, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            key = f"{split}_{metric}"
            if key in h:
                ax.plot(epochs, h[key], style, ms=3, label=split)
        ax.set(xlabel="epoch", ylabel=label, title=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if "val_acc" in h and np.isfinite(h["val_acc"]).any():
        best = epochs[int(np.nanargmax(h["val_acc"]))]
        for ax in axes[:2]:
            ax.axvline(best, color="grey", ls="--", lw=1)
        axes[1].annotate(
            f"best val: epoch {best:g}",
            xy=(best, np.nanmax(h["val_acc"])),
            fontsize=8,
            xytext=(-4, -14),
            textcoords="offset points",
            ha="right",
        )
    if "lr" in h and np.isfinite(h["lr"]).any():
        axes[2].plot(epochs, h["lr"], "-o", ms=3)
        if np.nanmin(h["lr"]) > 0:
            axes[2].set_yscale("log")
    axes[2].set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    axes[2].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_stem)


def plot_reliability(
    calibration: dict, out_stem: str | Path, calibrated: dict | None = None, title: str | None = None
) -> list[Path]:
    """Reliability diagram from ``metrics["calibration"]`` (and optionally the temperature-scaled one)."""
    fig = _new_figure(5.6, 5.4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    series = [("uncalibrated", calibration, "tab:blue")]
    if calibrated:
        t = calibrated.get("temperature")
        series.append((f"temperature {t:.3g}" if t else "calibrated", calibrated, "tab:orange"))
    for name, cal, color in series:
        bins = [b for b in cal["bins"] if b["count"]]
        if not bins:
            continue
        width = bins[0]["hi"] - bins[0]["lo"]
        ax.bar(
            [b["lo"] for b in bins],
            [b["accuracy"] for b in bins],
            width=width,
            align="edge",
            alpha=0.35 if calibrated else 0.6,
            color=color,
            edgecolor=color,
        )
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            "o-",
            color=color,
            label=f"{name}, ECE = {cal['ece']:.4f}",
        )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence (top-class probability)",
        ylabel="accuracy",
        title=title or "Reliability diagram",
    )
    ax.legend(loc="upper left", fontsize=8)
    return save_figure(fig, out_stem)
