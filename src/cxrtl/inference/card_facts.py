"""What a model card states, gathered from what cxrtl recorded about a run: summary, config, split, metrics,
the decision record, the leakage check and the int8 comparison, into one dict (:func:`gather_facts`).

:mod:`cxrtl.inference.card` renders the dict; this module only reads.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from ..data.records import SPLITS
from ..decisions import read_decisions
from ..fsutil import read_json

log = logging.getLogger(__name__)

SYNTH_MARKER = ".cxrtl-synth.json"  # written by `cxrtl data synth` beside the dataset folders
LAYOUT_NAMES = {
    "covid-radiography": "COVID-19 Radiography Database layout (`<class>/images`, `<class>/masks`)",
    "kermany": "Kermany chest_xray layout (`{train,val,test}/{NORMAL,PNEUMONIA}`)",
    "class-folders": "class-per-folder layout",
    "csv": "CSV manifest",
}


# ------------------------------------------------------------------------------------------ facts
def _read(path: Path, what: str) -> Any:
    return read_json(path, what) if path.is_file() else None


def split_counts(split_csv: Path) -> dict[str, dict[str, int]] | None:
    """``{split: {label: n}}`` from a split CSV, read as text (no data needed)."""
    if not split_csv.is_file():
        return None
    counts: dict[str, Counter] = {s: Counter() for s in SPLITS}
    with open(split_csv, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            counts.setdefault(row["split"], Counter())[row["label"]] += 1
    return {s: dict(sorted(c.items())) for s, c in counts.items()}


def _init_facts(config: dict) -> dict[str, Any]:
    """Where the weights started: ImageNet, random, or another checkpoint (and where that one started)."""
    init = str(config.get("init") or "imagenet")
    if init in ("imagenet", "none"):
        return {"init": init, "random": init == "none", "source_random": False}
    source = Path(init)
    meta = _read(source / "best.json" if source.is_dir() else source.with_suffix(".json"), "checkpoint")
    source_init = ((meta or {}).get("config") or {}).get("init")
    return {"init": init, "random": False, "source_random": source_init == "none", "source_init": source_init}


def _data_facts(config: dict, split: Path, leakage_check: bool, progress: bool) -> dict[str, Any]:
    """Layout, synthetic marker and (optionally) the split's leakage check, when the data folder exists."""
    root = Path(str(config.get("data") or ""))
    facts: dict[str, Any] = {"root": str(root), "available": bool(config.get("data")) and root.exists()}
    if not facts["available"]:
        return facts
    from ..data import load_dataset

    index = load_dataset(root)
    facts["layout"] = index.layout
    facts["synthetic"] = any((p / SYNTH_MARKER).is_file() for p in (index.root, index.root.parent))
    if leakage_check and split.is_file():
        from ..data.splits import read_split_csv
        from ..integrity.leakage import check_split

        facts["leakage"] = check_split(index, read_split_csv(split, index), progress=progress)
    return facts


def gather_facts(
    run: Path, bundle: Path, int8: dict | None = None, leakage_check: bool = True, progress: bool = False
) -> dict[str, Any]:
    """Everything the card states, read from the run directory and the (staged) bundle folder."""
    meta = read_json(bundle / "best.json", "checkpoint metadata")
    summary = _read(run / "summary.json", "run summary") or {}
    config = meta.get("config") or summary.get("config") or {}
    metrics = _read(bundle / "metrics.json", "metrics")
    return {
        "name": run.resolve().name,
        "classes": list(meta["classes"]),
        "backbone": meta["backbone"],
        "preprocess": meta.get("preprocess") or {},
        "epoch": meta.get("epoch"),
        "summary": summary,
        "config": config,
        "split": split_counts(run / "split.csv"),
        "data": _data_facts(config, run / "split.csv", leakage_check, progress),
        "init": _init_facts(config),
        "metrics": metrics,
        "decisions": read_decisions(bundle / "best.safetensors", meta),
        "int8": int8,
        "segmenter": (bundle / "segmenter.safetensors").is_file(),
    }
