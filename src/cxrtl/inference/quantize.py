"""int8 ONNX: static quantization with onnxruntime's tools, calibrated on validation images, then checked.

The fp32 cxrtl ONNX file (:mod:`cxrtl.inference.export`) is quantized to QDQ form with per-channel int8
weights and uint8 activations, whose ranges come from N images of the run's **validation** split (never
test). The int8 and fp32 models are then run on the test split, and the accuracy difference, the largest
probability difference and the agreement of predicted labels are returned for the model card. Never
imports torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import machine
from ..errors import CxrtlError
from ..fsutil import write_bytes
from .backends import KEY_PREFIX, load_onnx

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_IMAGES = 200
MAX_ACCURACY_DROP = 0.01  # more than 1 percentage point lost earns a warning


def _quantization():
    try:
        from onnxruntime import quantization
    except ImportError:
        raise CxrtlError("--int8 needs onnxruntime; install it with `pip install 'cxrtl[onnx]'`") from None
    return quantization


def load_split_images(data: str | os.PathLike, split_csv: Path, classes: list[str], pp_dict: dict):
    """The run's split read against ``data`` -> ({split: uint8 [N, 1, S, S]}, {split: labels [N]})."""
    from ..data import load_dataset
    from ..data.preprocess import Preprocess
    from ..data.splits import read_split_csv

    index = load_dataset(data)
    if set(index.classes) != set(classes):
        raise CxrtlError(
            f"calibration data {data} has classes {index.classes}, the model {classes}; give the dataset "
            "the run was trained on"
        )
    if not split_csv.is_file():
        raise CxrtlError(
            f"the run has no split.csv ({split_csv}); int8 calibration needs its validation split"
        )
    split = read_split_csv(split_csv, index)
    pp = Preprocess.from_dict(pp_dict)
    return index, split, pp


def _prepare(index, records, pp, limit: int | None, seed: int = 0, progress: bool = False):
    """uint8 ``[N, 1, S, S]`` model inputs and class names of (a seeded sample of) ``records``."""
    from tqdm import tqdm

    from ..data.image_io import load_gray, prepare_image

    records = list(records)
    if limit is not None and len(records) > limit:
        pick = np.random.default_rng(seed).choice(len(records), limit, replace=False)
        records = [records[i] for i in sorted(pick)]
    out = np.zeros((len(records), 1, pp.image_size, pp.image_size), np.uint8)
    for i, r in enumerate(tqdm(records, desc="int8 images", disable=not progress, leave=False)):
        gray = load_gray(index.abspath(r.path), target_short_side=pp.resize_size)
        mask = load_gray(index.abspath(r.mask_path)) if pp.input == "masked" and r.mask_path else None
        if pp.input == "masked" and mask is None:
            raise CxrtlError(f"{r.path} has no lung mask, which this masked-input model needs")
        out[i, 0] = prepare_image(gray, pp, mask)
    return out, [r.label for r in records]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over prepared images, one image per run."""

    def __init__(self, images: np.ndarray, input_name: str):
        self._it = iter([{input_name: images[i : i + 1]} for i in range(len(images))])

    def get_next(self):
        return next(self._it, None)


@contextlib.contextmanager
def _quiet_root_log():
    """onnxruntime's quantizer warns on the root logger for every BatchNorm scale it leaves in float
    (per-channel axis 1 does not exist on a 1-D tensor): expected for DenseNet's pre-activation BatchNorm,
    so they are silenced while quantizing rather than printed once per layer."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(old)


def quantize_onnx(
    fp32: Path,
    out: Path,
    calibration: np.ndarray,
    quant_format: str = "QDQ",
    per_channel: bool = True,
    weight_type: str = "int8",
    reduce_range: bool = False,
) -> Path:
    """Static int8 of ``fp32`` into ``out`` (uint8 activations), metadata kept.

    The default, QDQ with per-channel int8 weights (U8S8), is what ``export --int8`` writes. The other
    settings (``quant_format="QOperator"``, per-tensor weights, uint8 weights, ``reduce_range``) exist so that
    ``benchmarks/quantize.py --formats`` can time them against it: on a shared AVX-512 VNNI CPU all ran
    within 15% of the default (QOperator ahead by 3% and 14% in two runs, inside that machine's noise), so
    the default stays. No AVX2-only CPU was at hand to time them on.
    """
    import onnx

    q = _quantization()
    formats = {"QDQ": q.QuantFormat.QDQ, "QOperator": q.QuantFormat.QOperator}
    weights = {"int8": q.QuantType.QInt8, "uint8": q.QuantType.QUInt8}
    with tempfile.TemporaryDirectory(prefix="cxrtl-int8-") as tmp, _quiet_root_log():
        pre, raw = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        q.quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        q.quantize_static(
            str(pre),
            str(raw),
            _Reader(calibration, "image"),
            quant_format=formats[quant_format],
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=q.QuantType.QUInt8,
            weight_type=weights[weight_type],
        )
        model = onnx.load(str(raw))
    source = onnx.load(str(fp32), load_external_data=False)
    del model.metadata_props[:]
    for p in source.metadata_props:
        model.metadata_props.add(key=p.key, value=p.value)
    how = (
        f"int8 static {quant_format}, {'per-channel' if per_channel else 'per-tensor'} {weight_type} weights"
    )
    model.metadata_props.add(
        key=KEY_PREFIX + "quantization", value=how + (", reduced range" if reduce_range else "")
    )
    model.producer_name, model.doc_string = source.producer_name, source.doc_string + " int8."
    write_bytes(out, model.SerializeToString())
    return out


