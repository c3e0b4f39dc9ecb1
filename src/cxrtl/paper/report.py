"""Figures and tables of an evaluation: ROC, confusion matrix, training curves, reliability, paper tables.

Figures are drawn with matplotlib's object API on an Agg canvas (no screen, no pyplot global state) and
written as PNG and SVG atomically. Tables follow the paper's layout (Tables II-VI) with its published
numbers beside ours; each is written as Markdown and CSV.

Run dicts (what the table builders read; ``cxrtl reproduce`` fills them)::

    {"name": str, "dataset": "covid" | "pneumonia",
     "experiment": 1 | "exp1" | [1, 2] ...   (or "experiments"; absent: every table the config fits),
     "protocol": optional label, e.g. "paper" | "patient-grouped" | "official-test",
     "config": {"input": "raw" | "masked", "channels": 1 | 3,
                "loss": "ce" | "wce-1cf" | "wce-icf" | "focal",
                "init": "imagenet" | "none" | <checkpoint path>,
                "pretraining": "None" | "ImageNet" | "ImageNet & COVID"  (default: derived from init),
                "scheme": "finetune" | "extractor"  (default "finetune")},
     "best_epoch": int (1-based epoch whose weights were kept), "seconds": float (training time),
     "test": <compute_metrics() dict of the test subset>}

Table II/III rows are keyed by (input, channels), Table IV by loss (raw 3-channel runs),
Tables V/VI by (pretraining, scheme).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CxrtlError
from ..fsutil import atomic_path, write_csv, write_text

log = logging.getLogger(__name__)

# The paper's published numbers (paper.md, Tables II-VI), as fractions, for comparison only.
# Known oddities kept as published: Table III's weighted recall differs from accuracy (impossible when
# both are counted over the same samples: the authors averaged accuracy over batches), and Table V's
# ImageNet fine-tune weighted P/R/F1 repeat Table VI's PNEUMONIA-class numbers.
PAPER_RESULTS = {
    "II": {  # COVID class, per input scheme
        ("raw", 1): {"precision": 0.9708, "recall": 0.9657, "f1": 0.9683},
        ("raw", 3): {"precision": 0.9866, "recall": 0.9736, "f1": 0.9801},
        ("masked", 1): {"precision": 0.9320, "recall": 0.8581, "f1": 0.8989},
        ("masked", 3): {"precision": 0.9501, "recall": 0.9050, "f1": 0.9270},
    },
    "III": {  # weighted averages, per input scheme
        ("raw", 1): {"loss": 0.2685, "accuracy": 0.9532, "precision": 0.9561, "recall": 0.9603, "f1": 0.9581},
        ("raw", 3): {"loss": 0.2296, "accuracy": 0.9575, "precision": 0.9620, "recall": 0.9671, "f1": 0.9645},
        ("masked", 1): {"loss": 0.2269, "accuracy": 0.9192, "precision": 0.9172, "recall": 0.9138,
                        "f1": 0.9151},
        ("masked", 3): {"loss": 0.2603, "accuracy": 0.9348, "precision": 0.9373, "recall": 0.9342,
                        "f1": 0.9355},
    },
    "IV": {  # loss comparison (raw, 3 channels)
        "ce": {"accuracy": 0.9468, "epochs": 30},
        "wce-1cf": {"accuracy": 0.9575, "epochs": 25},
        "wce-icf": {"accuracy": 0.9513, "epochs": 23},
        "focal": {"accuracy": 0.9451, "epochs": 19},
    },
    "V": {  # pneumonia dataset, weighted averages
        ("None", "finetune"): {"loss": 0.0773, "accuracy": 0.9659, "precision": 0.9659, "recall": 0.9659,
                               "f1": 0.9659, "epoch": 19},
        ("ImageNet", "finetune"): {"loss": 0.0728, "accuracy": 0.9744, "precision": 0.9859, "recall": 0.9790,
                                   "f1": 0.9825, "epoch": 11},
        ("ImageNet", "extractor"): {"loss": 0.1401, "accuracy": 0.9488, "precision": 0.9490, "recall": 0.9488,
                                    "f1": 0.9489, "epoch": 28},
        ("ImageNet & COVID", "finetune"): {"loss": 0.0649, "accuracy": 0.9829, "precision": 0.9829,
                                           "recall": 0.9829, "f1": 0.9829, "epoch": 16},
        ("ImageNet & COVID", "extractor"): {"loss": 0.0823, "accuracy": 0.9710, "precision": 0.9717,
                                            "recall": 0.9710, "f1": 0.9712, "epoch": 29},
    },
    "VI": {  # PNEUMONIA class
        ("None", "finetune"): {"precision": 0.9767, "recall": 0.9767, "f1": 0.9767},
        ("ImageNet", "finetune"): {"precision": 0.9859, "recall": 0.9790, "f1": 0.9825},
        ("ImageNet", "extractor"): {"precision": 0.9672, "recall": 0.9627, "f1": 0.9650},
        ("ImageNet & COVID", "finetune"): {"precision": 0.9838, "recall": 0.9930, "f1": 0.9884},
        ("ImageNet & COVID", "extractor"): {"precision": 0.9882, "recall": 0.9720, "f1": 0.9800},
    },
}
LOSS_NAMES = {"ce": "Cross Entropy Loss", "wce-1cf": "WCE using 1-CF", "wce-icf": "WCE using inverse CF",
              "focal": "Focal Loss"}
SCHEME_NAMES = {"finetune": "Fine-tune", "extractor": "Feature Extractor"}
INPUT_NAMES = {"raw": "Raw Images", "masked": "Masked Images"}
DASH = "—"


# ============================================================================================ figures
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


def plot_roc(y_true, probs, classes: Sequence[str], out_stem: str | Path, title: str | None = None) -> list[Path]:
    """One-vs-rest ROC curve per class with its AUC, plus micro and macro averages (paper Fig. 6-7)."""
    from sklearn.metrics import auc, roc_curve

    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    fig = _new_figure(6.0, 5.4)
    ax = fig.add_subplot()
    grid = np.linspace(0, 1, 501)
    tprs = []
    for i, c in enumerate(classes):
        pos = y == i
        if not 0 < pos.sum() < len(y):
            log.info("no ROC curve for %s: the subset has %s of its images", c, "all" if pos.all() else "none")
            continue
        fpr, tpr, _ = roc_curve(pos, p[:, i])
        tprs.append(np.interp(grid, fpr, tpr))
        ax.plot(fpr, tpr, lw=1.5, label=f"{c} (AUC = {auc(fpr, tpr):.4f})")
    onehot = np.eye(k)[y]
    if tprs and k > 2:
        fpr, tpr, _ = roc_curve(onehot.ravel(), p.ravel())
        ax.plot(fpr, tpr, ":", lw=2, color="deeppink", label=f"micro-average (AUC = {auc(fpr, tpr):.4f})")
        mean_tpr = np.mean(tprs, axis=0)
        mean_tpr[0] = 0.0
        ax.plot(grid, mean_tpr, ":", lw=2, color="navy",
                label=f"macro-average (AUC = {auc(grid, mean_tpr):.4f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="False positive rate (1 - specificity)",
           ylabel="True positive rate (sensitivity)", title=title or f"ROC, one-vs-rest (n = {len(y)})")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, out_stem)


def plot_confusion(confusion_matrix, classes: Sequence[str], out_stem: str | Path,
                   title: str | None = None) -> list[Path]:
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
            ax.text(j, i, f"{cm[i, j]}\n{100 * frac[i, j]:.1f}%", ha="center", va="center", fontsize=9,
                    color="white" if frac[i, j] > 0.5 else "black")
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
        raise CxrtlError(f"cannot read training history {path}: {exc.strerror or exc}; "
                         "pass a run directory's history.csv") from None
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
        axes[1].annotate(f"best val: epoch {best:g}", xy=(best, np.nanmax(h["val_acc"])), fontsize=8,
                         xytext=(-4, -14), textcoords="offset points", ha="right")
    if "lr" in h and np.isfinite(h["lr"]).any():
        axes[2].plot(epochs, h["lr"], "-o", ms=3)
        if np.nanmin(h["lr"]) > 0:
            axes[2].set_yscale("log")
    axes[2].set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    axes[2].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_stem)


def plot_reliability(calibration: dict, out_stem: str | Path, calibrated: dict | None = None,
                     title: str | None = None) -> list[Path]:
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
        ax.bar([b["lo"] for b in bins], [b["accuracy"] for b in bins], width=width, align="edge",
               alpha=0.35 if calibrated else 0.6, color=color, edgecolor=color)
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color=color,
                label=f"{name}, ECE = {cal['ece']:.4f}")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-class probability)", ylabel="accuracy",
           title=title or "Reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    return save_figure(fig, out_stem)


# ============================================================================================ formatting
def fmt_pct(value: float | None, ci: Sequence[float] | None = None, digits: int = 1) -> str:
    """``95.8% [94.9, 96.6]``; a dash when undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    text = f"{100 * value:.{digits}f}%"
    if ci:
        text += f" [{100 * ci[0]:.{digits}f}, {100 * ci[1]:.{digits}f}]"
    return text


