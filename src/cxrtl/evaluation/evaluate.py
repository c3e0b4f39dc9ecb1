"""Evaluate a checkpoint on one subset of a dataset: predictions, metrics with intervals, figures, report.

Outputs in ``out``: ``predictions.csv`` (path,label,pred,prob_<class>...), ``metrics.json``,
``report.md`` and PNG+SVG figures (ROC, confusion matrix, reliability diagram, training curves for a
run directory). The metrics are computed from exactly the probabilities written to predictions.csv,
so they can be recomputed from that file alone. Headline metrics use the model's own softmax
(temperature 1, as in the paper); a temperature, when fitted or found in the model's decision record, is
reported under ``calibrated`` and used for the operating point, as prediction uses it.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..errors import CxrtlError
from ..fsutil import ensure_dir, write_csv, write_json, write_text
from ..provenance import provenance
from ..results import Metrics
from . import fitting
from . import metrics as M
from .run_data import check_against_run_split, data_root_of, foreign, training_root

log = logging.getLogger(__name__)

SUBSETS = ("test", "val", "calibration", "train", "all")
CAM_BY = "CAM of the predicted class, grouped by true class"
PROB_FORMAT = ".8g"  # probabilities in predictions.csv; metrics use these rounded values exactly


def _resolve_inputs(model_path: str | os.PathLike, split_csv) -> tuple[Path, Path | None, Path | None]:
    """(checkpoint .safetensors, split CSV or None, history.csv or None) for a run dir or a checkpoint."""
    from ..checkpoint import resolve_checkpoint

    path = Path(model_path).expanduser()
    history = None
    if path.is_dir():
        if not (path / "best.safetensors").is_file():
            raise CxrtlError(
                f"run directory {path} has no best checkpoint (best.safetensors); let training "
                "finish at least one epoch, or pass a .safetensors checkpoint"
            )
        if split_csv is None and (path / "split.csv").is_file():
            split_csv = path / "split.csv"
        if (path / "history.csv").is_file():
            history = path / "history.csv"
    ckpt = resolve_checkpoint(path)
    return ckpt, (Path(split_csv) if split_csv is not None else None), history


def _check_classes(ckpt_classes: list[str], data_classes: list[str], records, subset: str) -> None:
    """One-line errors for data the checkpoint cannot be scored on."""
    known = set(ckpt_classes)
    if not known & set(data_classes):
        hint = (
            "; the names differ only in letter case, rename the folders"
            if {c.lower() for c in ckpt_classes} == {c.lower() for c in data_classes}
            else "; evaluate with a checkpoint trained on this kind of data"
        )
        raise CxrtlError(
            f"checkpoint classes {ckpt_classes} do not match the data's classes {data_classes}{hint}"
        )
    unseen = sorted({r.label for r in records} - known)
    if unseen:
        count = sum(r.label in unseen for r in records)
        raise CxrtlError(
            f"the {subset} subset has labels the checkpoint never saw: {unseen} ({count} images); "
            f"the checkpoint knows {ckpt_classes}, so remove those classes or retrain"
        )
    missing = [c for c in ckpt_classes if c not in data_classes]
    if missing:
        log.warning("the data has no images of %s; their recall and AUC are undefined", missing)


def _numerics(device, precision: str):
    """Evaluation numerics: fp32 (the paper's numbers are fp32) unless ``precision`` asks for bf16."""
    from ..config import PRECISIONS
    from ..device import resolve_numerics

    if precision not in PRECISIONS:
        raise CxrtlError(
            f"unknown --precision {precision!r}; choose one of {', '.join(PRECISIONS)} (default fp32)"
        )
    return resolve_numerics(device, precision, False)


@contextmanager
def _exact_fp32(precision: str):
    """With ``precision`` fp32, no TF32 either: cuDNN convolutions use TF32 by default on Ampere and later
    GPUs, which is not the fp32 the paper's numbers were computed in. The flags are restored afterwards."""
    import torch

    if precision != "fp32":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _predict(model, data, records, class_to_idx, pp, device, batch_size, numerics=None):
    """Logits [N, k] and labels [N] (checkpoint class order) of ``records``."""
    from ..data import CachedDataset
    from ..training.engine import predict_logits

    dataset = CachedDataset(data.cache, records, class_to_idx)
    if len(dataset) == 0:
        return np.zeros((0, len(class_to_idx)), np.float32), np.zeros(0, np.int64), []
    logits, labels = predict_logits(
        model, dataset, pp, device=device, batch_size=batch_size, numerics=numerics
    )
    return np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64), dataset.records


