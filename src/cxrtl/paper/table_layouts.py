"""The two layouts of the paper's tables: one class's precision/recall/F1 per row (Tables II and VI), and
test loss, accuracy and averaged precision/recall/F1 per row (Tables III and V). Each sits our numbers,
with intervals, beside the paper's published ones."""

from __future__ import annotations

from collections.abc import Sequence

from ..formatting import csv_num, fmt_num
from .published import published_notes, published_rows
from .rows import class_metrics, has_protocol, ordered_rows
from .table import Table, csv_metric_columns, fmt_paper, metric_cells, resolution_note, run_cells


def class_table(
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
    proto = has_protocol(runs)
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
        + csv_metric_columns(f"{positive.lower()}_", keys)
        + [f"paper_{k}" for k in keys],
    )
    for row, run in ordered_rows(runs, row_key, paper):
        entry = class_metrics(run["test"], positive) if run else None
        md, cs = metric_cells(entry, keys)
        rmd, rcs = run_cells(run, proto)
        ref = paper.get(row, {})
        shown = row_key(run) if run else row  # e.g. "random (ImageNet unavailable)" on the ImageNet row
        t.rows.append(key_labels(shown) + rmd + md + [fmt_paper(ref.get(k)) for k in keys])
        t.csv_rows.append([shown[0], shown[1]] + rcs + cs + [csv_num(ref.get(k)) for k in keys])
    t.notes += [resolution_note(runs), *published_notes(key)]
    t.n_runs = len(runs)
    return t


def average_table(
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
    proto = has_protocol(runs)
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
        + csv_metric_columns("", ("accuracy",))
        + csv_metric_columns(f"{average}_", keys)
        + (["best_epoch"] if with_epoch else [])
        + ["paper_loss", "paper_accuracy"]
        + [f"paper_{k}" for k in keys]
        + (["paper_epoch"] if with_epoch else []),
    )
    for row, run in ordered_rows(runs, row_key, paper):
        m = run["test"] if run else None
        amd, acs = metric_cells(m, ("accuracy",))
        wmd, wcs = metric_cells(m[average] if m else None, keys)
        rmd, rcs = run_cells(run, proto)
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
            + [fmt_paper(ref.get(k)) for k in ("accuracy",) + keys]
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
    t.notes += [resolution_note(runs), *published_notes(key)]
    t.n_runs = len(runs)
    return t
