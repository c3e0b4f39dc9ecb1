"""The paper's published numbers (Tables II-VI), read from the packaged ``published.json``."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources


@cache
def _load() -> dict:
    return json.loads(resources.files(__package__).joinpath("published.json").read_text(encoding="utf-8"))


def published_rows(table: str) -> dict[object, dict]:
    """Table ``table``'s rows in the paper's order: row key -> {column: value}.

    A row key is the tuple of the table's ``row_keys`` values, or the single value where there is one
    (Table IV: the loss name). Values are fractions (epochs are ints), compared with ours, never computed.
    """
    spec = _load()["tables"][table]
    keys = spec["row_keys"]
    out = {}
    for row in spec["rows"]:
        key = tuple(row[k] for k in keys)
        out[key[0] if len(key) == 1 else key] = dict(row["values"])
    return out


def published_average(table: str) -> str | None:
    """Which average the paper's P/R/F1 columns of ``table`` really are: macro, weighted, class or None.

    Table III's caption says "weighted", but its numbers are the macro row of the authors' printout.
    """
    return _load()["tables"][table].get("average")


def published_notes(table: str) -> list[str]:
    """Known typos and settings of the paper's ``table``, to print beside its numbers."""
    return list(_load()["tables"][table].get("notes", []))