def compare(fp32: Path, int8: Path, images: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """fp32 vs int8 on the same images: accuracies, their difference, largest probability gap, agreement,
    and the int8 speed-up over the pass (batches of 16, the two models interleaved batch by batch, after one
    untimed warm-up batch each) with the CPU it was measured on."""
    from .predict import softmax

    loaded = [load_onnx(path) for path in (fp32, int8)]
    chunks = [images[i : i + 16] for i in range(0, len(images), 16)]
    logits: list[list[np.ndarray]] = [[], []]
    seconds = [0.0, 0.0]
    for backend, _ in loaded:
        backend.logits(chunks[0])
    for chunk in chunks:
        for k, (backend, _) in enumerate(loaded):
            t = time.perf_counter()
            logits[k].append(backend.logits(chunk))
            seconds[k] += time.perf_counter() - t
    probs = [
        softmax(np.concatenate(lg), meta.get("temperature"))
        for lg, (_, meta) in zip(logits, loaded, strict=True)
    ]
    classes = loaded[0][1]["classes"]
    y = np.array([classes.index(c) for c in labels])
    pred = [p.argmax(1) for p in probs]
    acc = [float((p == y).mean()) for p in pred]
    cpu = machine.describe(gpu=False)
    return {
        "test_images": len(labels),
        "accuracy_fp32": acc[0],
        "accuracy_int8": acc[1],
        "accuracy_diff": acc[1] - acc[0],
        "max_prob_diff": float(np.abs(probs[0] - probs[1]).max()),
        "label_agreement": float((pred[0] == pred[1]).mean()),
        "speedup": seconds[0] / seconds[1],
        "speed_cpu": machine.cpu_summary(cpu),
        "speed_expectation": machine.int8_expectation(cpu, fp32.stat().st_size / int8.stat().st_size),
        "int8_dot_product": cpu["int8_dot_product"],
    }


def quantize_run(
    bundle: Path,
    fp32: Path,
    out: Path,
    data: str | os.PathLike | None,
    n_images: int = DEFAULT_CALIBRATION_IMAGES,
    split_csv: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Quantize a run's fp32 ONNX file on its validation images and compare on its test images."""
    if data is None:
        raise CxrtlError("--int8 needs --calibration-data ROOT (the dataset the run was trained on)")
    if n_images < 1:
        raise CxrtlError(f"--calibration-images must be at least 1, not {n_images}")
    _, meta = load_onnx(fp32)
    index, split, pp = load_split_images(
        data, split_csv or bundle / "split.csv", meta["classes"], meta["preprocess"]
    )
    if not split.get("val"):
        raise CxrtlError(
            "the run's split has no validation images to calibrate int8 on; use a split with val"
        )
    calib, _ = _prepare(index, split["val"], pp, n_images, progress=progress)
    quantize_onnx(fp32, out, calib)
    result: dict[str, Any] = {"format": "QDQ", "calibration_images": len(calib), "calibration_split": "val"}
    test, labels = _prepare(index, split.get("test", []), pp, None, progress=progress)
    if not labels:
        raise CxrtlError("the run's split has no test images to compare int8 with fp32 on")
    result.update(compare(fp32, out, test, labels))
    if result["accuracy_diff"] < -MAX_ACCURACY_DROP:
        result["warning"] = (
            f"int8 loses {-100 * result['accuracy_diff']:.1f} accuracy points on test; prefer model.onnx "
            "or calibrate on more images (--calibration-images)"
        )
        log.warning("%s", result["warning"])
    return result
