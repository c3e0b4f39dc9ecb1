"""`cxrtl serve` throughput and latency on loopback vs the same Predictor called in-process.

For each backend (onnx, torch) the server runs as `cxrtl serve` in its own process on 127.0.0.1; several
client threads send a bounded number of one-image requests (synthetic 299x299 PNG radiographs, an untrained
DenseNet-121 at 224 px: weights do not change speed). The baseline is the same Predictor in this process,
``predict_files`` on the same images one at a time, measured before and after the server run (averaged, so
load from other processes hits both). Prints images/s both ways, p50/p99 latency and the error count.
The last line is ``serve efficiency: <X>`` (served / direct images per second) for the ONNX backend.
Usage: python benchmarks/serve.py [--quick] [--requests N] [--clients C] [--workdir DIR]
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
from inference import make_images  # noqa: E402  (the same synthetic radiographs as the inference benchmark)


def direct_rate(predictor, files: list[Path], n: int) -> float:
    """Images per second of ``predict_files`` on one image per call, as each request gets.

    Called from one worker thread, as the server calls it (on a loaded 2-core machine, torch's OpenMP
    threads driven from the main thread ran 10-40x slower than from a worker thread in our runs).
    """
    from concurrent.futures import ThreadPoolExecutor

    def run() -> float:
        predictor.predict_files(files[:2])  # warm-up
        t = time.perf_counter()
        for i in range(n):
            predictor.predict_files([files[i % len(files)]])
        return n / (time.perf_counter() - t)

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def start_server(model: Path, backend: str) -> tuple[subprocess.Popen, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "cxrtl", "serve", str(model), "--port", "0", "--backend", backend]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline() if proc.stdout else ""
    if " at http" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split(" at ")[1].split()[0].rstrip("/")


def load(url: str, files: list[Path], n: int, clients: int) -> tuple[float, list[float], int]:
    """n one-image requests from ``clients`` threads -> (images/s, latencies in s, errors)."""
    import httpx

    payloads = [(f.name, f.read_bytes()) for f in files]
    latencies: list[float] = []
    errors = [0]
    counter = iter(range(n))
    lock = threading.Lock()

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

    for name, data in payloads[:2]:  # warm-up
        httpx.post(f"{url}/v1/predict", files=[("files", (name, data, "image/png"))], timeout=120)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return n / (time.perf_counter() - t), latencies, errors[0]


def bench_backend(name: str, model: Path, predictor, files, n: int, clients: int) -> float:
    before = direct_rate(predictor, files, n)
    proc, url = start_server(model, name)
    try:
        served, lat, errors = load(url, files, n, clients)
    finally:
        proc.send_signal(2)
        proc.wait(timeout=30)
    after = direct_rate(predictor, files, n)
    direct = (before + after) / 2
    lat_ms = sorted(x * 1000 for x in lat)
    p99 = lat_ms[min(len(lat_ms) - 1, round(0.99 * (len(lat_ms) - 1)))]
    print(
        f"{name:5s}: direct {direct:6.2f} img/s (before {before:.2f}, after {after:.2f}), served {served:6.2f} "
        f"img/s, {n} requests x 1 image from {clients} clients; latency p50 {statistics.median(lat_ms):.0f} ms "
        f"p99 {p99:.0f} ms; errors {errors}; efficiency {served / direct:.2f}",
        flush=True,
    )
    return served / direct


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="densenet121")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--requests", type=int, default=48, help="requests per backend (bounded)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    ap.add_argument("--backends", default="onnx,torch")
    ap.add_argument("--workdir", help="folder for the model and images (default: a temporary folder)")
    ap.add_argument("--quick", action="store_true", help="a small smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests, args.image_size = 12, 96

    import torch

    from cxrtl.checkpoint import save_checkpoint
    from cxrtl.data.preprocess import Preprocess
    from cxrtl.inference.export import export_onnx
    from cxrtl.inference.predict import Predictor
    from cxrtl.transfer import create_model

    print(
        f"cpu cores: {os.cpu_count()}, torch {torch.__version__}, {args.backbone} at {args.image_size}, fp32"
    )
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
            predictor = Predictor.from_checkpoint(models[name])
            ratios[name] = bench_backend(name, models[name], predictor, files, args.requests, args.clients)
    key = "onnx" if "onnx" in ratios else next(iter(ratios))
    print(f"serve efficiency: {ratios[key]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
