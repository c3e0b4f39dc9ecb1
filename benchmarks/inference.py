"""Inference speed on CPU: PyTorch eager vs onnxruntime, file to probabilities, DenseNet-121 at 224.

Measures single-image latency (decode + preprocess + forward + softmax, one file per call) and batch
throughput for both backends in one run, on the same synthetic 299x299 PNG radiographs (the COVID-19
Radiography Database's size) and an untrained DenseNet-121 checkpoint (weights do not change speed).
The backends are timed interleaved (``benchmarks/_timing.py``: samples of at least 0.5 s, min and median).
The last line is the onnxruntime single-image speed-up over eager's best thread setting (ratio of medians):
``inference speedup: <X>x``. On a shared machine only the ratios are meaningful.
Usage: python benchmarks/inference.py [--quick] [--samples N] [--threads N]
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
    predictors: dict, files: list[Path], samples: int, batch_size: int, batch_images: int
) -> tuple[dict, dict]:
    """Per backend: single-image timings (one file per call) and batch timings, all backends interleaved.

    The backends take turns sample by sample (``benchmarks/_timing.py``: at least 0.5 s per sample), so
    load from other processes on a shared machine hits all of them alike and the ratios stay meaningful.
    """
    batch = files[:batch_images]

    def one(pred):
        state = {"i": 0}

        def op() -> None:
            state["i"] = (state["i"] + 1) % len(files)
            pred.predict([files[state["i"]]])

        return op

    for pred in predictors.values():  # warm-up: allocator, thread pools, first-call graph work
        pred.predict(files[:2], batch_size=2)
    single = interleaved({name: one(pred) for name, pred in predictors.items()}, samples=samples)
    bulk = interleaved(
        {name: lambda p=pred: p.predict(batch, batch_size=batch_size) for name, pred in predictors.items()},
        samples=max(3, samples // 2),
    )
    return single, bulk


def main(argv: list[str] | None = None) -> int:
    bench = Bench("inference")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="densenet121")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument(
        "--samples", type=positive, default=5, help="interleaved single-image samples per backend"
    )
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batch-images", type=int, default=16)
    ap.add_argument(
        "--exporter",
        default="torchscript",
        choices=("auto", "dynamo", "torchscript"),
        help="ONNX exporter (default torchscript: same graph speed, export seconds instead of "
        "a minute on a busy 2-core machine)",
    )
    ap.add_argument("--quick", action="store_true", help="128 px, 3 samples, batch of 8 (smoke run)")
    Bench.add_arguments(ap)
    args = ap.parse_args(argv)
    bench.start(args.threads)
    if args.quick:
        args.samples, args.batch_images, args.image_size = 3, 8, 128

    import torch

    from cxrtl.checkpoint import save_checkpoint
    from cxrtl.data.preprocess import Preprocess
    from cxrtl.inference.backends import OnnxBackend
    from cxrtl.inference.export import export_onnx
    from cxrtl.inference.predict import Predictor
    from cxrtl.onnx_session import session_options
    from cxrtl.transfer import create_model

    print(f"torch {torch.get_num_threads()} threads, backbone {args.backbone} at {args.image_size}, fp32")
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
        files = make_images(tmp / "img", max(args.batch_images, 8))

        eager = Predictor.from_checkpoint(tmp / "run")
        ort = Predictor.from_checkpoint(onnx_path, threads=args.threads)
        diff = float(np.abs(eager.predict(files[:8]) - ort.predict(files[:8])).max())
        print(f"max |p_onnx - p_torch| over 8 files: {diff:.2e}")

        # onnxruntime with its default session options (but --threads), to show what the tuning buys.
        import onnxruntime as ort_mod

        default_options = ort_mod.SessionOptions()
        default_options.intra_op_num_threads = args.threads or 0

        plain = Predictor(
            OnnxBackend(
                ort_mod.InferenceSession(str(onnx_path), default_options, providers=["CPUExecutionProvider"])
            ),
            ort.classes,
            ort.spec,
            ort.temperature,
        )
        so = session_options(args.threads)
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
        single, bulk = measure(predictors, files, args.samples, args.batch_size, args.batch_images)
        for name in predictors:
            print(
                f"{name:22s} single image {single[name].describe()}; "
                f"batch {args.batch_size}: {bulk[name].describe(per=args.batch_images)}"
            )
        eager_names = [n for n in predictors if n.startswith("pytorch")]
        best_lat = min(eager_names, key=lambda n: single[n].median)
        best_thr = min(eager_names, key=lambda n: bulk[n].median)
        print(f"baseline: {best_lat} for latency, {best_thr} for throughput")
        bench.timings(single, prefix="single ")
        bench.timings(bulk, prefix=f"batch{args.batch_size} ")
        bench.figure("max_prob_diff", diff)
        thr = ratio(bulk[best_thr], bulk["onnxruntime tuned"])
        bench.figure("batch speedup", thr)
        print(
            f"batch throughput speedup: {thr:.2f}x ({ratio_note(bulk[best_thr], bulk['onnxruntime tuned'])})"
        )
        return bench.headline(
            "inference speedup",
            ratio(single[best_lat], single["onnxruntime tuned"]),
            ratio_note(single[best_lat], single["onnxruntime tuned"]),
        )


if __name__ == "__main__":
    sys.exit(main())
