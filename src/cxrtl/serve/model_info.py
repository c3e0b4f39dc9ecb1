"""What ``GET /v1/model`` says about the served model: classes, preprocessing, training, calibration.

Everything is read once at start from the files the model came with (checkpoint metadata, ``summary.json``
and the calibration sidecar beside it, or the ONNX file's metadata); torch is never imported for ONNX.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._version import __version__


def model_info(predictor) -> dict[str, Any]:
    """The JSON of ``/v1/model`` for a loaded :class:`~cxrtl.inference.predict.Predictor`."""
    pp = predictor.spec
    source = Path(predictor.source) if predictor.source else None
    onnx = predictor.torch_model is None
    meta = _onnx_meta(predictor) if onnx else _checkpoint_meta(source)
    calibration = _calibration(predictor, source, meta)
    return {
        "classes": list(predictor.classes),
        "backbone": predictor.backbone,
        "backend": "onnx" if onnx else "torch",
        "source": source.name if source else None,
        "preprocessing": {
            "input": pp.input,
            "channels": pp.channels,
            "size": pp.image_size,
            "resize": pp.resize_size,
        },
        "training": _training(source, meta),
        "calibration": calibration,
        "cam": not onnx,
        "cxrtl_version": __version__,
    }


def _checkpoint_meta(weights: Path | None) -> dict[str, Any]:
    from ..checkpoint import read_meta

    if weights is None:
        return {}
    try:
        return read_meta(weights)
    except Exception:  # noqa: BLE001  (the model loaded; a description must not stop the server)
        return {}


def _onnx_meta(predictor) -> dict[str, Any]:
    session = getattr(predictor.backend, "session", None)
    if session is None:
        return {}
    props = session.get_modelmeta().custom_metadata_map or {}
    out: dict[str, Any] = {}
    for key, value in props.items():
        if key.startswith("cxrtl."):
            try:
                out[key[6:]] = json.loads(value)
            except ValueError:
                out[key[6:]] = value
    return out


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _training(source: Path | None, meta: dict[str, Any]) -> dict[str, Any] | None:
    """Best epoch and its validation accuracy: ``summary.json`` beside the model, else the checkpoint's own."""
    summary = _read(source.parent / "summary.json") if source else None
    if summary and "best_epoch" in summary:
        return {
            "best_epoch": summary.get("best_epoch"),
            "best_val_acc": summary.get("best_val_acc"),
            "epochs_completed": summary.get("epochs_completed"),
        }
    metrics: dict[str, Any] = meta["metrics"] if isinstance(meta.get("metrics"), dict) else {}
    epoch = meta.get("best_epoch", meta.get("epoch"))
    acc = meta.get("best_val_acc", metrics.get("val_acc"))
    if epoch is None and acc is None:
        return None
    return {"best_epoch": epoch, "best_val_acc": acc, "epochs_completed": None}


def _calibration(predictor, source: Path | None, meta: dict[str, Any]) -> dict[str, Any]:
    """The model's decision settings (:mod:`cxrtl.decisions`), as the predictor applies them."""
    summary = predictor.decisions.summary()
    conformal = summary["conformal"]
    return {
        "temperature": predictor.temperature,
        "conformal_threshold": conformal["threshold"] if conformal else None,
        "conformal": conformal,
        "operating_point": summary["operating_point"],
        "ood": summary.get("ood"),  # the out-of-distribution guard, when the model carries one
    }
