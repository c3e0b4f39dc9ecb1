"""Running a lung segmenter: the steps both runtimes share, and the ONNX runtime, which never imports torch.

A masked-input classifier needs a lung mask for every image. :class:`cxrtl.segmentation.predict.Segmenter`
runs the U-Net in PyTorch; :class:`OnnxSegmenter` runs its ONNX export (``segmenter.onnx``, written by
``cxrtl export --bundle --segmenter``) under onnxruntime, so a masked bundle predicts without torch. Both
resize the image to the U-Net's input with :func:`resize_gray` and turn its probability map into a mask at
the image's own size with :func:`probability_to_mask`, so they differ only by the network's arithmetic.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import CxrtlError

SEG_ONNX_FORMAT = "cxrtl-segmenter-onnx"
SEG_ONNX_VERSION = 1
SEG_INPUT = "image"
SEG_OUTPUT = "probability"
KEY_PREFIX = "cxrtl."


def resize_gray(gray: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[H, W]`` -> uint8 ``[size, size]`` (bilinear): the segmenter's input geometry."""
    return np.asarray(
        Image.fromarray(np.asarray(gray, np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    )


def probability_to_mask(prob: np.ndarray, shape: tuple[int, ...], clean: bool = True) -> np.ndarray:
    """A ``[S, S]`` lung probability map -> uint8 0/255 mask of ``shape`` (bilinear resize, then > 0.5).

    Resizing the probabilities, then thresholding, gives smoother edges than resizing a thresholded mask.
    """
    from .postprocess import clean_mask

    h, w = int(shape[0]), int(shape[1])
    up = Image.fromarray(np.asarray(prob, np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR)
    mask = np.asarray(up) > 0.5
    return clean_mask(mask) if clean else mask.astype(np.uint8) * 255


class OnnxSegmenter:
    """A segmenter's ONNX export. ``predict(gray)`` -> uint8 0/255 mask with ``gray``'s shape, post-processed."""

    def __init__(self, session, meta: dict[str, Any], source: Path):
        self.session, self.meta, self.source = session, meta, source
        self.image_size = int(meta["image_size"])
        self.in_chans = int(meta["in_chans"])

    @classmethod
    def load(cls, path: str | os.PathLike, threads: int | None = None) -> OnnxSegmenter:
        from ..onnx_session import open_session

        path = Path(path)
        session = open_session(path, threads)
        props = session.get_modelmeta().custom_metadata_map or {}
        if props.get(KEY_PREFIX + "format") != SEG_ONNX_FORMAT:
            raise CxrtlError(
                f"{path} is not a cxrtl segmenter export; export it again with "
                "`cxrtl export RUN --bundle DIR --segmenter SEG_RUN`"
            )
        try:
            meta = json.loads(props[KEY_PREFIX + "segmenter"])
            int(meta["image_size"]), int(meta["in_chans"])
        except (KeyError, ValueError, TypeError):
            raise CxrtlError(f"{path} has damaged segmenter metadata; export it again") from None
        return cls(session, meta, path)

    def predict_batch(self, grays: Sequence[np.ndarray], clean: bool = True) -> list[np.ndarray]:
        """Grey uint8 images of any sizes -> one 0/255 mask each, at each image's own size."""
        if not grays:
            return []
        batch = np.stack([resize_gray(g, self.image_size) for g in grays])[:, None]
        probs = self.session.run([SEG_OUTPUT], {SEG_INPUT: np.ascontiguousarray(batch, np.uint8)})[0]
        return [probability_to_mask(p[0], g.shape, clean) for g, p in zip(grays, probs)]

    def predict(self, gray: np.ndarray, clean: bool = True) -> np.ndarray:
        """One grey uint8 image ``[H, W]`` -> its lung mask, uint8 0/255 ``[H, W]``."""
        return self.predict_batch([gray], clean)[0]
