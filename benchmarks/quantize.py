"""int8 vs fp32 under onnxruntime on CPU: DenseNet-121 at 224, single image and batch, in one run.

Both models come from the same untrained DenseNet-121 checkpoint (weights do not change speed): the fp32
ONNX export, and its static int8 quantization (:func:`cxrtl.inference.quantize.quantize_onnx`: QDQ, per-channel
int8 weights, uint8 activations, as ``export --int8`` writes) calibrated on synthetic radiographs. Inputs
are prepared uint8 images, so the timings are the model (graph + softmax), not image decoding. fp32 and int8
are timed interleaved (``benchmarks/_timing.py``: samples of at least 0.5 s, min and median reported).

int8 convolutions gain from int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, AMX); on a CPU with
only AVX2 int8 runs about as fast as fp32. The output states the expectation for the CPU it found.
``--formats`` also times the other quantization settings onnxruntime offers (QOperator instead of QDQ,
per-tensor weights, uint8 weights, reduced range) against the default, single image, interleaved.

The last line is the single-image speed-up: ``int8 speedup: <X>x`` (fp32 median over int8 median).
Usage: python benchmarks/quantize.py [--quick] [--threads N] [--samples N] [--formats]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import Bench, interleaved, positive, ratio, ratio_note  # noqa: E402

# name -> quantize_onnx settings timed by --formats (the first is export --int8's)
FORMATS = {
    "QDQ per-channel int8 (default)": {},
    "QOperator per-channel int8": {"quant_format": "QOperator"},
    "QDQ per-tensor int8": {"per_channel": False},
    "QOperator per-channel uint8 weights": {"quant_format": "QOperator", "weight_type": "uint8"},
    "QDQ per-channel int8, reduced range": {"reduce_range": True},
}


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


def export_fp32(folder: Path, size: int) -> Path:
    """The fp32 ONNX file of an untrained densenet121 at ``size`` px."""
    import torch

    from cxrtl.checkpoint import save_checkpoint
    from cxrtl.data.preprocess import Preprocess
    from cxrtl.inference.export import export_onnx
    from cxrtl.transfer import create_model

    torch.manual_seed(0)
    model = create_model(
        "densenet121", classes=["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"], init="none"
    )
    pp = Preprocess(input="raw", channels=3, image_size=size)
    save_checkpoint(folder / "best", model, {"preprocess": pp.to_dict(), "epoch": 1})
    return export_onnx(folder, folder / "fp32.onnx", exporter="torchscript")


def build(folder: Path, size: int, calibration: int) -> tuple[Path, Path]:
    """fp32 and int8 (export --int8's settings) ONNX files of an untrained densenet121 at ``size`` px."""
    from cxrtl.inference.quantize import quantize_onnx

    fp32 = export_fp32(folder, size)
    return fp32, quantize_onnx(fp32, folder / "int8.onnx", radiographs(calibration, size, seed=1))


def single(predictor, images: np.ndarray):
    """One prepared image per call, cycling through ``images``."""
    state = {"i": 0}

    def op() -> None:
        state["i"] = (state["i"] + 1) % len(images)
        predictor.predict_prepared(images[state["i"]][None, 0])

    return op


def main(argv: list[str] | None = None) -> int:
    bench = Bench("quantize")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128 px, 8 calibration images (a smoke run)")
    ap.add_argument("--samples", type=positive, default=7, help="interleaved samples per side (default 7)")
    ap.add_argument("--formats", action="store_true", help="also time onnxruntime's other int8 settings")
    Bench.add_arguments(ap)
    args = ap.parse_args(argv)
    bench.start(args.threads)
    size, calibration = (128, 8) if args.quick else (224, 32)
    batch = 16

    from cxrtl import machine
    from cxrtl.inference.predict import Predictor
    from cxrtl.inference.quantize import quantize_onnx

    print(f"expectation: {machine.int8_expectation(bench.machine)}", flush=True)
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
        one = interleaved({k: single(p, images) for k, p in predictors.items()}, samples=args.samples)
        many = interleaved(
            {k: lambda p=p: p.predict_prepared(images[:batch, 0]) for k, p in predictors.items()},
            samples=max(3, args.samples // 2),
        )
        variants = {}
        if args.formats:
            cal = radiographs(calibration, size, seed=1)
            for name, kw in FORMATS.items():
                path = (
                    int8 if not kw else quantize_onnx(fp32, Path(tmp) / f"v{len(variants)}.onnx", cal, **kw)
                )
                variants[name] = Predictor.from_checkpoint(path, threads=args.threads)
            formats = interleaved(
                {"fp32": single(predictors["fp32"], images)}
                | {k: single(p, images) for k, p in variants.items()},
                samples=args.samples,
            )
    diff = float(np.abs(probs["fp32"] - probs["int8"]).max())
    agree = float((probs["fp32"].argmax(1) == probs["int8"].argmax(1)).mean())
    print(f"densenet121 {size} px, onnxruntime CPU, threads {args.threads or 'auto'}")
    for k in predictors:
        print(
            f"{k}: single image {one[k].describe()}; batch {batch}: {many[k].describe(per=batch)}; "
            f"file {sizes[k] / 1e6:.1f} MB"
        )
    print(
        f"max |p_int8 - p_fp32| {diff:.4f} on {len(images)} images (untrained weights), labels agree {agree:.0%}; "
        f"file {sizes['fp32'] / sizes['int8']:.1f}x smaller"
    )
    if variants:
        print("int8 settings, single image, interleaved with fp32 (speed-up = fp32 median / its median):")
        for name in variants:
            print(f"  {name}: {formats[name].describe()}, {ratio(formats['fp32'], formats[name]):.2f}x")
            bench.figure(f"format {name} speedup", ratio(formats["fp32"], formats[name]))
        bench.timings(formats, prefix="format ")
    bench.timings(one, prefix="single ")
    bench.timings(many, prefix=f"batch{batch} ")
    bench.figure("file_mb", {k: v / 1e6 for k, v in sizes.items()})
    bench.figure("max_prob_diff", diff)
    bench.figure("batch speedup", ratio(many["fp32"], many["int8"]))
    print(
        f"batch {batch} speedup: {ratio(many['fp32'], many['int8']):.2f}x ({ratio_note(many['fp32'], many['int8'])})"
    )
    return bench.headline(
        "int8 speedup", ratio(one["fp32"], one["int8"]), ratio_note(one["fp32"], one["int8"])
    )


if __name__ == "__main__":
    sys.exit(main())
