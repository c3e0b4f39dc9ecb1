"""The two runtimes behind a Predictor: a PyTorch CxrModel, or a cxrtl ONNX file under onnxruntime.

Both take uint8 grey ``[B, 1, S, S]`` (or ``[B, S, S]``) and return float32 logits ``[B, k]``. torch is
imported only inside :class:`TorchBackend`'s methods, so the ONNX path never imports it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CxrtlError
from ..onnx_session import open_session

if TYPE_CHECKING:
    import torch

# The cxrtl ONNX format: what export writes and the runtime checks.
ONNX_FORMAT = "cxrtl-onnx"
ONNX_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "probabilities")
OOD_OUTPUT = "ood_score"  # the OOD guard's score, an extra output of exports whose model has a guard
KEY_PREFIX = "cxrtl."


class TorchBackend:
    """Runs a CxrModel: uint8 ``[B, 1, S, S]`` -> float32 logits, normalising like the training loop."""

    name = "pytorch"

    def __init__(self, model, pp, device: str | torch.device = "cpu"):
        self.model = model.eval()
        self.pp = pp  # cxrtl.data.preprocess.Preprocess
        self.device = device

    def logits(self, batch: np.ndarray) -> np.ndarray:
        import torch

        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        if batch.ndim == 3:
            batch = batch[:, None]
        with torch.inference_mode():
            return self.model(self._normalize(batch)).float().cpu().numpy()

    def run(self, batch: np.ndarray, guard=None) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, OOD scores or None) in one forward pass; ``guard`` a decisions.OutOfDistribution."""
        if guard is None:
            return self.logits(batch), None
        import torch

        from ..evaluation.ood import features_of

        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        if batch.ndim == 3:
            batch = batch[:, None]
        with torch.inference_mode():
            logits, feats = features_of(self.model, self._normalize(batch), guard.layer)
        return logits.float().cpu().numpy(), guard.score(feats.double().cpu().numpy())

    def normalize(self, batch: np.ndarray):
        """uint8 ``[B, S, S]`` -> the float tensor the model sees (for Grad-CAM)."""
        return self._normalize(np.ascontiguousarray(batch)[:, None])

    def _normalize(self, batch: np.ndarray):
        import torch

        from ..data.preprocess import normalize_batch

        return normalize_batch(torch.from_numpy(batch), self.pp, self.device)


class OnnxBackend:
    """Runs a cxrtl ONNX file: uint8 ``[B, 1, S, S]`` -> float32 logits ``[B, k]``."""

    name = "onnxruntime"

    def __init__(self, session):
        self.session = session

    def logits(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        if batch.ndim == 3:
            batch = batch[:, None]
        return self.session.run([OUTPUT_NAMES[0]], {INPUT_NAME: batch})[0].astype(np.float32, copy=False)

    @property
    def has_ood(self) -> bool:
        """True when the graph computes the OOD guard's score (exports of a model with a guard)."""
        return OOD_OUTPUT in {o.name for o in self.session.get_outputs()}

    def run(self, batch: np.ndarray, guard=None) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, OOD scores from the graph, or None when there is no guard)."""
        if guard is None or not self.has_ood:
            return self.logits(batch), None
        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        if batch.ndim == 3:
            batch = batch[:, None]
        logits, score = self.session.run([OUTPUT_NAMES[0], OOD_OUTPUT], {INPUT_NAME: batch})
        return logits.astype(np.float32, copy=False), np.asarray(score, dtype=np.float64)


def read_onnx_meta(session, path: Path) -> dict[str, Any]:
    """The cxrtl metadata of an ONNX session; a one-line error for a file cxrtl did not write."""
    props = session.get_modelmeta().custom_metadata_map or {}
    if props.get(KEY_PREFIX + "format") != ONNX_FORMAT:
        raise CxrtlError(
            f"{path} is an ONNX model that cxrtl did not write (no cxrtl metadata); "
            "export one with `cxrtl export MODEL --onnx OUT.onnx`"
        )
    try:
        meta = {
            "classes": [str(c) for c in json.loads(props[KEY_PREFIX + "classes"])],
            "preprocess": json.loads(props[KEY_PREFIX + "preprocess"]),
            "backbone": props.get(KEY_PREFIX + "backbone", "?"),
            "temperature": json.loads(props.get(KEY_PREFIX + "temperature", "null")),
            "version": int(props.get(KEY_PREFIX + "version", "1")),
        }
    except (KeyError, ValueError, TypeError) as exc:
        raise CxrtlError(f"{path} has damaged cxrtl metadata ({exc}); export it again") from None
    if meta["version"] > ONNX_VERSION:
        raise CxrtlError(
            f"{path} was written by a newer cxrtl (ONNX format {meta['version']}); upgrade cxrtl"
        )
    meta["decisions"] = _onnx_decisions(props, meta, path)
    names = [i.name for i in session.get_inputs()]
    if names != [INPUT_NAME]:
        raise CxrtlError(f"{path} has inputs {names}, not [{INPUT_NAME!r}]; export it again")
    return meta


def _onnx_decisions(props: dict[str, str], meta: dict[str, Any], path: Path):
    """The decision record embedded by export; older exports carried only the temperature."""
    from ..decisions import Decisions, Temperature

    text = props.get(KEY_PREFIX + "decisions")
    if text is not None:
        record = Decisions.from_json(text, f"the decision record in {path}")
        if list(record.classes) != meta["classes"]:
            raise CxrtlError(f"{path} has a decision record for other classes; export it again")
        return record
    t = meta.get("temperature")
    return Decisions(
        tuple(meta["classes"]), dict(meta["preprocess"]), Temperature(float(t)) if t is not None else None
    ).checked(str(path))


def load_onnx(path: str | os.PathLike, threads: int | None = None) -> tuple[OnnxBackend, dict[str, Any]]:
    """Open a cxrtl ONNX file under onnxruntime (CPU) -> (backend, metadata). Never imports torch."""
    path = Path(path)
    session = open_session(path, threads)
    return OnnxBackend(session), read_onnx_meta(session, path)
