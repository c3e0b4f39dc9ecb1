"""The paper's Tables II-VI and an all-runs table: our run dicts' metrics beside the published numbers.

Each table is written as Markdown (for people) and CSV (plain numbers, intervals split, for programs).

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

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CxrtlError
from ..formatting import DASH, csv_num, fmt_num, fmt_pct, fmt_seconds
from ..fsutil import write_csv, write_text
from .published import published_notes, published_rows
from .seeds import merge_seeds

LOSS_NAMES = {
    "ce": "Cross Entropy Loss",
    "wce-1cf": "WCE using 1-CF",
    "wce-icf": "WCE using inverse CF",
    "focal": "Focal Loss",
}
SCHEME_NAMES = {"finetune": "Fine-tune", "extractor": "Feature Extractor"}
INPUT_NAMES = {"raw": "Raw Images", "masked": "Masked Images"}


def _fmt_paper(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.2f}%"


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

        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(map(esc, self.columns)) + " |",
            "|" + "|".join(" --- " for _ in self.columns) + "|",
        ]
        lines += ["| " + " | ".join(map(esc, row)) + " |" for row in self.rows]
        if not self.rows:
            lines.append("| " + " | ".join([DASH] * len(self.columns)) + " |")
        lines += [""] + [f"{note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def write(self, out_dir: str | Path, stem: str | None = None) -> list[Path]:
        """Write ``<stem>.md`` and ``<stem>.csv`` into ``out_dir``."""
        out_dir = Path(out_dir)
        stem = stem or f"table_{self.key.lower()}"
        return [
            write_text(out_dir / f"{stem}.md", self.to_markdown()),
            write_csv(out_dir / f"{stem}.csv", self.csv_columns, self.csv_rows),
        ]


# ------------------------------------------------------------------------------------------ run dicts
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


RANDOM_NOT_IMAGENET = "random (ImageNet unavailable)"


def run_row_keys(run: dict) -> dict:
    """The config values that place a run in the paper's tables, with defaults filled in."""
    cfg = run.get("config") or {}
    init = str(cfg.get("init", "imagenet"))
    pretraining = run.get("pretraining") or cfg.get("pretraining")
    if not pretraining:
        pretraining = {"none": "None", "imagenet": "ImageNet"}.get(init.lower(), "ImageNet & COVID")
    if cfg.get("random_init") and "ImageNet" in str(pretraining):  # meant ImageNet, ran from random weights
        pretraining = str(pretraining).replace("ImageNet", RANDOM_NOT_IMAGENET)
    scheme = str(cfg.get("scheme") or ("extractor" if cfg.get("freeze_backbone") else "finetune")).lower()
    scheme = {
        "fine-tune": "finetune",
        "feature-extractor": "extractor",
        "feature_extractor": "extractor",
        "frozen": "extractor",
    }.get(scheme, scheme)
    return {
        "input": str(cfg.get("input", "raw")),
        "channels": int(cfg.get("channels", 3)),
        "loss": str(cfg.get("loss", "wce-1cf")),
        "pretraining": str(pretraining),
        "scheme": scheme,
    }


def loss_label(run: dict) -> str:
    """The run's loss as the config table shows it; focal with its gamma and alpha (Table IV's settings)."""
    cfg = run.get("config") or {}
    loss = run_row_keys(run)["loss"]
    if loss != "focal":
        return loss
    alpha = {"none": "none", "1cf": "1-CF", "icf": "inverse CF"}.get(str(cfg.get("focal_alpha", "none")))
    return f"focal (gamma {cfg.get('focal_gamma', 2.0):g}, alpha {alpha or cfg.get('focal_alpha')})"


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
    base = (
        "Brackets: 95% intervals (Wilson for accuracy, precision and recall; percentile bootstrap over "
        "test images for F1 and averages). Ours: the checkpoint with the best validation accuracy."
    )
    if not widths:
        return base
    ns = sorted({n for n, _ in widths})
    lo, hi = min(w for _, w in widths), max(w for _, w in widths)
    span = f"±{lo:.1f}" if f"{lo:.1f}" == f"{hi:.1f}" else f"±{lo:.1f} to ±{hi:.1f}"
    return (
        base + f" With {', '.join(map(str, ns))} test images the accuracy intervals are "
        f"{span} points wide: differences smaller than that between rows, or between "
        "ours and the paper's, are not resolved by this test set."
    )


