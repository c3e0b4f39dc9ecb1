"""Inference speed on CPU: PyTorch eager vs onnxruntime, file to probabilities, DenseNet-121 at 224.

Measures single-image latency (decode + preprocess + forward + softmax, one file per call) and batch
throughput for both backends in one run, on the same synthetic 299x299 PNG radiographs (the COVID-19
Radiography Database's size) and an untrained DenseNet-121 checkpoint (weights do not change speed).
The last line is the onnxruntime single-image speed-up over eager: ``inference speedup: <X>x``.
On a shared machine only the ratios are meaningful. Usage: python benchmarks/inference.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_images(folder: Path, n: int, size: int = 299) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    files = []
    for i in range(n):
        lungs = np.exp(-(((xx - 0.32) / 0.14) ** 2 + ((yy - 0.5) / 0.28) ** 2))
        lungs += np.exp(-(((xx - 0.68) / 0.14) ** 2 + ((yy - 0.5) / 0.28) ** 2))
        img = np.clip(70 + 140 * lungs + rng.normal(0, 10, (size, size)), 0, 255).astype(np.uint8)
        path = folder / f"img{i:03d}.png"
        Image.fromarray(img).save(path)
        files.append(path)
    return files


class PinnedThreads:
    """A predictor run with torch limited to ``n`` intra-op threads (restored after each call)."""

    def __init__(self, predictor, n: int):
        self.predictor, self.n = predictor, n

    def predict(self, *args, **kwargs):
        import torch

        old = torch.get_num_threads()
        torch.set_num_threads(self.n)
        try:
            return self.predictor.predict(*args, **kwargs)
        finally:
            torch.set_num_threads(old)


def measure(
    predictors: dict, files: list[Path], repeats: int, batch_size: int, batch_images: int, rounds: int = 1
) -> dict:
    """Per backend: median single-image latency (ms), best batch throughput (img/s), median CPU ms per call.

    The backends take turns call by call, so load from other processes on a shared machine hits all of
    them alike and the ratios stay meaningful.
    """
    batch = files[:batch_images]
    for pred in predictors.values():  # warm-up: allocator, thread pools, first-call graph work
        pred.predict(files[:2])
        pred.predict(files[:2], batch_size=2)
    single = {name: [] for name in predictors}
    cpu = {name: [] for name in predictors}
    bulk = {name: float("inf") for name in predictors}
    for i in range(repeats):
        for name, pred in predictors.items():
            t, c = time.perf_counter(), time.process_time()
            pred.predict([files[i % len(files)]])
            single[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    for _ in range(rounds):
        for name, pred in predictors.items():
            t = time.perf_counter()
            pred.predict(batch, batch_size=batch_size)
            bulk[name] = min(bulk[name], time.perf_counter() - t)
    return {
        name: (
            statistics.median(single[name]) * 1000.0,
            len(batch) / bulk[name],
            statistics.median(cpu[name]) * 1000.0,
        )
        for name in predictors
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="densenet121")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=10, help="single-image calls per backend")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batch-images", type=int, default=16)
    ap.add_argument(
        "--exporter",
        default="torchscript",
        choices=("auto", "dynamo", "torchscript"),
        help="ONNX exporter (default torchscript: same graph speed, export seconds instead of "
        "a minute on a busy 2-core machine)",
    )
    ap.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.batch_images = 3, 8

    import torch

    from cxrtl.checkpoint import save_checkpoint
    from cxrtl.data.preprocess import Preprocess
    from cxrtl.inference.backends import OnnxBackend
    from cxrtl.inference.export import export_onnx
    from cxrtl.inference.predict import Predictor
    from cxrtl.onnx_session import session_options
    from cxrtl.transfer import create_model

    print(
        f"cpu cores: {os.cpu_count()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"backbone {args.backbone} at {args.image_size}, fp32"
    )
    with tempfile.TemporaryDirectory(prefix="cxrtl-bench-") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        pp = Preprocess(input="raw", channels=3, image_size=args.image_size)
        model = create_model(
            args.backbone,
            classes=["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"],
            in_chans=3,
            init="none",
        )
        save_checkpoint(tmp / "run" / "best", model, {"preprocess": pp.to_dict()})
        t = time.perf_counter()
        onnx_path = export_onnx(tmp / "run", tmp / "model.onnx", exporter=args.exporter)
        print(f"export ({args.exporter}) + verification: {time.perf_counter() - t:.1f} s")
        files = make_images(tmp / "img", max(args.batch_images, args.repeats, 8))

        eager = Predictor.from_checkpoint(tmp / "run")
        ort = Predictor.from_checkpoint(onnx_path)
        diff = float(np.abs(eager.predict(files[:8]) - ort.predict(files[:8])).max())
        print(f"max |p_onnx - p_torch| over 8 files: {diff:.2e}")

        # onnxruntime with its default session options, to show what the tuning buys.
        import onnxruntime as ort_mod

        plain = Predictor(
            OnnxBackend(ort_mod.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])),
            ort.classes,
            ort.spec,
            ort.temperature,
        )
        so = session_options()
        print(
            f"onnxruntime {ort_mod.__version__} tuned: graph optimisation ALL, intra-op threads "
            f"{so.intra_op_num_threads or 'one per physical core'}, sequential, no spin-waiting"
        )

        threads = torch.get_num_threads()
        predictors = {f"pytorch eager ({threads} thr)": eager}
        if threads > 1:
            # On a busy machine eager's OpenMP threads can stall each other (seen: 10x slower with 2 threads
            # than with 1 while other jobs ran), so the baseline is eager's best thread setting.
            predictors["pytorch eager (1 thr)"] = PinnedThreads(eager, 1)
        predictors.update({"onnxruntime default": plain, "onnxruntime tuned": ort})
        results = measure(predictors, files, args.repeats, args.batch_size, args.batch_images)
        for name, (lat, thr, cpu_ms) in results.items():
            print(
                f"{name:22s} single-image latency {lat:7.1f} ms (cpu {cpu_ms:7.1f} ms)   "
                f"batch-{args.batch_size} throughput {thr:6.1f} img/s"
            )
        eager_names = [n for n in results if n.startswith("pytorch")]
        best_lat = min(eager_names, key=lambda n: results[n][0])
        best_thr = max(eager_names, key=lambda n: results[n][1])
        ort_lat, ort_thr, _ = results["onnxruntime tuned"]
        print(f"baseline: {best_lat} for latency, {best_thr} for throughput")
        print(f"batch throughput speedup: {ort_thr / results[best_thr][1]:.2f}x")
        print(f"inference speedup: {results[best_lat][0] / ort_lat:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
