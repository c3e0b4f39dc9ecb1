"""The out-of-distribution guard: "this image is unlike the chest radiographs the model was trained on".

Lee et al. (2018), "A simple unified framework for detecting out-of-distribution samples and adversarial
attacks": fit one Gaussian per class with a shared covariance on a layer's features of the training images;
an image's score is its smallest squared Mahalanobis distance to a class mean. The threshold is a percentile
of the validation images' scores (default the 99th: about 1% of in-distribution images are flagged).

The fitted guard is the ``ood`` part of the model's decision record (:class:`cxrtl.decisions.OutOfDistribution`),
scored in numpy by :meth:`~cxrtl.decisions.OutOfDistribution.score` and, in an ONNX export, inside the graph.
Fitting and measuring are numpy/scikit-learn; only :func:`extract_features` and :func:`features_of`
need torch (imported lazily).

What it cannot do: a radiograph from another hospital is in distribution for "is this a chest radiograph"
and may still shift the classifier. That is what external validation (``cxrtl evaluate --data OTHER``) measures.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..decisions import OOD_LAYERS, OutOfDistribution, now_utc
from ..errors import CxrtlError

log = logging.getLogger(__name__)

DEFAULT_PERCENTILE = 99.0
DEFAULT_LAYER = "hidden"


def check_percentile(percentile: float) -> float:
    if not 50 <= float(percentile) < 100:
        raise CxrtlError(f"the OOD percentile must be in [50, 100), not {percentile}; e.g. 99")
    return float(percentile)


def check_layer(layer: str) -> str:
    if layer not in OOD_LAYERS:
        raise CxrtlError(f"unknown OOD feature layer {layer!r}; choose one of {', '.join(OOD_LAYERS)}")
    return layer


def fit_guard(
    train_features: np.ndarray,
    train_labels: Sequence[int] | np.ndarray,
    val_features: np.ndarray,
    n_classes: int,
    layer: str = DEFAULT_LAYER,
    percentile: float = DEFAULT_PERCENTILE,
) -> OutOfDistribution:
    """Fit the guard: class means and a shared (Ledoit-Wolf shrunk) covariance on training features, the
    threshold at ``percentile`` of the validation scores.

    Shrinkage keeps the covariance invertible when there are fewer training images than feature
    dimensions (1024 pooled DenseNet features, a few hundred images).
    """
    from sklearn.covariance import LedoitWolf

    check_layer(layer)
    percentile = check_percentile(percentile)
    x = np.asarray(train_features, dtype=np.float64)
    y = np.asarray(train_labels, dtype=np.int64)
    v = np.asarray(val_features, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise CxrtlError("the OOD guard needs the features of at least two training images")
    if len(v) == 0:
        raise CxrtlError("the OOD guard needs validation images to set its threshold; use a split with some")
    present = sorted(set(y.tolist()))
    means = np.zeros((n_classes, x.shape[1]))
    centred = np.empty_like(x)
    for c in range(n_classes):
        members = y == c
        if members.any():
            means[c] = x[members].mean(axis=0)
            centred[members] = x[members] - means[c]
    if len(present) < n_classes:  # a class without training images: its mean is the overall mean
        for c in set(range(n_classes)) - set(present):
            means[c] = x.mean(axis=0)
    lw = LedoitWolf(assume_centered=True).fit(centred)
    cov = lw.covariance_
    # whiten = L^-1 with cov = L L^T: ||L^-1 (f - mu)||^2 = (f - mu)^T cov^-1 (f - mu)
    floor = 1e-9 * max(float(np.trace(cov)) / len(cov), 1e-12)
    chol = np.linalg.cholesky(cov + floor * np.eye(len(cov)))
    whiten = np.linalg.solve(chol, np.eye(len(cov)))
    guard = OutOfDistribution(
        layer=layer,
        whiten=whiten.tolist(),
        means=(means @ whiten.T).tolist(),
        threshold=0.0,
        percentile=percentile,
        shrinkage=float(lw.shrinkage_),
        fitted_on="train",
        n=len(x),
        threshold_on="val",
        n_threshold=len(v),
        fitted_utc=now_utc(),
    )
    threshold = float(np.percentile(guard.score(v), percentile))
    log.info(
        "fitted the OOD guard on %d training images (%s features, %d-d); threshold %.4g = %g-th percentile "
        "of %d validation scores",
        len(x),
        layer,
        x.shape[1],
        threshold,
        percentile,
        len(v),
    )
    return _with_threshold(guard, threshold)


def _with_threshold(guard: OutOfDistribution, threshold: float) -> OutOfDistribution:
    import dataclasses

    return dataclasses.replace(guard, threshold=threshold)


def detection_report(
    guard: OutOfDistribution,
    in_scores: np.ndarray,
    out_scores: np.ndarray | None = None,
    out_names: Sequence[str] | None = None,
    external: bool = False,
) -> dict[str, Any]:
    """The guard measured: false-flag rate on in-distribution scores (Wilson interval), and given
    out-of-distribution scores the detection AUROC and the true-flag rate at the threshold.

    ``external``: the scored images are an external set, whose flags are not false by definition (another
    source may truly be unlike the training images): the rate is reported as ``flag_rate``.
    """
    from .metrics import wilson_interval

    in_scores = np.asarray(in_scores, dtype=np.float64)
    flagged = int((in_scores > guard.threshold).sum())
    report: dict[str, Any] = {
        "layer": guard.layer,
        "threshold": guard.threshold,
        "percentile": guard.percentile,
        "expected_false_flag_rate": round(1 - guard.percentile / 100, 6),
        "n": len(in_scores),
        "flagged": flagged,
    }
    rate = "flag_rate" if external else "false_flag_rate"
    report[rate] = flagged / len(in_scores) if len(in_scores) else None
    report[f"{rate}_ci"] = wilson_interval(flagged, len(in_scores))
    if out_scores is not None:
        from sklearn.metrics import roc_auc_score

        out_scores = np.asarray(out_scores, dtype=np.float64)
        caught = int((out_scores > guard.threshold).sum())
        y = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
        both = len(in_scores) > 0 and len(out_scores) > 0
        report["ood_data"] = {
            "n": len(out_scores),
            "flagged": caught,
            "true_flag_rate": caught / len(out_scores) if len(out_scores) else None,
            "true_flag_rate_ci": wilson_interval(caught, len(out_scores)),
            "auroc": float(roc_auc_score(y, np.r_[in_scores, out_scores])) if both else None,
            "missed": [str(n) for n, s in zip(out_names or [], out_scores) if s <= guard.threshold][:20],
        }
    return report


# ----------------------------------------------------------------------------------------- torch side
def features_of(model, x, layer: str):
    """(logits, features of ``layer``) of a CxrModel on normalised input ``x``: one forward pass, the same
    arithmetic as ``CxrModel.forward`` (the head in fp32)."""
    import torch

    pooled = model.backbone(x)
    with torch.autocast(device_type=pooled.device.type, enabled=False):
        pooled = pooled.float()
        hidden = model.head[1](model.head[0](pooled))
        logits = model.head[2](hidden)
    return logits, (hidden if layer == "hidden" else pooled)


def extract_features(
    model, dataset, pp, device, layer: str = DEFAULT_LAYER, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(features ``[N, d]`` float64, labels ``[N]``) of a dataset yielding (uint8 image, label), in order."""
    import torch
    from torch.utils.data import DataLoader

    from ..data.preprocess import normalize_batch

    check_layer(layer)
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
        with torch.inference_mode():
            for batch in loader:
                images, y = (batch[0], batch[1]) if isinstance(batch, (list, tuple)) else (batch, None)
                _, f = features_of(model, normalize_batch(images, pp, device), layer)
                feats.append(f.double().cpu().numpy())
                labels.append(np.asarray(y if y is not None else np.full(len(images), -1), dtype=np.int64))
    finally:
        model.train(was_training)
    if not feats:
        return np.zeros((0, 0)), np.zeros(0, np.int64)
    return np.concatenate(feats), np.concatenate(labels)


