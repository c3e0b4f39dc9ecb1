"""External validation: someone else's data through a class map, checked for overlap with training, and
evaluations of one model compared side by side (``cxrtl evaluate --class-map``, ``cxrtl compare``).

A model that scores well on its own test split may not carry over to another hospital's images (Roberts et
al. 2021; DeGrave et al. 2021). This module

* maps an external set's labels onto the model's classes (:func:`parse_class_map`, :func:`map_records`),
  dropping unmapped labels and counting them;
* reports metrics honestly when some model classes have no images there (:func:`restrict_to_present`:
  averages over the classes present only, the absent ones named);
* refuses to call a set "external" when it shares images with the training data (:func:`overlap_check`);
* and :mod:`cxrtl.evaluation.across_sets` compares evaluations of one model on different image sets
  (``cxrtl compare``).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CxrtlError
from . import metrics as M

log = logging.getLogger(__name__)

UNPAIRED_METHOD = "unpaired two-sample percentile bootstrap: each evaluation's images resampled independently"


# ------------------------------------------------------------------------------------------ class map
def parse_class_map(text: str | os.PathLike, classes: Sequence[str]) -> dict[str, str]:
    """``"COVID-19=COVID,No finding=Normal"`` or a YAML file of ``source: model class`` -> {source: class}.

    One-line error when a target is not one of the model's ``classes`` (they are listed).
    """
    path = Path(str(text)).expanduser()
    if path.suffix.lower() in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise CxrtlError(f"class map file {path} does not exist; give a YAML file or SOURCE=CLASS,...")
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise CxrtlError(f"cannot read class map {path}: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict) or not data:
            raise CxrtlError(f"class map {path} should be a YAML mapping of source label: model class")
        mapping = {str(k).strip(): str(v).strip() for k, v in data.items() if v is not None}
    else:
        mapping = {}
        for item in str(text).split(","):
            if not item.strip():
                continue
            source, sep, target = item.partition("=")
            if not sep or not source.strip() or not target.strip():
                raise CxrtlError(
                    f"class map entry {item.strip()!r} should be SOURCE=CLASS; e.g. "
                    '--class-map "COVID-19=COVID,No finding=Normal"'
                )
            mapping[source.strip()] = target.strip()
    if not mapping:
        raise CxrtlError("the class map is empty; give SOURCE=CLASS pairs or a YAML file")
    unknown = sorted({t for t in mapping.values() if t not in classes})
    if unknown:
        raise CxrtlError(
            f"the class map names {', '.join(repr(u) for u in unknown)}, which the model does not have; "
            f"its classes are {', '.join(classes)}"
        )
    return mapping


def map_records(records, class_map: Mapping[str, str] | None, classes: Sequence[str]):
    """(mapped records, source label of each kept path, images dropped per unmapped label).

    Without a class map, labels that are model classes keep their name and the rest are dropped.
    """
    from ..data.records import Record

    kept: list[Record] = []
    source_of: dict[str, str] = {}
    dropped: Counter[str] = Counter()
    for r in records:
        target = (
            class_map.get(r.label) if class_map is not None else (r.label if r.label in classes else None)
        )
        if target is None:
            dropped[r.label] += 1
            continue
        kept.append(Record(r.path, target, r.mask_path, r.patient_id, r.source_split))
        source_of[r.path] = r.label
    return kept, source_of, dict(sorted(dropped.items()))


def split_fits(split_csv: Path | None, index) -> bool:
    """True when ``split_csv`` lists at least one file of ``index`` (so the data is the split's data)."""
    import csv

    if split_csv is None or not Path(split_csv).is_file():
        return True
    try:
        with open(split_csv, newline="", encoding="utf-8") as fh:
            paths = [row.get("path") or "" for row in csv.DictReader(fh)]
    except (OSError, UnicodeDecodeError, csv.Error):
        return True  # let the split reader give its own error
    return any(p and index.abspath(p).is_file() for p in paths) or not paths


def prepare_external(meta: dict, pp, data_root, class_map: str | None, cache_dir, progress: bool):
    """(prepared data with every mapped image under "test", records, the ``external`` report part)."""
    from ..data import load_dataset
    from ..data.cache import build_cache, check_masks
    from ..data.dataset import PreparedData

    classes = [str(c) for c in meta["classes"]]
    mapping = parse_class_map(class_map, classes) if class_map is not None else None
    index = load_dataset(data_root)
    records, source_of, dropped = map_records(index.records, mapping, classes)
    if mapping is None and dropped:
        raise CxrtlError(
            f"{data_root} has labels the model does not have: {', '.join(dropped)} "
            f"({sum(dropped.values())} images); map them with --class-map (the model's classes are "
            f"{', '.join(classes)})"
        )
    if not records:
        labels = ", ".join(sorted({r.label for r in index.records})) or "(none)"
        raise CxrtlError(
            f"the class map leaves no image of {data_root} (its labels: {labels}); map at least one of them "
            f"onto the model's classes {', '.join(classes)}"
        )
    if pp.input == "masked":
        check_masks(index, records)
    cache = build_cache(index, records, pp, cache_dir=cache_dir, progress=progress)
    failed = sorted(cache.failed)
    records = [r for r in records if r.path not in cache.failed]
    if not records:
        raise CxrtlError(f"none of the mapped images of {data_root} could be decoded; check them")
    counts = Counter(r.label for r in records)
    absent = [c for c in classes if counts[c] == 0]
    info: dict[str, Any] = {
        "data": str(data_root),
        "class_map": mapping,
        "images": len(index.records),
        "kept": len(records),
        "kept_per_class": {c: counts[c] for c in classes},
        "dropped_per_label": dropped,
        "undecodable": len(failed),
        "absent_classes": absent,
    }
    for label, n in dropped.items():
        log.info("dropped %d image(s) labelled %r: the class map does not map it", n, label)
    if absent:
        log.warning(
            "the external set has no images of %s: their recall and AUC are not reported, and averages are "
            "over the classes present",
            ", ".join(absent),
        )
    split: dict[str, list] = {"train": [], "val": [], "test": records}
    data = PreparedData(index=index, classes=classes, split=split, datasets={}, cache=cache)
    return data, records, info, source_of


def prepare_checked(
    meta,
    pp,
    data_root,
    class_map,
    split_csv,
    training_root,
    allow_overlap: bool,
    fits: bool,
    cache_dir,
    progress,
):
    """:func:`prepare_external` after refusing fits on an external set, then the overlap check (refusing a
    set that shares images with training unless ``allow_overlap``) -> (data, records, info, source_of)."""
    if fits:
        raise CxrtlError(
            "--calibrate, --positive, --conformal and --fit-ood fit on the training data's validation "
            "subset; run them without the external set, then evaluate it with the fitted settings"
        )
    data, records, info, source_of = prepare_external(meta, pp, data_root, class_map, cache_dir, progress)
    info["overlap"] = overlap_check(
        training_root, split_csv, [data.index.abspath(r.path) for r in records], cache_dir, progress
    )
    refuse_overlap(info, allow_overlap)
    return data, records, info, source_of


def present_classes(labels: np.ndarray, k: int) -> list[int]:
    return [i for i in range(k) if np.any(labels == i)]


def restrict_to_present(
    result: dict,
    labels: np.ndarray,
    probs: np.ndarray,
    info: dict | None = None,
    seed: int = 0,
    n_boot: int = M.N_BOOT,
) -> None:
    """Macro averages (and micro AUC) over the classes present, in place; absent classes are named.

    scikit-learn's macro average counts a class with no images as F1 0; on an external set missing a class
    that is not the model's fault, so the average is taken over the classes with images, and said so.
    """
    if info is not None:
        result["external"] = info
    classes = result["classes"]
    k = len(classes)
    present = present_classes(labels, k)
    absent = [classes[i] for i in range(k) if i not in present]
    result.setdefault("external", {})["absent_classes"] = absent
    if not absent:
        return
    pred = np.argmax(probs, axis=1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    prf = M._prf_from_cm(cm)
    macro = {m: float(np.mean(prf[m][present])) for m in ("precision", "recall", "f1")}
    if n_boot:
        rng = np.random.default_rng(seed)
        samples: dict[str, list[float]] = {m: [] for m in macro}
        n = len(labels)
        for _ in range(n_boot):
            idx = rng.integers(0, n, n)
            cmb = np.zeros((k, k), dtype=np.int64)
            np.add.at(cmb, (labels[idx], pred[idx]), 1)
            pb = M._prf_from_cm(cmb)
            for m in macro:
                samples[m].append(float(np.mean(pb[m][present])))
        for m in list(macro):
            macro[f"{m}_ci"] = M._percentile_ci(np.asarray(samples[m]), M.CONFIDENCE)  # type: ignore[assignment]
    result["macro"] = {**macro, "over": [classes[i] for i in present]}
    if len(present) >= 2:
        from sklearn.metrics import roc_auc_score

        onehot = np.eye(k, dtype=np.int64)[labels][:, present]
        result["roc_auc_micro"] = float(roc_auc_score(onehot, probs[:, present], average="micro"))
    else:
        result["roc_auc_micro"] = None
    result["external"]["note"] = (
        f"no images of {', '.join(absent)}: their recall and AUC are undefined, and the macro averages and "
        f"micro AUC are over {', '.join(classes[i] for i in present)} only"
    )


# ------------------------------------------------------------------------------------- overlap check
def overlap_check(
    train_root, split_csv: Path | None, external_paths: Sequence[Path], cache_dir, progress: bool
) -> dict[str, Any]:
    """Duplicates (exact and near, perceptual hash) between the run's training and validation images (of
    ``split_csv`` under ``train_root``) and the external set:
    ``{"checked", "training_images", "overlap", "examples", "reason"}``."""
    from ..data import load_dataset, read_split_csv
    from ..integrity.duplicates import overlap_with

    if split_csv is None or not Path(split_csv).is_file():
        return {"checked": False, "reason": "the model has no split.csv to say which images it trained on"}
    if train_root is None:
        return {"checked": False, "reason": "the run does not record its training data, or it moved"}
    try:
        index = load_dataset(train_root)
        split = read_split_csv(split_csv, index)
    except CxrtlError as exc:
        return {"checked": False, "reason": f"the training data could not be read ({exc})"}
    fitted = [index.abspath(r.path) for name in ("train", "val") for r in split[name]]
    shared = overlap_with(fitted, list(external_paths), cache_dir=cache_dir, progress=progress)
    return {
        "checked": True,
        "training_data": str(train_root),
        "training_images": len(fitted),
        "overlap": len(shared),
        "examples": sorted(str(p) for p in shared)[:10],
    }


def refuse_overlap(info: dict, allow_overlap: bool) -> None:
    check = info["overlap"]
    if not check.get("checked"):
        log.warning("no overlap check between training and the external set: %s", check.get("reason"))
        return
    if check["overlap"] and not allow_overlap:
        raise CxrtlError(
            f"{check['overlap']} image(s) of the external set duplicate images the model was trained or "
            f"selected on (e.g. {check['examples'][0]}), so it is not external; remove them, or pass "
            "--allow-overlap to evaluate anyway (the report says so)"
        )
    if check["overlap"]:
        check["allowed"] = True
        log.warning(
            "%d image(s) of the external set duplicate training images; evaluating anyway (--allow-overlap)",
            check["overlap"],
        )