def _as_planned(key: Any) -> Any:
    """A row key as the run was planned: a run meant to start from ImageNet sits on the paper's ImageNet row
    (its own label still says it started from random weights)."""
    if isinstance(key, tuple):
        return tuple(
            str(k).replace(RANDOM_NOT_IMAGENET, "ImageNet") if isinstance(k, str) else k for k in key
        )
    return key


def _ordered(runs: Iterable[dict], key_of, paper_keys: Collection) -> list[tuple[Any, dict | None]]:
    """Pair paper rows with runs, in the paper's order; unmatched runs after; empty paper rows kept."""
    runs = list(runs)
    out: list[tuple[Any, dict | None]] = []
    for key in paper_keys:
        matched = [r for r in runs if _as_planned(key_of(r)) == key]
        out += [(key, r) for r in matched] or [(key, None)]
    out += [(key_of(r), r) for r in runs if _as_planned(key_of(r)) not in paper_keys]
    return out


def _metric_cells(entry: dict | None, keys: Sequence[str]) -> tuple[list[str], list[str]]:
    """Markdown cells ``x% [lo, hi]`` and CSV cells (value, lo, hi) for ``keys`` of a metrics entry."""
    md, cs = [], []
    for key in keys:
        value = entry.get(key) if entry else None
        ci = entry.get(f"{key}_ci") if entry else None
        sd = entry.get(f"{key}_sd") if entry else None
        md.append(fmt_pct(value, ci) if sd is None else fmt_mean_sd(value, sd))
        cs += [csv_num(value), csv_num(ci[0]) if ci else "", csv_num(ci[1]) if ci else ""]
    return md, cs


def fmt_mean_sd(value: float | None, sd: float | None) -> str:
    """``95.8% ± 0.4`` for a mean over seeds; a dash when undefined."""
    return fmt_pct(value) if value is None or sd is None else f"{fmt_pct(value)} ± {100 * sd:.1f}"


def _csv_metric_columns(prefix: str, keys: Sequence[str]) -> list[str]:
    return [f"{prefix}{k}{suffix}" for k in keys for suffix in ("", "_lo", "_hi")]


def _run_cells(run: dict | None, with_protocol: bool) -> tuple[list[str], list[str]]:
    name = run.get("name", "") if run else DASH
    md = [name] + ([run.get("protocol") or "" if run else ""] if with_protocol else [])
    cs = [run.get("name", "") if run else ""] + (
        [run.get("protocol") or "" if run else ""] if with_protocol else []
    )
    return md, cs


# ------------------------------------------------------------------------------------------ tables
def _class_table(
    key: str,
    title: str,
    runs: Sequence[dict],
    positive: str,
    key_columns: tuple[str, str],
    csv_key_columns: tuple[str, str],
    row_key,
    key_labels,
) -> Table:
    """A paper table of one class's precision/recall/F1 per row key (Tables II and VI)."""
    proto = _protocol_columns(runs)
    paper = published_rows(key)
    keys = ("precision", "recall", "f1")
    name = positive.title() if key == "VI" else positive
    t = Table(
        key,
        title,
        [*key_columns, "Run"]
        + (["Protocol"] if proto else [])
        + [
            f"Test {name} precision",
            f"Test {name} sensitivity (recall)",
            f"Test {name} F1",
            "Paper P",
            "Paper R",
            "Paper F1",
        ],
        csv_columns=[*csv_key_columns, "run"]
        + (["protocol"] if proto else [])
        + _csv_metric_columns(f"{positive.lower()}_", keys)
        + [f"paper_{k}" for k in keys],
    )
    for row, run in _ordered(runs, row_key, paper):
        entry = _class_metrics(run["test"], positive) if run else None
        md, cs = _metric_cells(entry, keys)
        rmd, rcs = _run_cells(run, proto)
        ref = paper.get(row, {})
        shown = row_key(run) if run else row  # e.g. "random (ImageNet unavailable)" on the ImageNet row
        t.rows.append(key_labels(shown) + rmd + md + [_fmt_paper(ref.get(k)) for k in keys])
        t.csv_rows.append([shown[0], shown[1]] + rcs + cs + [csv_num(ref.get(k)) for k in keys])
    t.notes += [_resolution_note(runs), *published_notes(key)]
    t.n_runs = len(runs)
    return t


