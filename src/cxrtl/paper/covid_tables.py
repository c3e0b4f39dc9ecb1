"""The paper's COVID tables: Table II (the COVID class by input), III (macro averages by input) and IV
(the losses)."""

from __future__ import annotations

from collections.abc import Sequence

from ..formatting import csv_num, fmt_num, fmt_seconds
from .published import published_notes, published_rows
from .rows import fits, has_protocol, ordered_rows, run_row_keys
from .table import (
    INPUT_NAMES,
    LOSS_NAMES,
    Table,
    csv_metric_columns,
    fmt_paper,
    metric_cells,
    resolution_note,
    run_cells,
)
from .table_layouts import average_table, class_table


def _covid_key(run: dict) -> tuple[str, int]:
    k = run_row_keys(run)
    return k["input"], k["channels"]


def table_ii(runs: Sequence[dict], positive: str = "COVID") -> Table:
    """Table II: COVID-class precision/recall/F1 per input scheme (raw/masked x 1/3 channels)."""
    return class_table(
        "II",
        f"Table II. Performance on the {positive} class by input and pre-processing",
        [r for r in runs if fits(r, "covid", 1)],
        positive,
        ("Scheme", "Channels"),
        ("input", "channels"),
        _covid_key,
        lambda k: [INPUT_NAMES.get(k[0], k[0]), str(k[1])],
    )


def table_iii(runs: Sequence[dict]) -> Table:
    """Table III: macro-average precision/recall/F1, test loss and accuracy per input scheme.

    The paper captions it "weighted average", but its numbers are the macro row of the authors'
    ``classification_report``; the note beside the table says so.
    """
    return average_table(
        "III",
        "Table III. Macro-average performance by input and pre-processing (the paper's caption says "
        "weighted; its numbers are macro)",
        [r for r in runs if fits(r, "covid", 1)],
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
    runs = [r for r in runs if fits(r, "covid", 2) and _covid_key(r) == ("raw", 3)]
    proto = has_protocol(runs)
    paper = published_rows("IV")
    t = Table(
        "IV",
        "Table IV. Performance using different (weighted) losses",
        ["Loss", "Run"]
        + (["Protocol"] if proto else [])
        + ["Test accuracy", "Epochs needed", "Training time", "Paper best test accuracy", "Paper epochs"],
        csv_columns=["loss", "run"]
        + (["protocol"] if proto else [])
        + csv_metric_columns("", ("accuracy",))
        + ["best_epoch", "seconds", "paper_accuracy", "paper_epochs"],
    )
    for key, run in ordered_rows(runs, lambda r: run_row_keys(r)["loss"], paper):
        m = run["test"] if run else None
        amd, acs = metric_cells(m, ("accuracy",))
        rmd, rcs = run_cells(run, proto)
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
                fmt_paper(ref.get("accuracy")),
                fmt_num(ref.get("epochs")),
            ]
        )
        t.csv_rows.append(
            [key]
            + rcs
            + acs
            + [csv_num(epoch), csv_num(seconds), csv_num(ref.get("accuracy")), csv_num(ref.get("epochs"))]
        )
    t.notes += [resolution_note(runs), *published_notes("IV")]
    t.n_runs = len(runs)
    t.notes.append(
        "Epochs needed: the epoch whose weights were kept (best validation accuracy). The paper "
        "compared configurations on the test set; ours are chosen on validation."
    )
    return t
