"""The paper's pneumonia tables: Table V (weighted averages per transfer scheme) and VI (the PNEUMONIA
class per scheme)."""

from __future__ import annotations

from collections.abc import Sequence

from .rows import fits, run_row_keys
from .table import SCHEME_NAMES, Table
from .table_layouts import average_table, class_table


def _pneumonia_key(run: dict) -> tuple[str, str]:
    k = run_row_keys(run)
    return k["pretraining"], k["scheme"]


def table_v(runs: Sequence[dict]) -> Table:
    """Table V: pneumonia dataset, weighted averages with test loss, accuracy and epoch per scheme."""
    return average_table(
        "V",
        "Table V. Weighted-average performance on the pneumonia dataset",
        [r for r in runs if fits(r, "pneumonia", 3)],
        ["Test loss", "Test accuracy", "Test WA precision", "Test WA recall", "Test WA F1"],
        ("Pre-trained dataset", "Scheme"),
        ("pretraining", "scheme"),
        _pneumonia_key,
        lambda k: [k[0], SCHEME_NAMES.get(k[1], k[1])],
        with_epoch=True,
    )


def table_vi(runs: Sequence[dict], positive: str = "PNEUMONIA") -> Table:
    """Table VI: PNEUMONIA-class precision/recall/F1 on the pneumonia dataset per scheme."""
    return class_table(
        "VI",
        f"Table VI. Performance on the {positive} class of the pneumonia dataset",
        [r for r in runs if fits(r, "pneumonia", 3)],
        positive,
        ("Pre-trained dataset", "Scheme"),
        ("pretraining", "scheme"),
        _pneumonia_key,
        lambda k: [k[0], SCHEME_NAMES.get(k[1], k[1])],
    )