def _covid_key(run: dict) -> tuple[str, int]:
    k = run_row_keys(run)
    return k["input"], k["channels"]


def table_ii(runs: Sequence[dict], positive: str = "COVID") -> Table:
    """Table II: COVID-class precision/recall/F1 per input scheme (raw/masked x 1/3 channels)."""
    return _class_table(
        "II",
        f"Table II. Performance on the {positive} class by input and pre-processing",
        [r for r in runs if _fits(r, "covid", 1)],
        positive,
        ("Scheme", "Channels"),
        ("input", "channels"),
        _covid_key,
        lambda k: [INPUT_NAMES.get(k[0], k[0]), str(k[1])],
    )


def _weighted_table(
    key: str,
    title: str,
    runs: Sequence[dict],
    columns: list[str],
    key_columns: tuple[str, str],
    csv_key_columns: tuple[str, str],
    row_key,
    key_labels,
    with_epoch: bool,
    average: str = "weighted",
) -> Table:
    """A paper table of test loss, accuracy and ``average`` P/R/F1 per row key (Tables III and V)."""
    proto = _protocol_columns(runs)
    paper = published_rows(key)
    keys = ("precision", "recall", "f1")
    epoch_cols = ["Epoch"] if with_epoch else []
    t = Table(
        key,
        title,
        [*key_columns, "Run"]
        + (["Protocol"] if proto else [])
        + columns
        + epoch_cols
        + ["Paper loss", "Paper accuracy"]
        + [f"Paper {average} {k}" for k in ("P", "R", "F1")]
        + (["Paper epoch"] if with_epoch else []),
        csv_columns=[*csv_key_columns, "run"]
        + (["protocol"] if proto else [])
        + ["loss"]
        + _csv_metric_columns("", ("accuracy",))
        + _csv_metric_columns(f"{average}_", keys)
        + (["best_epoch"] if with_epoch else [])
        + ["paper_loss", "paper_accuracy"]
        + [f"paper_{k}" for k in keys]
        + (["paper_epoch"] if with_epoch else []),
    )
    for row, run in _ordered(runs, row_key, paper):
        m = run["test"] if run else None
        amd, acs = _metric_cells(m, ("accuracy",))
        wmd, wcs = _metric_cells(m[average] if m else None, keys)
        rmd, rcs = _run_cells(run, proto)
        ref = paper.get(row, {})
        loss = m.get("loss") if m else None
        epoch = run.get("best_epoch") if run else None
        shown = row_key(run) if run else row  # e.g. "random (ImageNet unavailable)" on the ImageNet row
        t.rows.append(
            key_labels(shown)
            + rmd
            + [fmt_num(loss)]
            + amd
            + wmd
            + ([fmt_num(epoch)] if with_epoch else [])
            + [fmt_num(ref.get("loss"))]
            + [_fmt_paper(ref.get(k)) for k in ("accuracy",) + keys]
            + ([fmt_num(ref.get("epoch"))] if with_epoch else [])
        )
        t.csv_rows.append(
            [shown[0], shown[1]]
            + rcs
            + [csv_num(loss)]
            + acs
            + wcs
            + ([csv_num(epoch)] if with_epoch else [])
            + [csv_num(ref.get(k)) for k in ("loss", "accuracy") + keys + (("epoch",) if with_epoch else ())]
        )
    t.notes += [_resolution_note(runs), *published_notes(key)]
    t.n_runs = len(runs)
    return t


def table_iii(runs: Sequence[dict]) -> Table:
    """Table III: macro-average precision/recall/F1, test loss and accuracy per input scheme.

    The paper captions it "weighted average", but its numbers are the macro row of the authors'
    ``classification_report``; the note beside the table says so.
    """
    return _weighted_table(
        "III",
        "Table III. Macro-average performance by input and pre-processing (the paper's caption says "
        "weighted; its numbers are macro)",
        [r for r in runs if _fits(r, "covid", 1)],
        ["Test loss", "Test accuracy", "Test macro precision", "Test macro recall", "Test macro F1"],
        ("Scheme", "Channels"),
        ("input", "channels"),
        _covid_key,
        lambda k: [INPUT_NAMES.get(k[0], k[0]), str(k[1])],
        with_epoch=False,
        average="macro",
    )


