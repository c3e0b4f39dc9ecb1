"""int8 vs fp32 under onnxruntime on CPU: DenseNet-121 at 224, single image and batch, in one run.

Both models come from the same untrained DenseNet-121 checkpoint (weights do not change speed): the fp32
ONNX export, and its static int8 QDQ quantization (:func:`cxrtl.inference.quantize.quantize_onnx`, per-channel
weights) calibrated on synthetic radiographs. Inputs are prepared uint8 images, so the timings are the
model (graph + softmax), not image decoding. Single-image latency is the median over interleaved calls;
batch throughput the best of a few rounds. The last line is the single-image speed-up:
``int8 speedup: <X>x``. On a shared machine only the ratios are meaningful.
Usage: python benchmarks/quantize.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def radiographs(n: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[n, 1, size, size]`` smooth 'lungs on a body' images with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((n, 1, size, size), np.uint8)
    for i in range(n):
        dx = rng.normal(0, 0.03)
        lungs = np.exp(-(((xx - 0.32 - dx) / 0.14) ** 2 + ((yy - 0.5) / 0.28) ** 2))
        lungs += np.exp(-(((xx - 0.68 - dx) / 0.14) ** 2 + ((yy - 0.5) / 0.28) ** 2))
        out[i, 0] = np.clip(70 + 140 * lungs + rng.normal(0, 10, (size, size)), 0, 255)
    return out


def build(folder: Path, size: int, calibration: int) -> tuple[Path, Path]:
    """fp32 and int8 ONNX files of an untrained densenet121 at ``size`` px."""
    import torch

    from cxrtl.checkpoint import save_checkpoint
    from cxrtl.data.preprocess import Preprocess
    from cxrtl.inference.export import export_onnx
    from cxrtl.inference.quantize import quantize_onnx
    from cxrtl.transfer import create_model

    torch.manual_seed(0)
    model = create_model(
        "densenet121", classes=["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"], init="none"
    )
    pp = Preprocess(input="raw", channels=3, image_size=size)
    save_checkpoint(folder / "best", model, {"preprocess": pp.to_dict(), "epoch": 1})
    fp32 = export_onnx(folder, folder / "fp32.onnx", exporter="torchscript")
    int8 = quantize_onnx(fp32, folder / "int8.onnx", radiographs(calibration, size, seed=1))
    return fp32, int8


def measure(predictors: dict, images: np.ndarray, repeats: int, batch: int, rounds: int) -> dict:
    """Median single-image ms (calls interleaved between models) and best batch img/s per model."""
    single: dict[str, list[float]] = {k: [] for k in predictors}
    for p in predictors.values():  # warm-up
        p.predict_prepared(images[:1, 0])
        p.predict_prepared(images[:batch, 0])
    for i in range(repeats):
        for name, p in predictors.items():
            x = images[i % len(images)][None, 0]
            t = time.perf_counter()
            p.predict_prepared(x)
            single[name].append(1000 * (time.perf_counter() - t))
    through = {k: 0.0 for k in predictors}
    for _ in range(rounds):
        for name, p in predictors.items():
            t = time.perf_counter()
            p.predict_prepared(images[:batch, 0])
            through[name] = max(through[name], batch / (time.perf_counter() - t))
    return {k: (statistics.median(single[k]), through[k]) for k in predictors}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128 px, fewer repeats (a smoke run)")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: physical cores)")
    args = ap.parse_args(argv)
    size, repeats, rounds, calibration = (128, 10, 2, 8) if args.quick else (224, 40, 4, 32)
    batch = 16

    from cxrtl.inference.predict import Predictor

    with tempfile.TemporaryDirectory(prefix="cxrtl-bench-int8-") as tmp:
        t = time.perf_counter()
        fp32, int8 = build(Path(tmp), size, calibration)
        print(f"export + quantization ({calibration} calibration images): {time.perf_counter() - t:.1f} s")
        sizes = {"fp32": fp32.stat().st_size, "int8": int8.stat().st_size}
        predictors = {
            "fp32": Predictor.from_checkpoint(fp32, threads=args.threads),
            "int8": Predictor.from_checkpoint(int8, threads=args.threads),
        }
        images = radiographs(max(batch, 32), size, seed=2)
        probs = {k: p.predict_prepared(images[:, 0]) for k, p in predictors.items()}
        result = measure(predictors, images, repeats, batch, rounds)
    diff = float(np.abs(probs["fp32"] - probs["int8"]).max())
    agree = float((probs["fp32"].argmax(1) == probs["int8"].argmax(1)).mean())
    print(f"densenet121 {size} px, onnxruntime CPU, threads {args.threads or 'auto'}")
    for k, (ms, ips) in result.items():
        print(
            f"{k}: single image {ms:.1f} ms (median of {repeats}), batch {batch}: {ips:.1f} img/s, "
            f"file {sizes[k] / 1e6:.1f} MB"
        )
    print(
        f"max |p_int8 - p_fp32| {diff:.4f} on {len(images)} images (untrained weights), labels agree {agree:.0%}"
    )
    print(f"batch speedup: {result['int8'][1] / result['fp32'][1]:.2f}x")
    print(f"int8 speedup: {result['fp32'][0] / result['int8'][0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
