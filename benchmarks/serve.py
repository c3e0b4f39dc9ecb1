"""`cxrtl serve` throughput and latency on loopback vs the same Predictor called in-process.

For each backend (onnx, torch) the server runs as `cxrtl serve` in its own process on 127.0.0.1; several
client threads send a bounded number of one-image requests (synthetic 299x299 PNG radiographs, an untrained
DenseNet-121 at 224 px: weights do not change speed). The baseline is the same Predictor in this process,
``predict_files`` on the same images one at a time. The two are timed interleaved while the server runs
(``benchmarks/_timing.py``: a direct sample, a served sample, ..., each at least 0.5 s of ``--requests``
images), so load from other processes hits both. Prints images/s both ways, p50/p99 latency and the
error count. The last line is ``serve efficiency: <X>`` for the ONNX backend: the median direct time per
image over the median served time per image (1.0: serving costs nothing).
Usage: python benchmarks/serve.py [--quick] [--requests N] [--clients C] [--samples N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Bench, interleaved, positive, ratio, ratio_note  # noqa: E402
from inference import make_images  # noqa: E402  (the same synthetic radiographs as the inference benchmark)


def direct(predictor, files: list[Path], n: int):
    """``n`` images through ``predict_files`` one per call, as each request gets them.

    Called from one worker thread, as the server calls it (on a loaded 2-core machine, torch's OpenMP
    threads driven from the main thread ran 10-40x slower than from a worker thread in our runs).
    """
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1)

    def run() -> None:
        for i in range(n):
            predictor.predict_files([files[i % len(files)]])

    return lambda: pool.submit(run).result()


def start_server(model: Path, backend: str, threads: int | None) -> tuple[subprocess.Popen, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "cxrtl", "serve", str(model), "--port", "0", "--backend", backend]
    cmd += ["--threads", str(threads)] if threads and backend == "onnx" else []  # torch: OMP_NUM_THREADS
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline() if proc.stdout else ""
    if " at http" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split(" at ")[1].split()[0].rstrip("/")


def served(url: str, files: list[Path], n: int, clients: int, latencies: list[float], errors: list[int]):
    """``n`` one-image requests from ``clients`` threads; latencies and errors are appended to the lists."""
    import httpx

    payloads = [(f.name, f.read_bytes()) for f in files]
    lock = threading.Lock()

    def run() -> None:
        counter = iter(range(n))

        def client() -> None:
            with httpx.Client(timeout=120) as http:
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    name, data = payloads[i % len(payloads)]
                    t = time.perf_counter()
                    r = http.post(f"{url}/v1/predict", files=[("files", (name, data, "image/png"))])
                    dt = time.perf_counter() - t
                    ok = r.status_code == 200 and not r.json()[0].get("error")
                    with lock:
                        latencies.append(dt)
                        errors[0] += not ok

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()

    return run


def bench_backend(bench: Bench, name: str, model: Path, predictor, files, args) -> float:
    proc, url = start_server(model, name, args.threads)
    latencies: list[float] = []
    errors = [0]
    try:
        t = interleaved(
            {
                "direct": direct(predictor, files, args.requests),
                "served": served(url, files, args.requests, args.clients, latencies, errors),
            },
            samples=args.samples,
        )
    finally:
        proc.send_signal(2)
        proc.wait(timeout=30)
    n = args.requests
    lat_ms = sorted(x * 1000 for x in latencies)
    p99 = lat_ms[min(len(lat_ms) - 1, round(0.99 * (len(lat_ms) - 1)))]
    efficiency = ratio(t["direct"], t["served"])
    print(
        f"{name:5s}: direct {t['direct'].describe(per=n)}; served {t['served'].describe(per=n)}; "
        f"{n} requests x 1 image from {args.clients} clients per op; latency p50 {statistics.median(lat_ms):.0f} ms "
        f"p99 {p99:.0f} ms over {len(lat_ms)} requests; errors {errors[0]}; efficiency {efficiency:.2f}",
        flush=True,
    )
    bench.timings(t, prefix=f"{name} ")
    bench.figure(
        f"{name} latency_ms", {"p50": statistics.median(lat_ms), "p99": p99, "requests": len(lat_ms)}
    )
    bench.figure(f"{name} errors", errors[0])
    bench.figure(f"{name} efficiency", efficiency)
    bench.figure(f"{name} note", ratio_note(t["direct"], t["served"]))
    return efficiency


def main(argv: list[str] | None = None) -> int:
    bench = Bench("serve")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="densenet121")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--requests", type=int, default=8, help="one-image requests per timed operation")
    ap.add_argument("--samples", type=positive, default=3, help="interleaved samples per side (default 3)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    ap.add_argument("--backends", default="onnx,torch")
    ap.add_argument("--workdir", help="folder for the model and images (default: a temporary folder)")
    ap.add_argument("--quick", action="store_true", help="a small smoke run")
    Bench.add_arguments(ap)
    args = ap.parse_args(argv)
    bench.start(args.threads)
    if args.quick:
        args.image_size = 96

    import torch

    from cxrtl.checkpoint import save_checkpoint
    from cxrtl.data.preprocess import Preprocess
    from cxrtl.inference.export import export_onnx
    from cxrtl.inference.predict import Predictor
    from cxrtl.transfer import create_model

    print(f"{args.backbone} at {args.image_size}, fp32")
    with tempfile.TemporaryDirectory(prefix="cxrtl-bench-", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        pp = Preprocess(input="raw", channels=3, image_size=args.image_size)
        classes = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
        model = create_model(args.backbone, classes=classes, in_chans=3, init="none")
        save_checkpoint(tmp / "run" / "best", model, {"preprocess": pp.to_dict()})
        models = {
            "torch": tmp / "run",
            "onnx": export_onnx(tmp / "run", tmp / "model.onnx", exporter="torchscript"),
        }
        files = make_images(tmp / "img", 16)
        ratios = {}
        for name in args.backends.split(","):
            predictor = Predictor.from_checkpoint(models[name], threads=args.threads)
            ratios[name] = bench_backend(bench, name, models[name], predictor, files, args)
    key = "onnx" if "onnx" in ratios else next(iter(ratios))
    return bench.headline("serve efficiency", ratios[key], f"{key}; {bench.figures[f'{key} note']}", unit="")


if __name__ == "__main__":
    sys.exit(main())