def _written_probs(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax probabilities rounded exactly as predictions.csv stores them."""
    p = M.softmax(logits, temperature)
    return np.vectorize(lambda v: float(format(v, PROB_FORMAT)))(p) if p.size else p


def _cam_in_lungs(model, data, records, labels, classes, pp, device) -> dict:
    """Mean share of Grad-CAM energy inside the lung mask per true class, beside the mask's share (chance).

    The CAM is each image's predicted class's, grouped by the image's true class; each mean has a 95%
    Student-t interval over images (``ci``), to read beside the chance level.
    """
    try:
        from .cam import COARSE_MAP, feature_map_size, lung_fractions, mask_shares
    except ImportError:
        raise CxrtlError("--cam-in-lungs needs matplotlib and torch (pip install 'cxrtl[all]')") from None
    try:
        fractions = lung_fractions(model, data.index, records, pp, device)
    except CxrtlError as exc:  # e.g. a 1x1 feature map at a small image size: no spatial explanation exists
        log.warning("no Grad-CAM lung fractions: %s", exc)
        return {"by": CAM_BY, "skipped": str(exc)}
    shares = mask_shares(data.index, records, pp)
    h, w = feature_map_size(model, pp, device, warn=False)  # said once, by the command and report.md

    def summary(idx: list[int]) -> dict:
        vals: list[float] = [f for i in idx if (f := fractions[i]) is not None]
        chance: list[float] = [c for i in idx if fractions[i] is not None and (c := shares[i]) is not None]
        return {
            "mean": float(np.mean(vals)) if vals else None,
            "ci": M.mean_interval(vals),
            "n": len(vals),
            "mask_share": float(np.mean(chance)) if chance else None,
        }

    result = {
        "by": CAM_BY,
        "per_class": {c: summary([j for j, y in enumerate(labels) if y == i]) for i, c in enumerate(classes)},
        "overall": summary(list(range(len(fractions)))),
        "without_mask": sum(f is None for f in fractions),
        "feature_map": [h, w],
    }
    if min(h, w) < COARSE_MAP:
        result["warning"] = (
            f"the feature map is only {h}x{w} at {pp.image_size} px, so each CAM cell covers a large part of "
            "the image; train at a larger --image-size for finer maps"
        )
    return result


def _subset_records(meta: dict, pp, data_root, split_csv, subset: str, cache_dir, progress: bool, model_path):
    """(prepared data, records of ``subset``), refusing a dataset or subset the checkpoint cannot score."""
    from ..data import load_dataset, prepare_data
    from ..data.fingerprint import differing
    from ..data.records import SPLITS
    from ..data.splits import SplitFilesMissing

    classes, cfg = list(meta["classes"]), meta.get("config") or {}
    index = load_dataset(data_root)
    if not set(classes) & set(index.classes):  # refuse the wrong dataset before building its cache
        _check_classes(classes, index.classes, [], subset)
    run = Path(model_path).expanduser()
    own_split = split_csv is not None and run.is_dir() and Path(split_csv) == run / "split.csv"
    changed, compared = differing(run, index.root) if run.is_dir() else (0, 0)
    if changed:
        log.warning(
            "%d of %d sampled training files of this run have other content under %s than when it trained: "
            "is --data the run's dataset (or another copy or version of it)?",
            changed,
            compared,
            index.root,
        )
    try:
        data = prepare_data(
            data_root,
            pp,
            index=index,
            split_csv=split_csv,
            seed=int(cfg.get("seed", 2022)),
            ratios=cfg.get("ratios"),
            group_by=cfg.get("group_by"),
            official=bool(cfg.get("official", False)),
            cache_dir=cache_dir,
            progress=progress,
        )
    except SplitFilesMissing as exc:
        if not own_split:
            raise
        trained = cfg.get("data") or "the dataset it was trained on"
        raise CxrtlError(
            f"the run's split names {len(exc.missing)} image(s) that {index.root} does not have ({exc.shown}); "
            f"--data should point at the run's dataset ({trained})"
        ) from None
    records = (
        [r for name in SPLITS for r in data.split.get(name, [])]
        if subset == "all"
        else list(data.split[subset])
    )
    if not records:
        raise CxrtlError(
            f"the {subset} subset of {data_root} is empty"
            + (f" in split {split_csv}" if split_csv else "")
            + "; choose another --subset or a split with images there"
        )
    _check_classes(classes, data.classes, records, subset)
    return data, records


def _add_calibration(
    result: dict, logits, labels, val, temperature, positive, target_sensitivity, fit_on: str = "val"
) -> None:
    """``calibrated`` (when a temperature exists) and ``operating_point`` (when ``positive`` is given)."""
    if temperature is not None:
        cal_probs = _written_probs(logits, temperature)
        loss = fitting.ce_from_logits(logits, labels, temperature)
        result["calibrated"] = {
            "temperature": temperature,
            "loss": loss,
            **M.calibration_bins(labels, cal_probs),
        }
    if positive:
        t = temperature or 1.0
        result["operating_point"] = M.operating_point(
            val[1],
            M.softmax(val[0], t),
            labels,
            M.softmax(logits, t),
            result["classes"],
            positive,
            target_sensitivity,
            chosen_on=fitting.SUBSET_WORDS[fit_on],
        )
        result["operating_point"]["temperature"] = t
        result["operating_point"]["fitted_on"] = fit_on
        fitting.warn_if_scored_on("operating point", fit_on, result["source"]["subset"])


def _write_outputs(
    out: Path,
    result: dict,
    used,
    labels,
    probs,
    history: Path | None,
    figures: bool,
    source_of: dict[str, str] | None = None,
) -> None:
    """predictions.csv, the figures (listed in ``result["figures"]``), metrics.json and report.md."""
    from .markdown import evaluation_markdown

    classes = result["classes"]
    extra = ["source_label"] if source_of is not None else []  # an external set's own label, beside
    write_csv(
        out / "predictions.csv",
        ["path", "label", *extra, "pred"] + [f"prob_{c}" for c in classes],
        (
            [r.path, classes[y], *([source_of[r.path]] if source_of else []), classes[int(np.argmax(p))]]
            + [format(v, PROB_FORMAT) for v in p]
            for r, y, p in zip(used, labels, probs)
        ),
    )
    if figures:
        result["figures"] = [str(p) for p in _figures(result, labels, probs, classes, out, history)]
    write_json(out / "metrics.json", result)
    title = (
        f"External evaluation on {result['source']['data']}"
        if result["source"]["subset"] == "external"
        else f"Evaluation on the {result['source']['subset']} subset"
    )
    write_text(out / "report.md", evaluation_markdown(result, title))


def evaluate(
    model_path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    split_csv=None,
    subset: str = "test",
    out: str | os.PathLike | None = None,
    calibrate: bool = False,
    positive: str | None = None,
    target_sensitivity: float = 0.95,
    device: str = "auto",
    batch_size: int = 64,
    cam_in_lungs: bool = False,
    cache_dir=None,
    progress: bool = True,
    seed: int = 0,
    n_boot: int = M.N_BOOT,
    figures: bool = True,
    precision: str = "fp32",
    conformal: float | None = None,
    conformal_by_class: bool = False,
    class_map: str | None = None,
    allow_overlap: bool = False,
    fit_ood: bool = False,
    ood_percentile: float | None = None,
    ood_layer: str | None = None,
    ood_data: str | os.PathLike | None = None,
) -> Metrics:
    """Evaluate a run dir or checkpoint on ``subset`` of ``data_root``; write outputs to ``out``; return metrics.

    A run directory supplies its own ``split.csv`` (unless ``split_csv`` is given) and best checkpoint.
    Without a split CSV the split is remade with the checkpoint's training settings (seed, ratios,
    grouping); ``subset="all"`` scores every image of ``data_root`` (an external test set).
    ``data_root=None`` takes the dataset the run was trained on (its ``config.yaml`` or checkpoint config).
    With ``positive`` and an ``out``, the chosen threshold is also saved in the decision record, where
    ``predict`` uses it to flag rows.

    ``out=None`` writes no output: no directory, predictions.csv, metrics.json, report.md or figures
    (``figures`` is then ignored and the result has no ``"figures"`` key); the metrics are the same.
    Two writes do not depend on ``out``: ``calibrate=True`` still saves the fitted temperature in the
    model's decision record (:mod:`cxrtl.decisions`, ``best.decisions.json``), because the caller asked for
    exactly that, and decoded images still go to the image cache (``cache_dir``) as on every read of the
    data. ``conformal=ALPHA`` likewise saves its threshold in the record and adds ``"conformal"`` to the
    result. With an ``out``, a run's older decision sidecars are folded into the record (migrated).
    ``conformal_by_class`` fits one threshold per class (class-conditional, Mondrian) instead.

    The temperature, operating point and conformal threshold are fitted on the split's calibration subset
    when it has one, else on the validation subset (which also chose the checkpoint); ``fitted_on`` in the
    result and in each part of the decision record says which.

    ``precision`` is the numerics of the forward passes: fp32 by default on every device, because the
    paper's numbers are fp32; bf16 autocast is a training speed option.

    ``class_map`` (or data the run's split does not describe) scores an external set
    (:mod:`cxrtl.evaluation.external`); a guard in the decision record, or ``fit_ood``, adds ``result["ood"]``,
    and ``ood_data`` its AUROC on images that are not chest radiographs (:mod:`cxrtl.evaluation.ood`).
    """
    from ..checkpoint import load_checkpoint
    from ..data import Preprocess
    from ..decisions import read_decisions
    from ..device import resolve_device

    if subset not in SUBSETS:
        raise CxrtlError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    if conformal is not None:
        from .conformal import check_alpha

        check_alpha(conformal)
    elif conformal_by_class:
        fitting.check_conformal(None, None, by_class=True)  # refused before anything is written
    ckpt, split_csv, history = _resolve_inputs(model_path, split_csv)
    if (calibrate or positive or conformal is not None) and (ckpt.parent / "bundle.json").is_file():
        raise CxrtlError(fitting.read_only_bundle(ckpt.parent))  # before any work
    data_root = data_root_of(model_path, data_root)
    from .ood import check_options

    fit_ood, ood_inputs = check_options(fit_ood, ood_percentile, ood_layer, ood_data)
    out = ensure_dir(out) if out is not None else None
    dev = resolve_device(device)
    numerics = _numerics(dev, precision)
    model, meta = load_checkpoint(ckpt, map_location="cpu")
    classes = list(meta["classes"])
    if positive:  # fail before any work on a class the checkpoint does not have
        fitting.check_positive(positive, classes, target_sensitivity)
    class_to_idx = {c: i for i, c in enumerate(classes)}
    pp = Preprocess.from_dict(meta.get("preprocess") or {})
    source_of: dict[str, str] | None = None
    external_info: dict[str, Any] | None = None
    overlap = None
    trained_on = training_root(model_path)
    if class_map is not None or foreign(split_csv, data_root):
        from .external import prepare_checked

        fits = calibrate or bool(positive) or conformal is not None or fit_ood
        data, records, external_info, source_of = prepare_checked(
            meta, pp, data_root, class_map, split_csv, trained_on, allow_overlap, fits, cache_dir, progress
        )
        subset = "external"
    else:
        data, records = _subset_records(
            meta, pp, data_root, split_csv, subset, cache_dir, progress, model_path
        )
        overlap = check_against_run_split(
            model_path, split_csv, records, data, subset, calibrate, positive, conformal
        )
    refused = fitting.conformal_refusal(
        conformal, data, conformal_by_class, others=bool(calibrate or positive)
    )
    if refused is not None:  # the other requested fits are done first; this one is refused at the end
        conformal = None
    fit_on = fitting.fit_subset(data)

    def predict(recs):
        with _exact_fp32(precision):
            return _predict(model, data, recs, class_to_idx, pp, dev, batch_size, numerics)

    logits, labels, used = predict(records)
    if len(labels) == 0:
        raise CxrtlError(
            f"none of the {len(records)} images of the {subset} subset could be decoded; "
            "check the files with `cxrtl data check`"
        )
    probs = _written_probs(logits)
    result: dict[str, Any] = dict(
        M.compute_metrics(
            labels, probs, classes, loss=fitting.ce_from_logits(logits, labels), seed=seed, n_boot=n_boot
        )
    )  # filled in below, returned as Metrics
    if overlap is not None:
        result["trained_on"] = overlap
    result["source"] = {
        "checkpoint": str(ckpt),
        "data": str(data_root),
        "split": str(split_csv) if split_csv else None,
        "subset": subset,
        "backbone": meta.get("backbone"),
        "epoch": meta.get("epoch"),
        "preprocess": pp.to_dict(),
        "device": str(dev),
        "precision": precision,
        "weights_sha256": meta.get("weights_sha256"),
    }
    if external_info is not None:
        from .external import restrict_to_present

        restrict_to_present(result, labels, probs, external_info, seed=seed, n_boot=n_boot)
    result["provenance"] = provenance(dev)
    needs_val = calibrate or positive or conformal is not None
    val = fitting.fitting_scores((logits, labels), predict, data, subset) if needs_val else None
    before = read_decisions(ckpt, meta)
    record = fitting.fit_temperature(before, val, calibrate, subset, fit_on)
    temperature = record.temperature.value if record.temperature else None
    _add_calibration(result, logits, labels, val, temperature, positive, target_sensitivity, fit_on)
    if conformal is not None and val is not None:
        record = fitting.fit_conformal(
            result, record, val, logits, labels, float(conformal), conformal_by_class, fit_on
        )
    if parts := fitting.fitted_on(result, record):
        result["fitted_on"] = parts
    if out is not None:  # out=None writes nothing beside the checkpoint but requested fits
        record = fitting.fit_operating_point(record, result)
    if fit_ood:
        from .ood import fit_on_split

        record = fit_on_split(record, model, data, class_to_idx, pp, dev, ood_layer, ood_percentile)
    fitting.store(ckpt, before, record, migrate=out is not None)
    if record.ood is not None or ood_inputs is not None:
        from .ood import measure

        args = (model, data, used, class_to_idx, pp, dev, ood_inputs, subset == "external")
        result["ood"] = measure(record.ood, *args, where=str(ckpt))
    if cam_in_lungs:
        result["cam_in_lungs"] = _cam_in_lungs(model, data, used, labels, classes, pp, dev)
    if out is not None:
        _write_outputs(out, result, used, labels, probs, history, figures, source_of)
    if refused is not None:
        done = " and ".join(n for n, on in (("--calibrate", calibrate), ("--positive", positive)) if on)
        raise CxrtlError(f"{refused} ({done} fitted and stored, and the evaluation written, all the same)")
    return cast(Metrics, result)


def _figures(result: dict, labels, probs, classes, out: Path, history: Path | None) -> list[Path]:
    from . import figures as F

    name = result["source"]["subset"]
    paths = F.plot_roc(labels, probs, classes, out / "roc", title=f"ROC on {name} (n = {len(labels)})")
    paths += F.plot_confusion(
        result["confusion_matrix"],
        classes,
        out / "confusion",
        title=f"Confusion matrix on {name} (n = {len(labels)})",
    )
    paths += F.plot_reliability(result["calibration"], out / "reliability", result.get("calibrated"))
    if history is not None:
        try:
            paths += F.plot_history(history, out / "history")
        except CxrtlError as exc:
            log.warning("no training curves: %s", exc)
    return paths