def table_iv(runs: Sequence[dict]) -> Table:
    """Table IV: loss comparison (raw, 3 channels): test accuracy and epochs needed, one row per loss.

    The paper prints losses as columns; rows here hold several runs (protocols, repeats) per loss.
    """
    runs = [r for r in runs if _fits(r, "covid", 2) and _covid_key(r) == ("raw", 3)]
    proto = _protocol_columns(runs)
    paper = published_rows("IV")
    t = Table(
        "IV",
        "Table IV. Performance using different (weighted) losses",
        ["Loss", "Run"]
        + (["Protocol"] if proto else [])
        + ["Test accuracy", "Epochs needed", "Training time", "Paper best test accuracy", "Paper epochs"],
        csv_columns=["loss", "run"]
        + (["protocol"] if proto else [])
        + _csv_metric_columns("", ("accuracy",))
        + ["best_epoch", "seconds", "paper_accuracy", "paper_epochs"],
    )
    for key, run in _ordered(runs, lambda r: run_row_keys(r)["loss"], paper):
        m = run["test"] if run else None
        amd, acs = _metric_cells(m, ("accuracy",))
        rmd, rcs = _run_cells(run, proto)
        ref = paper.get(key, {})
        epoch = run.get("best_epoch") if run else None
        seconds = run.get("seconds") if run else None
        t.rows.append(
            [LOSS_NAMES.get(key, key)]
            + rmd
            + amd
            + [
                fmt_num(epoch),
                fmt_seconds(seconds),
                _fmt_paper(ref.get("accuracy")),
                fmt_num(ref.get("epochs")),
            ]
        )
        t.csv_rows.append(
            [key]
            + rcs
            + acs
            + [csv_num(epoch), csv_num(seconds), csv_num(ref.get("accuracy")), csv_num(ref.get("epochs"))]
        )
    t.notes += [_resolution_note(runs), *published_notes("IV")]
    t.n_runs = len(runs)
    t.notes.append(
        "Epochs needed: the epoch whose weights were kept (best validation accuracy). The paper "
        "compared configurations on the test set; ours are chosen on validation."
    )
    return t


def _pneumonia_key(run: dict) -> tuple[str, str]:
    k = run_row_keys(run)
    return k["pretraining"], k["scheme"]


def table_v(runs: Sequence[dict]) -> Table:
    """Table V: pneumonia dataset, weighted averages with test loss, accuracy and epoch per scheme."""
    return _weighted_table(
        "V",
        "Table V. Weighted-average performance on the pneumonia dataset",
        [r for r in runs if _fits(r, "pneumonia", 3)],
        ["Test loss", "Test accuracy", "Test WA precision", "Test WA recall", "Test WA F1"],
        ("Pre-trained dataset", "Scheme"),
        ("pretraining", "scheme"),
        _pneumonia_key,
        lambda k: [k[0], SCHEME_NAMES.get(k[1], k[1])],
        with_epoch=True,
    )


def table_vi(runs: Sequence[dict], positive: str = "PNEUMONIA") -> Table:
    """Table VI: PNEUMONIA-class precision/recall/F1 on the pneumonia dataset per scheme."""
    return _class_table(
        "VI",
        f"Table VI. Performance on the {positive} class of the pneumonia dataset",
        [r for r in runs if _fits(r, "pneumonia", 3)],
        positive,
        ("Pre-trained dataset", "Scheme"),
        ("pretraining", "scheme"),
        _pneumonia_key,
        lambda k: [k[0], SCHEME_NAMES.get(k[1], k[1])],
    )


def _precisions(run: dict) -> tuple[str, str]:
    """(training, evaluation) numerics of a run; evaluation defaults to fp32, as cxrtl evaluates."""
    p = run.get("precision") or {}
    return str(p.get("train", "")), str(
        p.get("eval") or (run.get("test") or {}).get("source", {}).get("precision", "fp32")
    )


