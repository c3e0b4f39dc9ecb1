"""The paper's Tables II-VI and an all-runs table: our run dicts' metrics beside the published numbers.

Each table is written as Markdown (for people) and CSV (plain numbers, intervals split, for programs).
The run dicts these read are described in :mod:`cxrtl.paper.rows`; each table is built in its own module
(``covid_tables``, ``pneumonia_tables``, ``runs_table``) from the cells of :mod:`cxrtl.paper.table`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import CxrtlError
from ..fsutil import write_text
from .covid_tables import table_ii, table_iii, table_iv
from .pneumonia_tables import table_v, table_vi
from .rows import RANDOM_NOT_IMAGENET, loss_label, run_experiments, run_row_keys
from .runs_table import runs_table
from .seeds import merge_seeds
from .table import INPUT_NAMES, LOSS_NAMES, SCHEME_NAMES, Table, fmt_mean_sd, resolution_note

_resolution_note = resolution_note  # the name tests and older callers use

__all__ = [
    "INPUT_NAMES",
    "LOSS_NAMES",
    "RANDOM_NOT_IMAGENET",
    "SCHEME_NAMES",
    "TABLE_BUILDERS",
    "Table",
    "_resolution_note",
    "resolution_note",
    "fmt_mean_sd",
    "loss_label",
    "paper_tables",
    "run_experiments",
    "run_row_keys",
    "runs_table",
    "table_ii",
    "table_iii",
    "table_iv",
    "table_v",
    "table_vi",
    "write_tables",
]

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
