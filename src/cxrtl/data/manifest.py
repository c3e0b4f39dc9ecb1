"""A dataset manifest from the metadata table a public collection ships (``cxrtl data manifest``).

The COVID-19 radiograph collections used as external test sets publish a table rather than class folders:
the covid-chestxray-dataset of Cohen et al. (``metadata.csv``: ``patientid, finding, view, modality,
filename, ...``), the Figure1 and Actualmed collections (``patientid, imagename, finding, ...``).
:func:`build_manifest` turns such a table (CSV or Excel) into cxrtl's manifest (``path,label[,patient_id]``,
the format :func:`cxrtl.data.load_dataset` reads), keeping only rows that match ``--where`` filters and
whose image exists. Labels keep their source names: mapping them onto a model's classes is
``cxrtl evaluate --class-map``'s job.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import CxrtlError
from ..fsutil import write_csv

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv", ".xlsx", ".xlsm")


def read_table(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """(column names, rows as {column: text}) of a CSV/TSV or Excel (first sheet) table."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CxrtlError(f"metadata table {path} does not exist; give the CSV or .xlsx the collection ships")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise CxrtlError(f"metadata table {path} should be one of {', '.join(TABLE_SUFFIXES)}")
    if suffix in (".xlsx", ".xlsm"):
        return _read_excel(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            rows = [{k: (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
            columns = [c for c in (reader.fieldnames or []) if c is not None]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CxrtlError(f"cannot read metadata table {path}: {exc}; expected a UTF-8 CSV") from None
    return columns, rows


def _read_excel(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        import openpyxl
    except ImportError:
        raise CxrtlError(
            f"reading {path.name} needs openpyxl (pip install 'cxrtl[xlsx]'), or save the table as CSV"
        ) from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001  (openpyxl raises zipfile, KeyError, InvalidFileException ...)
        raise CxrtlError(f"cannot read Excel table {path}: {type(exc).__name__}; save it as CSV") from None
    try:
        rows_iter = book.worksheets[0].iter_rows(values_only=True)
        header = next(rows_iter, None)
        if header is None:
            return [], []
        columns = ["" if c is None else str(c).strip() for c in header]
        rows = [
            {c: ("" if v is None else str(v).strip()) for c, v in zip(columns, values) if c}
            for values in rows_iter
            if values and any(v is not None for v in values)
        ]
    finally:
        book.close()
    return [c for c in columns if c], rows


def parse_where(items: Sequence[str] | None) -> dict[str, set[str]]:
    """``["view=PA,AP", "modality=X-ray"]`` -> {"view": {"PA", "AP"}, "modality": {"X-ray"}}."""
    out: dict[str, set[str]] = {}
    for item in items or []:
        column, sep, values = item.partition("=")
        wanted = {v.strip() for v in values.split(",") if v.strip()}
        if not sep or not column.strip() or not wanted:
            raise CxrtlError(f"--where {item!r} should be COLUMN=VALUE[,VALUE...]; e.g. --where view=PA,AP")
        out.setdefault(column.strip(), set()).update(wanted)
    return out


def _check_columns(table: Path, columns: Sequence[str], needed: Mapping[str, str | None]) -> None:
    missing = [f"{opt} {col!r}" for opt, col in needed.items() if col is not None and col not in columns]
    if missing:
        raise CxrtlError(
            f"metadata table {table} has no column {', '.join(missing)}; its columns are "
            f"{', '.join(columns) or '(none)'}"
        )


def build_manifest(
    table: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    path_column: str,
    label_column: str,
    patient_column: str | None = None,
    where: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write a cxrtl manifest (``path,label[,patient_id]``) of the table's rows whose image is in ``images``.

    Rows that fail a ``where`` filter are left out; rows whose file is missing are counted, not fatal; rows
    without a label are counted. Paths are written relative to the manifest's folder. Returns a summary:
    ``{"rows", "written", "filtered_out", "missing_files", "no_label", "duplicates", "labels", "out"}``.
    """
    table = Path(table).expanduser()
    images = Path(images).expanduser()
    out = Path(out).expanduser()
    if not images.is_dir():
        raise CxrtlError(
            f"image folder {images} does not exist; give the folder the table's file names are in"
        )
    if out.suffix.lower() != ".csv":
        raise CxrtlError(f"the manifest {out} should end in .csv; e.g. --out external.csv")
    filters = parse_where(where)
    columns, rows = read_table(table)
    _check_columns(
        table,
        columns,
        {
            "--path-column": path_column,
            "--label-column": label_column,
            "--patient-column": patient_column,
            **{f"--where {c}": c for c in filters},
        },
    )
    base = out.parent.resolve()
    written: list[list[str]] = []
    counts: Counter[str] = Counter()
    missing: list[str] = []
    seen: set[str] = set()
    for row in rows:
        if any(row.get(c, "") not in wanted for c, wanted in filters.items()):
            counts["filtered_out"] += 1
            continue
        name, label = row.get(path_column, ""), row.get(label_column, "")
        if not name:
            counts["no_path"] += 1
            continue
        if not label:
            counts["no_label"] += 1
            continue
        file = (images / name).resolve()
        if not file.is_file():
            missing.append(name)
            continue
        if str(file) in seen:
            counts["duplicates"] += 1
            continue
        seen.add(str(file))
        rel = os.path.relpath(file, base).replace(os.sep, "/")
        written.append([rel, label] + ([row.get(patient_column, "")] if patient_column else []))
    if not written:
        raise CxrtlError(
            f"no row of {table} names an existing image in {images} "
            f"({len(rows)} rows, {counts['filtered_out']} filtered out by --where, {len(missing)} missing files); "
            "check --images, --path-column and --where"
        )
    header = ["path", "label"] + (["patient_id"] if patient_column else [])
    write_csv(out, header, written)
    labels = Counter(r[1] for r in written)
    if missing:
        log.warning(
            "%d row(s) of %s name a file not in %s (e.g. %s); left out",
            len(missing),
            table.name,
            images,
            missing[0],
        )
    return {
        "table": str(table),
        "out": str(out),
        "rows": len(rows),
        "written": len(written),
        "filtered_out": counts["filtered_out"],
        "missing_files": len(missing),
        "missing_examples": missing[:5],
        "no_label": counts["no_label"] + counts["no_path"],
        "duplicates": counts["duplicates"],
        "labels": dict(sorted(labels.items())),
    }