def _fmt_paper(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.2f}%"


def _fmt_num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _csv_num(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


@dataclass
class Table:
    """One table: Markdown cells for people, CSV cells (plain numbers, intervals split) for programs."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    csv_columns: list[str] = field(default_factory=list)
    csv_rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_runs: int = 0  # runs that fill rows (0: only the paper's numbers)

    def to_markdown(self) -> str:
        """The table as GitHub Markdown with its title and notes."""
        def esc(cell) -> str:
            return str(cell).replace("|", "\\|")

        lines = [f"### {self.title}", "", "| " + " | ".join(map(esc, self.columns)) + " |",
                 "|" + "|".join(" --- " for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(map(esc, row)) + " |" for row in self.rows]
        if not self.rows:
            lines.append("| " + " | ".join([DASH] * len(self.columns)) + " |")
        lines += [""] + [f"{note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def write(self, out_dir: str | Path, stem: str | None = None) -> list[Path]:
        """Write ``<stem>.md`` and ``<stem>.csv`` into ``out_dir``."""
        out_dir = Path(out_dir)
        stem = stem or f"table_{self.key.lower()}"
        return [write_text(out_dir / f"{stem}.md", self.to_markdown()),
                write_csv(out_dir / f"{stem}.csv", self.csv_columns, self.csv_rows)]


# ============================================================================================ run dicts
def run_experiments(run: dict) -> set[int] | None:
    """The paper experiments a run belongs to (``None`` when it does not say: any table it fits)."""
    value = run.get("experiment", run.get("experiments", (run.get("config") or {}).get("experiments")))
    if value is None:
        return None
    values = value if isinstance(value, (list, tuple, set)) else [value]
    out = set()
    for v in values:
        digits = "".join(ch for ch in str(v) if ch.isdigit())
        if digits:
            out.add(int(digits))
    return out


def run_row_keys(run: dict) -> dict:
    """The config values that place a run in the paper's tables, with defaults filled in."""
    cfg = run.get("config") or {}
    init = str(cfg.get("init", "imagenet"))
    pretraining = run.get("pretraining") or cfg.get("pretraining")
    if not pretraining:
        pretraining = {"none": "None", "imagenet": "ImageNet"}.get(init.lower(), "ImageNet & COVID")
    scheme = str(cfg.get("scheme") or ("extractor" if cfg.get("freeze_backbone") else "finetune")).lower()
    scheme = {"fine-tune": "finetune", "feature-extractor": "extractor", "feature_extractor": "extractor",
              "frozen": "extractor"}.get(scheme, scheme)
    return {"input": str(cfg.get("input", "raw")), "channels": int(cfg.get("channels", 3)),
            "loss": str(cfg.get("loss", "wce-1cf")), "pretraining": str(pretraining), "scheme": scheme}


def _fits(run: dict, dataset: str, experiment: int) -> bool:
    exps = run_experiments(run)
    return run.get("dataset") == dataset and (exps is None or experiment in exps)


def _class_metrics(metrics: dict, name: str) -> dict | None:
    """Per-class entry of ``name`` (case-insensitive) or None."""
    for cls, entry in (metrics or {}).get("per_class", {}).items():
        if cls.lower() == name.lower():
            return entry
    return None


def _protocol_columns(runs: Sequence[dict]) -> bool:
    return any(r.get("protocol") for r in runs)


def _resolution_note(runs: Sequence[dict]) -> str:
    """How far apart two accuracies must be to be told apart, given these runs' test-set sizes."""
    widths = []
    for r in runs:
        ci, n = (r.get("test") or {}).get("accuracy_ci"), (r.get("test") or {}).get("n")
        if ci and n:
            widths.append((n, 50 * (ci[1] - ci[0])))
    base = ("Brackets: 95% intervals (Wilson for accuracy, precision and recall; percentile bootstrap over "
            "test images for F1 and averages). Ours: the checkpoint with the best validation accuracy.")
    if not widths:
        return base
    ns = sorted({n for n, _ in widths})
    lo, hi = min(w for _, w in widths), max(w for _, w in widths)
    return (base + f" With {', '.join(map(str, ns))} test images the accuracy intervals are "
            f"±{lo:.1f} to ±{hi:.1f} points wide: differences smaller than that between rows, or between "
            "ours and the paper's, are not resolved by this test set.")


def _ordered(runs: Iterable[dict], key_of, paper_keys: Sequence) -> list[tuple[object, dict | None]]:
    """Pair paper rows with runs, in the paper's order; unmatched runs after; empty paper rows kept."""
    runs = list(runs)
    out: list[tuple[object, dict | None]] = []
    for key in paper_keys:
        matched = [r for r in runs if key_of(r) == key]
        out += [(key, r) for r in matched] or [(key, None)]
    out += [(key_of(r), r) for r in runs if key_of(r) not in paper_keys]
    return out


def _metric_cells(entry: dict | None, keys: Sequence[str]) -> tuple[list[str], list[str]]:
    """Markdown cells ``x% [lo, hi]`` and CSV cells (value, lo, hi) for ``keys`` of a metrics entry."""
    md, cs = [], []
    for key in keys:
        value = entry.get(key) if entry else None
        ci = entry.get(f"{key}_ci") if entry else None
        md.append(fmt_pct(value, ci))
        cs += [_csv_num(value), _csv_num(ci[0]) if ci else "", _csv_num(ci[1]) if ci else ""]
    return md, cs


def _csv_metric_columns(prefix: str, keys: Sequence[str]) -> list[str]:
    return [f"{prefix}{k}{suffix}" for k in keys for suffix in ("", "_lo", "_hi")]


def _run_cells(run: dict | None, with_protocol: bool) -> tuple[list[str], list[str]]:
    name = run.get("name", "") if run else DASH
    md = [name] + ([run.get("protocol") or "" if run else ""] if with_protocol else [])
    cs = [run.get("name", "") if run else ""] + ([run.get("protocol") or "" if run else ""]
                                                  if with_protocol else [])
    return md, cs


# ============================================================================================ tables
def _class_table(key: str, title: str, runs: Sequence[dict], positive: str, key_columns: tuple[str, str],
                 csv_key_columns: tuple[str, str], row_key, key_labels) -> Table:
    """A paper table of one class's precision/recall/F1 per row key (Tables II and VI)."""
    proto = _protocol_columns(runs)
    paper = PAPER_RESULTS[key]
    keys = ("precision", "recall", "f1")
    name = positive.title() if key == "VI" else positive
    t = Table(key, title,
              [*key_columns, "Run"] + (["Protocol"] if proto else [])
              + [f"Test {name} precision", f"Test {name} sensitivity (recall)", f"Test {name} F1",
                 "Paper P", "Paper R", "Paper F1"],
              csv_columns=[*csv_key_columns, "run"] + (["protocol"] if proto else [])
              + _csv_metric_columns(f"{positive.lower()}_", keys) + [f"paper_{k}" for k in keys])
    for row, run in _ordered(runs, row_key, paper):
        entry = _class_metrics(run["test"], positive) if run else None
        md, cs = _metric_cells(entry, keys)
        rmd, rcs = _run_cells(run, proto)
        ref = paper.get(row, {})
        t.rows.append(key_labels(row) + rmd + md + [_fmt_paper(ref.get(k)) for k in keys])
        t.csv_rows.append([row[0], row[1]] + rcs + cs + [_csv_num(ref.get(k)) for k in keys])
    t.notes.append(_resolution_note(runs))
    t.n_runs = len(runs)
    return t


def table_ii(runs: Sequence[dict], positive: str = "COVID") -> Table:
    """Table II: COVID-class precision/recall/F1 per input scheme (raw/masked x 1/3 channels)."""
    return _class_table("II", f"Table II. Performance on the {positive} class by input and pre-processing",
                        [r for r in runs if _fits(r, "covid", 1)], positive, ("Scheme", "Channels"),
                        ("input", "channels"), lambda r: (run_row_keys(r)["input"], run_row_keys(r)["channels"]),
                        lambda k: [INPUT_NAMES.get(k[0], k[0]), str(k[1])])


def _weighted_table(key: str, title: str, runs: Sequence[dict], columns: list[str], key_columns: tuple[str, str],
                    csv_key_columns: tuple[str, str], row_key, key_labels, with_epoch: bool) -> Table:
    """A paper table of test loss, accuracy and weighted P/R/F1 per row key (Tables III and V)."""
    proto = _protocol_columns(runs)
    paper = PAPER_RESULTS[key]
    keys = ("precision", "recall", "f1")
    epoch_cols = ["Epoch"] if with_epoch else []
    t = Table(key, title,
              [*key_columns, "Run"] + (["Protocol"] if proto else []) + columns + epoch_cols
              + ["Paper loss", "Paper accuracy", "Paper P", "Paper R", "Paper F1"]
              + (["Paper epoch"] if with_epoch else []),
              csv_columns=[*csv_key_columns, "run"] + (["protocol"] if proto else [])
              + ["loss"] + _csv_metric_columns("", ("accuracy",)) + _csv_metric_columns("weighted_", keys)
              + (["best_epoch"] if with_epoch else []) + ["paper_loss", "paper_accuracy"]
              + [f"paper_{k}" for k in keys] + (["paper_epoch"] if with_epoch else []))
    for row, run in _ordered(runs, row_key, paper):
        m = run["test"] if run else None
        amd, acs = _metric_cells(m, ("accuracy",))
        wmd, wcs = _metric_cells(m["weighted"] if m else None, keys)
        rmd, rcs = _run_cells(run, proto)
        ref = paper.get(row, {})
        loss = m.get("loss") if m else None
        epoch = run.get("best_epoch") if run else None
        t.rows.append(key_labels(row) + rmd + [_fmt_num(loss)] + amd + wmd
                      + ([_fmt_num(epoch)] if with_epoch else []) + [_fmt_num(ref.get("loss"))]
                      + [_fmt_paper(ref.get(k)) for k in ("accuracy",) + keys]
                      + ([_fmt_num(ref.get("epoch"))] if with_epoch else []))
        t.csv_rows.append([row[0], row[1]] + rcs + [_csv_num(loss)] + acs + wcs
                          + ([_csv_num(epoch)] if with_epoch else [])
                          + [_csv_num(ref.get(k)) for k in ("loss", "accuracy") + keys
                             + (("epoch",) if with_epoch else ())])
    t.notes.append(_resolution_note(runs))
    t.n_runs = len(runs)
    return t


def table_iii(runs: Sequence[dict]) -> Table:
    """Table III: weighted-average precision/recall/F1, test loss and accuracy per input scheme."""
    t = _weighted_table("III", "Table III. Weighted-average performance by input and pre-processing",
                        [r for r in runs if _fits(r, "covid", 1)],
                        ["Test loss", "Test accuracy", "Test precision", "Test sensitivity (recall)", "Test F1"],
                        ("Scheme", "Channels"), ("input", "channels"),
                        lambda r: (run_row_keys(r)["input"], run_row_keys(r)["channels"]),
                        lambda k: [INPUT_NAMES.get(k[0], k[0]), str(k[1])], with_epoch=False)
    t.notes.append("Weighted recall equals accuracy when both are counted over the same images, as here; "
                   "the paper's differ because it averaged accuracy over batches.")
    return t


def table_iv(runs: Sequence[dict]) -> Table:
    """Table IV: loss comparison (raw, 3 channels): test accuracy and epochs needed, one row per loss.

    The paper prints losses as columns; rows here hold several runs (protocols, repeats) per loss.
    """
    runs = [r for r in runs if _fits(r, "covid", 2)
            and (run_row_keys(r)["input"], run_row_keys(r)["channels"]) == ("raw", 3)]
    proto = _protocol_columns(runs)
    paper = PAPER_RESULTS["IV"]
    t = Table("IV", "Table IV. Performance using different (weighted) losses",
              ["Loss", "Run"] + (["Protocol"] if proto else [])
              + ["Test accuracy", "Epochs needed", "Training time", "Paper best test accuracy", "Paper epochs"],
              csv_columns=["loss", "run"] + (["protocol"] if proto else []) + _csv_metric_columns("", ("accuracy",))
              + ["best_epoch", "seconds", "paper_accuracy", "paper_epochs"])
    for key, run in _ordered(runs, lambda r: run_row_keys(r)["loss"], paper):
        m = run["test"] if run else None
        amd, acs = _metric_cells(m, ("accuracy",))
        rmd, rcs = _run_cells(run, proto)
        ref = paper.get(key, {})
        epoch = run.get("best_epoch") if run else None
        seconds = run.get("seconds") if run else None
        t.rows.append([LOSS_NAMES.get(key, key)] + rmd + amd + [_fmt_num(epoch), _fmt_seconds(seconds),
                      _fmt_paper(ref.get("accuracy")), _fmt_num(ref.get("epochs"))])
        t.csv_rows.append([key] + rcs + acs + [_csv_num(epoch), _csv_num(seconds),
                          _csv_num(ref.get("accuracy")), _csv_num(ref.get("epochs"))])
    t.notes.append(_resolution_note(runs))
    t.n_runs = len(runs)
    t.notes.append("Epochs needed: the epoch whose weights were kept (best validation accuracy). The paper "
                   "compared configurations on the test set; ours are chosen on validation.")
    return t


def _pneumonia_key(run: dict) -> tuple[str, str]:
    k = run_row_keys(run)
    return k["pretraining"], k["scheme"]


def table_v(runs: Sequence[dict]) -> Table:
    """Table V: pneumonia dataset, weighted averages with test loss, accuracy and epoch per scheme."""
    return _weighted_table("V", "Table V. Weighted-average performance on the pneumonia dataset",
                           [r for r in runs if _fits(r, "pneumonia", 3)],
                           ["Test loss", "Test accuracy", "Test WA precision", "Test WA recall", "Test WA F1"],
                           ("Pre-trained dataset", "Scheme"), ("pretraining", "scheme"), _pneumonia_key,
                           lambda k: [k[0], SCHEME_NAMES.get(k[1], k[1])], with_epoch=True)


def table_vi(runs: Sequence[dict], positive: str = "PNEUMONIA") -> Table:
    """Table VI: PNEUMONIA-class precision/recall/F1 on the pneumonia dataset per scheme."""
    return _class_table("VI", f"Table VI. Performance on the {positive} class of the pneumonia dataset",
                        [r for r in runs if _fits(r, "pneumonia", 3)], positive, ("Pre-trained dataset", "Scheme"),
                        ("pretraining", "scheme"), _pneumonia_key,
                        lambda k: [k[0], SCHEME_NAMES.get(k[1], k[1])])


def _fmt_seconds(seconds) -> str:
    if seconds is None:
        return DASH
    seconds = float(seconds)
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def runs_table(runs: Sequence[dict]) -> Table:
    """Every run on one table: its configuration, headline test metrics with intervals, time."""
    t = Table("runs", "All runs",
              ["Run", "Dataset", "Protocol", "Input", "Ch", "Loss", "Pre-training", "Scheme", "n",
               "Accuracy", "Weighted F1", "Macro F1", "Loss", "ECE", "Best epoch", "Training time"],
              csv_columns=["run", "dataset", "protocol", "input", "channels", "loss_fn", "pretraining", "scheme",
                           "n", "accuracy", "accuracy_lo", "accuracy_hi", "weighted_f1", "weighted_f1_lo",
                           "weighted_f1_hi", "macro_f1", "test_loss", "ece", "best_epoch", "seconds"])
    for r in runs:
        k, m = run_row_keys(r), r.get("test") or {}
        w = m.get("weighted") or {}
        acc_ci, f1_ci = m.get("accuracy_ci"), w.get("f1_ci")
        t.rows.append([r.get("name", ""), r.get("dataset", ""), r.get("protocol") or "", k["input"],
                       str(k["channels"]), k["loss"], k["pretraining"], SCHEME_NAMES.get(k["scheme"], k["scheme"]),
                       _fmt_num(m.get("n")), fmt_pct(m.get("accuracy"), acc_ci), fmt_pct(w.get("f1"), f1_ci),
                       fmt_pct((m.get("macro") or {}).get("f1")), _fmt_num(m.get("loss")),
                       _fmt_num(m.get("ece")), _fmt_num(r.get("best_epoch")), _fmt_seconds(r.get("seconds"))])
        t.csv_rows.append([r.get("name", ""), r.get("dataset", ""), r.get("protocol") or "", k["input"],
                           k["channels"], k["loss"], k["pretraining"], k["scheme"], _csv_num(m.get("n")),
                           _csv_num(m.get("accuracy")), _csv_num(acc_ci[0]) if acc_ci else "",
                           _csv_num(acc_ci[1]) if acc_ci else "", _csv_num(w.get("f1")),
                           _csv_num(f1_ci[0]) if f1_ci else "", _csv_num(f1_ci[1]) if f1_ci else "",
                           _csv_num((m.get("macro") or {}).get("f1")), _csv_num(m.get("loss")),
                           _csv_num(m.get("ece")), _csv_num(r.get("best_epoch")), _csv_num(r.get("seconds"))])
    t.notes.append(_resolution_note(runs))
    t.n_runs = len(runs)
    return t


TABLE_BUILDERS = {"II": table_ii, "III": table_iii, "IV": table_iv, "V": table_v, "VI": table_vi}


def paper_tables(runs: Sequence[dict]) -> dict[str, Table]:
    """Tables II-VI (those with at least one fitting run) plus the all-runs table, by key."""
    tables = {}
    for key, build in TABLE_BUILDERS.items():
        table = build(runs)
        if table.n_runs:
            tables[key] = table
    tables["runs"] = runs_table(runs)
    return tables


def write_tables(runs: Sequence[dict], out_dir: str | Path) -> dict[str, list[Path]]:
    """Write each table as ``table_<key>.md`` / ``.csv`` and all of them in ``tables.md``."""
    for r in runs:
        if not isinstance(r, dict) or not isinstance(r.get("test"), dict):
            raise CxrtlError(f"run {r.get('name', '?') if isinstance(r, dict) else r!r} has no test metrics; "
                             "evaluate it before building tables")
    tables = paper_tables(runs)
    out = {key: table.write(out_dir) for key, table in tables.items()}
    text = "\n".join(t.to_markdown() for t in tables.values())
    out["all"] = [write_text(Path(out_dir) / "tables.md", "# Results beside the paper's\n\n" + text)]
    return out


# ============================================================================================ one evaluation
def evaluation_markdown(metrics: dict, title: str = "Evaluation") -> str:
    """A human-readable summary of one ``metrics.json``: headline numbers with intervals, per class."""
    m = metrics
    lines = [f"# {title}", ""]
    src = m.get("source") or {}
    for key in ("checkpoint", "data", "split", "subset"):
        if src.get(key) is not None:
            lines.append(f"- {key}: `{src[key]}`")
    lo, hi = m["accuracy_ci"]
    lines += [f"- images: {m['n']}", (f"- accuracy: {fmt_pct(m['accuracy'], m['accuracy_ci'], 2)} "
              f"({m['correct']}/{m['n']}, counted over all images)"),
              f"- test loss (unweighted cross entropy): {m['loss']:.4f}",
              (f"- weighted F1: {fmt_pct(m['weighted']['f1'], m['weighted'].get('f1_ci'), 2)}; "
              f"macro F1: {fmt_pct(m['macro']['f1'], m['macro'].get('f1_ci'), 2)}"),
              f"- expected calibration error: {m['ece']:.4f}", "",
              (f"With {m['n']} images the 95% interval on accuracy is {100 * (hi - lo):.1f} points wide: "
              "accuracies closer than about half that are not distinguishable on this subset."), "",
              "| Class | Support | Precision | Recall (sensitivity) | F1 | ROC AUC |",
              "| --- | --- | --- | --- | --- | --- |"]
    for c in m["classes"]:
        e = m["per_class"][c]
        auc, auc_ci = m["roc_auc"].get(c), (m.get("roc_auc_ci") or {}).get(c)
        auc_txt = DASH if auc is None else f"{auc:.4f}" + (f" [{auc_ci[0]:.4f}, {auc_ci[1]:.4f}]" if auc_ci else "")
        lines.append(f"| {c} | {e['support']} | {fmt_pct(e['precision'], e.get('precision_ci'))} | "
                     f"{fmt_pct(e['recall'], e.get('recall_ci'))} | {fmt_pct(e['f1'], e.get('f1_ci'))} | {auc_txt} |")
    for avg in ("weighted", "macro"):
        a = m[avg]
        lines.append(f"| *{avg} avg* | {m['n']} | {fmt_pct(a['precision'], a.get('precision_ci'))} | "
                     f"{fmt_pct(a['recall'], a.get('recall_ci'))} | {fmt_pct(a['f1'], a.get('f1_ci'))} | "
                     f"{_fmt_num(m.get('roc_auc_macro' if avg == 'macro' else 'roc_auc_micro'))} |")
    lines += ["", "Confusion matrix (rows: true, columns: predicted):", "",
              "| True \\ Predicted | " + " | ".join(m["classes"]) + " |",
              "| --- |" + " --- |" * len(m["classes"])]
    for c, row in zip(m["classes"], m["confusion_matrix"]):
        lines.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
    cal = m.get("calibrated")
    if cal:
        lines += ["", (f"Temperature scaling: T = {cal['temperature']:.4f}; loss {cal['loss']:.4f}, "
                      f"ECE {cal['ece']:.4f} (uncalibrated: {m['loss']:.4f}, {m['ece']:.4f}).")]
    op = m.get("operating_point")
    if op:
        te = op["test"]
        lines += ["", (f"Operating point for {op['positive']}: threshold {op['threshold']:.4f} on "
                      f"P({op['positive']}), chosen on validation for sensitivity >= {op['target_sensitivity']:.2f} "
                      f"(validation sensitivity {fmt_pct(op['val']['sensitivity'])})."),
                  (f"On this subset: sensitivity {fmt_pct(te['sensitivity'], te['sensitivity_ci'])}, "
                  f"specificity {fmt_pct(te['specificity'], te['specificity_ci'])} "
                  f"(argmax: {fmt_pct(op['test_argmax']['sensitivity'])} / "
                  f"{fmt_pct(op['test_argmax']['specificity'])}).")]
    cam = m.get("cam_in_lungs")
    if cam and cam.get("skipped"):
        lines += ["", f"Grad-CAM mass inside the lung mask: not computed ({cam['skipped']})."]
    elif cam:
        lines += ["", "Grad-CAM mass inside the lung mask (mean per true class): "
                  + ", ".join(f"{c} {_fmt_num(v.get('mean'), 3)} (n={v.get('n')})"
                              for c, v in cam.get("per_class", {}).items())]
    figs = m.get("figures") or []
    if figs:
        lines += ["", "Figures: " + ", ".join(f"[{Path(f).name}]({Path(f).name})" for f in figs if
                                             str(f).endswith(".png"))]
    return "\n".join(lines) + "\n"