def fit_for_model(
    model, datasets: dict, pp, device, layer: str = DEFAULT_LAYER, percentile: float = DEFAULT_PERCENTILE
) -> OutOfDistribution:
    """Fit the guard of a trained model on ``datasets["train"]``, thresholded on ``datasets["val"]``."""
    train_f, train_y = extract_features(model, datasets["train"], pp, device, layer)
    val_f, _ = extract_features(model, datasets["val"], pp, device, layer)
    return fit_guard(train_f, train_y, val_f, len(model.classes), layer, percentile)


def guard_module(guard: OutOfDistribution):
    """A torch module scoring features like :meth:`OutOfDistribution.score` (float32), for the ONNX graph."""
    import torch

    class _Guard(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("whiten", torch.tensor(guard.whiten, dtype=torch.float32))
            self.register_buffer("means", torch.tensor(guard.means, dtype=torch.float32))

        def forward(self, f):
            z = f @ self.whiten.T
            d2 = ((z.unsqueeze(1) - self.means.unsqueeze(0)) ** 2).sum(dim=2)
            return d2.min(dim=1).values

    return _Guard()


# ------------------------------------------------------------------------------ evaluate's measures
def ood_inputs(folder) -> list[Path]:
    """The image files of ``--ood-data`` (a folder of anything but chest radiographs)."""
    from ..data.inputs import collect_inputs

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CxrtlError(f"--ood-data {folder} is not a folder; give a folder of images")
    files = collect_inputs([folder])
    if not files:
        raise CxrtlError(f"--ood-data {folder} has no PNG/JPEG/DICOM image; give a folder of images")
    return files


def check_options(fit: bool, percentile, layer, ood_data) -> tuple[bool, list[Path] | None]:
    """(whether to fit a guard, the files of ``--ood-data``) after checking evaluate's OOD options."""
    if fit or percentile is not None or layer is not None:
        check_percentile(DEFAULT_PERCENTILE if percentile is None else percentile)
        check_layer(layer or DEFAULT_LAYER)
        fit = True
    return fit, (ood_inputs(ood_data) if ood_data is not None else None)


def fit_on_split(record, model, data, class_to_idx, pp, dev, layer, percentile):
    """The record with an OOD guard fitted on the split's training images, thresholded on validation."""
    from ..data import CachedDataset

    datasets = {
        name: CachedDataset(data.cache, list(data.split[name]), class_to_idx) for name in ("train", "val")
    }
    if len(datasets["train"]) < 2 or not len(datasets["val"]):
        raise CxrtlError("--fit-ood needs the training and validation images of the run's split")
    guard = fit_for_model(
        model,
        datasets,
        pp,
        dev,
        layer or DEFAULT_LAYER,
        DEFAULT_PERCENTILE if percentile is None else float(percentile),
    )
    return record.replace(ood=guard)


def measure(
    guard, model, data, used, class_to_idx, pp, dev, ood_inputs, external: bool, where: str = ""
) -> dict:
    """The guard on the scored images (false-flag rate) and on ``--ood-data`` (AUROC, true-flag rate)."""
    if guard is None:
        raise CxrtlError(
            f"{where or 'the model'} has no out-of-distribution guard to measure on --ood-data; add --fit-ood "
            "(it is fitted at the end of training for new runs)"
        )
    from ..data import CachedDataset

    feats, _ = extract_features(
        model, CachedDataset(data.cache, list(used), class_to_idx), pp, dev, guard.layer
    )
    in_scores = guard.score(feats) if len(feats) else np.zeros(0)
    out_scores = names = None
    if ood_inputs is not None:
        out_scores, names = _score_files(guard, model, ood_inputs, pp, dev)
    return detection_report(guard, in_scores, out_scores, names, external)


def _score_files(guard, model, files: list[Path], pp, dev) -> tuple[np.ndarray, list[str]]:
    """OOD scores of image files, preprocessed as the model's inputs; unreadable ones are skipped."""
    from ..data.image_io import load_gray, prepare_image

    if pp.input == "masked":
        raise CxrtlError(
            "--ood-data needs lung masks for a masked-input model, and arbitrary images have none; "
            "measure the guard with predict --segmenter instead"
        )
    arrays, names = [], []
    for f in files:
        try:
            arrays.append(prepare_image(load_gray(f, target_short_side=pp.resize_size), pp))
            names.append(str(f))
        except CxrtlError as exc:
            log.warning("--ood-data: skipping %s", exc)
    if not arrays:
        raise CxrtlError(
            f"--ood-data has no readable image among {len(files)} file(s); give a folder of PNG/JPEG/DICOM images"
        )
    stack = np.stack(arrays)[:, None]
    feats, _ = extract_features(model, [(x, -1) for x in stack], pp, dev, guard.layer)
    return guard.score(feats), names