def runs_table(runs: Sequence[dict]) -> Table:
    """Every run on one table: its configuration, headline test metrics with intervals, time."""
    t = Table(
        "runs",
        "All runs",
        [
            "Run",
            "Dataset",
            "Protocol",
            "Input",
            "Ch",
            "Loss",
            "Pre-training",
            "Scheme",
            "n",
            "Accuracy",
            "Weighted F1",
            "Macro F1",
            "Loss",
            "ECE",
            "Best epoch",
            "Training time",
            "Precision (train / eval)",
        ],
        csv_columns=[
            "run",
            "dataset",
            "protocol",
            "input",
            "channels",
            "loss_fn",
            "pretraining",
            "scheme",
            "n",
            "accuracy",
            "accuracy_lo",
            "accuracy_hi",
            "weighted_f1",
            "weighted_f1_lo",
            "weighted_f1_hi",
            "macro_f1",
            "test_loss",
            "ece",
            "best_epoch",
            "seconds",
            "train_precision",
            "eval_precision",
        ],
    )
    for r in runs:
        k, m = run_row_keys(r), r.get("test") or {}
        w = m.get("weighted") or {}
        acc_ci, f1_ci = m.get("accuracy_ci"), w.get("f1_ci")
        t.rows.append(
            [
                r.get("name", ""),
                r.get("dataset", ""),
                r.get("protocol") or "",
                k["input"],
                str(k["channels"]),
                loss_label(r),
                k["pretraining"],
                SCHEME_NAMES.get(k["scheme"], k["scheme"]),
                fmt_num(m.get("n")),
                fmt_pct(m.get("accuracy"), acc_ci),
                fmt_pct(w.get("f1"), f1_ci),
                fmt_pct((m.get("macro") or {}).get("f1")),
                fmt_num(m.get("loss")),
                fmt_num(m.get("ece")),
                fmt_num(r.get("best_epoch")),
                fmt_seconds(r.get("seconds")),
                "{} / {}".format(*_precisions(r)),
            ]
        )
        t.csv_rows.append(
            [
                r.get("name", ""),
                r.get("dataset", ""),
                r.get("protocol") or "",
                k["input"],
                k["channels"],
                k["loss"],
                k["pretraining"],
                k["scheme"],
                csv_num(m.get("n")),
                csv_num(m.get("accuracy")),
                csv_num(acc_ci[0]) if acc_ci else "",
                csv_num(acc_ci[1]) if acc_ci else "",
                csv_num(w.get("f1")),
                csv_num(f1_ci[0]) if f1_ci else "",
                csv_num(f1_ci[1]) if f1_ci else "",
                csv_num((m.get("macro") or {}).get("f1")),
                csv_num(m.get("loss")),
                csv_num(m.get("ece")),
                csv_num(r.get("best_epoch")),
                csv_num(r.get("seconds")),
                *_precisions(r),
            ]
        )
    t.notes.append(_resolution_note(runs))
    t.n_runs = len(runs)
    return t


TABLE_BUILDERS = {"II": table_ii, "III": table_iii, "IV": table_iv, "V": table_v, "VI": table_vi}


def paper_tables(runs: Sequence[dict]) -> dict[str, Table]:
    """Tables II-VI (those with at least one fitting run) plus the all-runs table (every seed), by key."""
    tables = {}
    merged = merge_seeds(runs)  # one row per configuration: several seeds show as mean ± sd
    for key, build in TABLE_BUILDERS.items():
        table = build(merged)
        if table.n_runs:
            tables[key] = table
    tables["runs"] = runs_table(runs)
    return tables


def write_tables(runs: Sequence[dict], out_dir: str | Path) -> dict[str, list[Path]]:
    """Write each table as ``table_<key>.md`` / ``.csv`` and all of them in ``tables.md``."""
    for r in runs:
        if not isinstance(r, dict) or not isinstance(r.get("test"), dict):
            raise CxrtlError(
                f"run {r.get('name', '?') if isinstance(r, dict) else r!r} has no test metrics; "
                "evaluate it before building tables"
            )
    tables = paper_tables(runs)
    out = {key: table.write(out_dir) for key, table in tables.items()}
    text = "\n".join(t.to_markdown() for t in tables.values())
    out["all"] = [write_text(Path(out_dir) / "tables.md", "# Results beside the paper's\n\n" + text)]
    return out
