"""Apply a trained model to new radiographs: files, folders, DICOM -> class probabilities (+ Grad-CAM).

:class:`Predictor` wraps either a PyTorch checkpoint or an exported ONNX file behind one interface and
preprocesses exactly as the checkpoint records (``cxrtl.data.image_io.prepare_image``, the function the
training cache uses). The ONNX path never imports torch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.pixels import rgb_to_gray
from ..data.preprocess import Preprocess
from ..decisions import Decisions
from ..errors import CxrtlError

log = logging.getLogger(__name__)


ImageLike = str | os.PathLike | np.ndarray  # a file path, or a uint8 grey [H, W] (or RGB) array
BACKENDS = ("auto", "torch", "onnx")


@dataclass
class Prediction:
    """One row of output: a file, its predicted label and probabilities, or the error that stopped it."""

    path: str
    label: str | None = None  # the predicted class (argmax); also under ``pred``, predictions.csv's name
    probabilities: dict[str, float] | None = None
    error: str | None = None
    cam: str | None = None
    cam_class: str | None = None
    lung_fraction: float | None = None
    lung_share: float | None = None  # the mask's share of the model input: the chance level of lung_fraction
    positive: dict[str, Any] | None = None  # {"class", "threshold", "flag"} from a stored operating point
    prediction_set: list[str] | None = None  # conformal set (a model with a conformal threshold only)
    ood: dict[str, Any] | None = None  # {"score", "threshold", "flag"} from the OOD guard (None: no guard)

    @property
    def pred(self) -> str | None:
        """The predicted class, under the name ``predictions.csv`` uses (where ``label`` is the truth)."""
        return self.label

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "path": self.path,
            "label": self.label,
            "pred": self.pred,
            "probabilities": self.probabilities,
        }
        if self.positive is not None:
            row["positive"] = self.positive
        if self.prediction_set is not None:
            row["prediction_set"] = self.prediction_set
        if self.error is None:
            row["ood"] = self.ood  # every answered row says whether the image is like the training images
        if self.error is not None:
            row["error"] = self.error
        if self.cam is not None:
            row["cam"] = self.cam
            row["cam_class"] = self.cam_class
            row["lung_fraction"] = self.lung_fraction
            row["lung_share"] = self.lung_share
        return row


def softmax(logits: np.ndarray, temperature: float | None = None) -> np.ndarray:
    """Float32 class probabilities: :func:`cxrtl.evaluation.metrics.softmax` of ``logits / temperature``."""
    from ..evaluation.metrics import softmax as softmax64  # numpy only; the ONNX path stays free of torch

    return softmax64(logits, float(temperature or 1.0)).astype(np.float32)


class Predictor:
    """Class probabilities for radiographs from a cxrtl checkpoint or ONNX export, in its class order.

    The model's decision settings (temperature, operating point, conformal threshold, segmenter) come as
    one :class:`cxrtl.decisions.Decisions` record, the same whichever backend runs the model.
    """

    def __init__(
        self,
        backend,
        classes: Sequence[str],
        spec: Preprocess,
        decisions: Decisions | None = None,
        source: str | None = None,
        backbone: str | None = None,
    ):
        self.backend = backend
        self.classes = list(classes)
        self.spec = spec  # the checkpoint's preprocessing
        self.decisions = decisions or Decisions(tuple(self.classes), spec.to_dict())
        if list(self.decisions.classes) != self.classes:
            raise CxrtlError(
                f"the decision record is for classes {list(self.decisions.classes)}, the model has "
                f"{self.classes}; export or evaluate the model again"
            )
        self.source = source
        self.backbone = backbone
        self.segmenter: Any = None  # a cxrtl.segmentation Segmenter: masks for a masked model (use_segmenter)
        self.save_masks: Path | None = None
        self.mask_hook: Any = None  # hook(path, mask) gets each mask the segmenter predicts (--dicom-out)
        for note in self.decisions.stale_notes():
            log.warning("%s: %s", source or "model", note)

    @property
    def temperature(self) -> float | None:
        """The calibration temperature, or None when the model was never calibrated."""
        return self.decisions.temperature.value if self.decisions.temperature else None

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str = "auto",
        threads: int | None = None,
        segmenter: str | os.PathLike | None = None,
        backend: str = "auto",
    ) -> Predictor:
        """Load a MODEL: a run directory, a bundle, a ``.safetensors``/``.json`` checkpoint, a cxrtl ``.onnx``
        export, or ``hf://OWNER/NAME[@REVISION]`` (see :mod:`cxrtl.model_ref`).

        ``backend``: "torch", "onnx" (a bundle's ``model.onnx``; never imports torch), or "auto" (ONNX for an
        ``.onnx`` file, torch otherwise). ``segmenter``: a ``cxrtl segment train`` run that predicts the masks a
        masked model needs; a bundle exported with ``--segmenter`` brings its own (an explicit one wins).
        """
        from ..model_ref import resolve_model

        if backend not in BACKENDS:
            raise CxrtlError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        ref = resolve_model(path)
        use_onnx = backend == "onnx" or (backend == "auto" and ref.kind == "onnx")
        if use_onnx:
            if ref.onnx is None:
                raise CxrtlError(
                    f"--backend onnx needs an ONNX export, and {ref.given} has none; export one with "
                    f"`cxrtl export {ref.given} --onnx model.onnx` (or --bundle DIR), or use --backend torch"
                )
            predictor = cls._from_onnx(ref.onnx, threads)
        else:
            if ref.weights is None:
                raise CxrtlError(
                    f"--backend torch needs a run directory, bundle or checkpoint, but {ref.given} is an ONNX "
                    "file; use --backend onnx or auto"
                )
            predictor = cls._from_torch(ref.weights, device)
        if segmenter is not None:
            return predictor.use_segmenter(segmenter)
        if predictor.needs_mask:  # a masked model's bundle carries its segmenter, for each runtime
            if use_onnx and ref.segmenter_onnx is not None:
                return predictor.use_onnx_segmenter(ref.segmenter_onnx, threads)
            if ref.segmenter is not None:
                return predictor.use_segmenter(ref.segmenter)
        return predictor

    @classmethod
    def _from_onnx(cls, path: Path, threads: int | None) -> Predictor:
        from .backends import load_onnx

        backend, meta = load_onnx(path, threads=threads)
        return cls(
            backend,
            meta["classes"],
            Preprocess.from_dict(meta["preprocess"]),
            meta["decisions"],
            source=str(path),
            backbone=meta.get("backbone"),
        )

    @classmethod
    def _from_torch(cls, weights: Path, device: str) -> Predictor:
        from ..checkpoint import checkpoint_preprocess, load_checkpoint
        from ..decisions import read_decisions
        from ..device import resolve_device
        from .backends import TorchBackend

        dev = resolve_device(device)
        model, meta = load_checkpoint(weights, map_location=dev)
        pp = checkpoint_preprocess(model, meta, weights)
        return cls(
            TorchBackend(model, pp, dev),
            model.classes,
            pp,
            read_decisions(weights, meta),
            source=str(weights),
            backbone=meta.get("backbone"),
        )

    def use_onnx_segmenter(self, path: str | os.PathLike, threads: int | None = None) -> Predictor:
        """Predict each image's lung mask with a segmenter's ONNX export (no torch)."""
        from ..segmentation.runtime import OnnxSegmenter

        self.segmenter = OnnxSegmenter.load(path, threads)
        return self

    def use_segmenter(
        self, seg_run: str | os.PathLike, save_masks: str | os.PathLike | None = None
    ) -> Predictor:
        """Predict the lung mask of every image given without one (a user's own mask still wins).

        ``save_masks``: also write each predicted mask there as ``<image stem>.png``, for inspection.
        """
        from ..segmentation.predict import Segmenter

        self.segmenter = Segmenter.load(
            seg_run, "cpu" if self.torch_model is None else str(self.backend.device)
        )
        self.save_masks = Path(save_masks) if save_masks else None
        if self.source:  # warn when the segmenter trained on this classifier's test images
            from ..segmentation.hygiene import check_classifier

            check_classifier(self.segmenter.meta, self.source)
        return self

    def _auto_mask(self, gray: np.ndarray, image: ImageLike) -> np.ndarray:
        assert self.segmenter is not None
        mask = self.segmenter.predict(gray)
        if self.mask_hook is not None and not isinstance(image, np.ndarray):
            self.mask_hook(str(image), mask)
        if self.save_masks is not None and not isinstance(image, np.ndarray):
            from PIL import Image

            from ..fsutil import atomic_path

            with atomic_path(self.save_masks / (Path(_name(image)).stem + ".png"), suffix=".png") as tmp:
                Image.fromarray(mask, mode="L").save(tmp, format="PNG")
        return mask

    @property
    def needs_mask(self) -> bool:
        """True for a model trained on lung-masked images: every input needs its mask."""
        return self.spec.input == "masked"

    @property
    def torch_model(self):
        """The PyTorch model, or None for an ONNX predictor."""
        return getattr(self.backend, "model", None)

    # ------------------------------------------------------------------------------ preprocessing
    def load(self, image: ImageLike) -> np.ndarray:
        """A path (PNG/JPEG/DICOM/...) or an array -> uint8 grey ``[H, W]``, decoded like the cache does."""
        if isinstance(image, np.ndarray):
            return _as_gray(image)
        from ..data.image_io import load_gray

        return load_gray(image, target_short_side=self.spec.resize_size)

    def prepare(self, image: ImageLike, mask: ImageLike | None = None) -> np.ndarray:
        """One image (and its lung mask) -> the uint8 ``[S, S]`` model input of this checkpoint."""
        return self._prepare(image, mask)[0]

    def _prepare(self, image: ImageLike, mask: ImageLike | None) -> tuple[np.ndarray, tuple[int, int]]:
        from ..data.image_io import load_gray, prepare_image

        gray = self.load(image)
        mask_arr = None
        if self.needs_mask:
            if mask is None and self.segmenter is not None:
                mask = self._auto_mask(gray, image)
            if mask is None:
                raise CxrtlError(
                    f"this model was trained on lung-masked images; give the lung mask of "
                    f"{_name(image)} (--mask PATH or --mask-dir DIR), or predict it with --segmenter SEG_RUN"
                )
            mask_arr = _as_gray(mask) if isinstance(mask, np.ndarray) else load_gray(mask)
        return prepare_image(gray, self.spec, mask_arr), gray.shape

    # ------------------------------------------------------------------------------ inference
    def predict_prepared(self, batch: np.ndarray) -> np.ndarray:
        """Prepared uint8 ``[B, S, S]`` -> probabilities ``[B, k]`` (temperature applied)."""
        return softmax(self.backend.logits(np.asarray(batch, dtype=np.uint8)), self.temperature)

    def predict_prepared_ood(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Prepared uint8 ``[B, S, S]`` -> (probabilities ``[B, k]``, OOD scores ``[B]`` or None without a
        guard), in one forward pass. Torch scores the features in numpy, ONNX in the graph."""
        logits, scores = self.backend.run(np.asarray(batch, dtype=np.uint8), self.decisions.ood)
        return softmax(logits, self.temperature), scores

    def ood_scores(self, images: Sequence[ImageLike], batch_size: int = 16) -> np.ndarray:
        """OOD scores ``[N]`` of images (paths or arrays); a one-line error when the model has no guard."""
        if self.decisions.ood is None:
            raise CxrtlError(
                f"{self.source or 'this model'} has no out-of-distribution guard; fit one with "
                "`cxrtl evaluate RUN --fit-ood`; new runs get one at the end of training"
            )
        images = list(images)
        out = np.zeros(len(images), dtype=np.float64)
        for start in range(0, len(images), max(1, batch_size)):
            chunk = images[start : start + max(1, batch_size)]
            _, scores = self.predict_prepared_ood(np.stack([self.prepare(im) for im in chunk]))
            if scores is None:
                raise CxrtlError(
                    f"{self.source} carries a guard but its graph has no OOD output; export it again"
                )
            out[start : start + len(chunk)] = scores
        return out

    def predict(
        self,
        images: ImageLike | Sequence[ImageLike],
        masks: Sequence[ImageLike | None] | None = None,
        batch_size: int = 16,
    ) -> np.ndarray:
        """Probabilities ``[N, k]`` in :attr:`classes` order; raises on the first unreadable image.

        ``images``: one path or grey ``[H, W]`` array, a uint8 ``[N, H, W]`` stack, or a list of paths/arrays.
        ``masks``: one lung mask (path/array) or None per image; required for a masked-input model.
        Use :meth:`predict_files` to get one error row per bad file instead.
        """
        if isinstance(images, (str, os.PathLike, np.ndarray)) and not (
            isinstance(images, np.ndarray) and images.ndim == 3
        ):
            images = [images]
        images = list(images)
        masks = _check_masks(images, masks)
        out = np.zeros((len(images), len(self.classes)), dtype=np.float32)
        batch_size = max(1, int(batch_size))
        for start in range(0, len(images), batch_size):
            chunk = range(start, min(start + batch_size, len(images)))
            prepared = np.stack([self.prepare(images[i], masks[i]) for i in chunk])
            out[start : start + len(chunk)] = self.predict_prepared(prepared)
        return out

    def predict_proba(
        self,
        images: ImageLike | Sequence[ImageLike],
        masks: Sequence[ImageLike | None] | None = None,
        batch_size: int = 16,
    ) -> np.ndarray:
        """scikit-learn's name for :meth:`predict`: probabilities ``[N, k]`` in :attr:`classes` order."""
        return self.predict(images, masks, batch_size)

    def predict_files(
        self,
        paths: Sequence[str | os.PathLike],
        masks: Sequence[Any] | None = None,
        batch_size: int = 16,
        cam_dir: str | os.PathLike | None = None,
        cam_class: str | int | None = None,
        progress: bool = False,
    ) -> list[Prediction]:
        """One :class:`Prediction` per path; a file that fails gets its error and the rest continue."""
        paths = [str(p) for p in paths]
        masks = _check_masks(paths, masks)
        if cam_dir is not None:
            self._check_cam(cam_class)
            from ..evaluation.cam import feature_map_size

            feature_map_size(self.torch_model, self.spec, self.backend.device)  # warns once when coarse
        rows = [Prediction(path=str(p)) for p in paths]  # already str; says so to mypy
        used_names: set[str] = set()
        bar = _progress(len(paths), progress)
        batch_size = max(1, int(batch_size))
        for start in range(0, len(paths), batch_size):
            ok: list[int] = []
            prepared, shapes = [], {}
            for i in range(start, min(start + batch_size, len(paths))):
                try:
                    arr, shapes[i] = self._prepare(paths[i], masks[i])
                    prepared.append(arr)
                    ok.append(i)
                except CxrtlError as exc:
                    rows[i].error = str(exc)
                except MemoryError:
                    rows[i].error = f"{paths[i]}: out of memory while decoding; the image is too large"
                except Exception as exc:  # never let one odd file stop the batch
                    log.debug("unexpected error on %s", paths[i], exc_info=True)
                    rows[i].error = f"{paths[i]}: cannot read ({type(exc).__name__}: {exc})"
            if ok:
                batch = np.stack(prepared)
                probs, scores = self.predict_prepared_ood(batch)
                for j, i in enumerate(ok):
                    self.fill_row(rows[i], probs[j], None if scores is None else float(scores[j]))
                if cam_dir is not None:
                    self._write_cams(rows, ok, batch, shapes, masks, Path(cam_dir), cam_class, used_names)
            bar.update(min(batch_size, len(paths) - start))
        bar.close()
        return rows

    def fill_row(self, row: Prediction, probs_row: np.ndarray, ood_score: float | None = None) -> None:
        """A predicted row's fields: probabilities, label (argmax) and the decision record's flags and set."""
        row.probabilities = {c: float(p) for c, p in zip(self.classes, probs_row)}
        row.label = self.classes[int(np.argmax(probs_row))]
        row.ood = self.decisions.ood_flag(ood_score)
        row.positive = self.decisions.positive_flag(probs_row)
        row.prediction_set = self.decisions.prediction_set(probs_row)

    # ------------------------------------------------------------------------------ Grad-CAM
    def _check_cam(self, cam_class) -> None:
        if self.torch_model is None:
            raise CxrtlError(
                "Grad-CAM needs gradients, which an ONNX file does not have; use the PyTorch "
                "checkpoint (run dir or .safetensors) with --cam"
            )
        self.class_index(cam_class)

    def class_index(self, cam_class: str | int | None) -> int | None:
        """A class name or index -> index in :attr:`classes`; None stays None (= predicted class)."""
        if cam_class is None:
            return None
        if str(cam_class) in self.classes:
            return self.classes.index(str(cam_class))
        try:
            idx = int(cam_class)
        except (TypeError, ValueError):
            idx = -1
        if not 0 <= idx < len(self.classes):
            raise CxrtlError(
                f"unknown class {cam_class!r} for Grad-CAM; choose one of {', '.join(self.classes)}"
            )
        return idx

    def _write_cams(self, rows, ok, batch, shapes, masks, cam_dir: Path, cam_class, used: set) -> None:
        from ..data.image_io import load_gray
        from ..evaluation.cam import (
            cam_to_original,
            grad_cam,
            lung_fraction,
            mask_for_input,
            mask_share,
            overlay_name,
            save_overlay,
        )

        target = self.class_index(cam_class)
        x = self.backend.normalize(batch)
        cams, indices = grad_cam(self.torch_model, x, target)
        for j, i in enumerate(ok):
            row = rows[i]
            try:
                original = load_gray(row.path)  # full size: the overlay is drawn on the image as given
                full_cam = cam_to_original(cams[j], original.shape, self.spec)
                out = save_overlay(cam_dir / overlay_name(row.path, used), original, full_cam)
                row.cam, row.cam_class = str(out), self.classes[indices[j]]
                if masks[i] is not None:
                    pmask = mask_for_input(masks[i], shapes[i], self.spec)
                    row.lung_fraction = lung_fraction(cams[j], pmask)
                    row.lung_share = mask_share(pmask)
            except CxrtlError as exc:
                row.error = f"Grad-CAM: {exc}"


def _check_masks(images: Sequence[Any], masks: Sequence[Any] | None) -> list[Any]:
    if masks is None:
        return [None] * len(images)
    masks = list(masks)
    if len(masks) != len(images):
        raise CxrtlError(
            f"got {len(masks)} masks for {len(images)} images; give one mask (or None) per image"
        )
    return masks


def _as_gray(arr: np.ndarray) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = rgb_to_gray(a)
    if a.ndim != 2:
        raise CxrtlError(f"expected a grey image array [H, W], got shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return a


def _name(image: Any) -> str:
    return "this image" if isinstance(image, np.ndarray) else str(image)


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="predict", leave=False)
