"""The all-runs table: every run (every seed) with its configuration, headline test metrics and time."""

from __future__ import annotations

from collections.abc import Sequence

from ..formatting import csv_num, fmt_num, fmt_pct, fmt_seconds
from .rows import loss_label, run_row_keys
from .table import SCHEME_NAMES, Table, resolution_note


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
            "Loss function",
            "Pre-training",
            "Scheme",
            "n",
            "Test accuracy",
            "Test weighted F1",
            "Test macro F1",
            "Test loss",
            "Test ECE",
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
    t.notes.append(resolution_note(runs))
    t.n_runs = len(runs)
    return t
