"""Data pipeline benchmark: cxrtl's uint8 cache vs the authors' torchvision ImageFolder pipeline.

Both deliver normalised 3x224x224 float batches with the same DataLoader workers, on synthetic
Kermany-size JPEGs (about 2000x1600) and COVID-size PNGs (299x299). Reports images/s of one plain epoch,
the cache build, and cxrtl's later epochs from the cache. Last line: ``data pipeline speedup: <X>x``
(total plain-epoch time over total cached-epoch time, both sets together).

    python benchmarks/data_pipeline.py [--n 120] [--workers 2] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cxrtl.data.cache import build_cache
from cxrtl.data.dataset import CachedDataset
from cxrtl.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, normalize_batch
from cxrtl.data.sources import load_dataset
from cxrtl.data.synthetic import synthesize


def plain_epoch(
    root: Path, size: int, workers: int, batch_size: int, exclude_masks: bool
) -> tuple[float, int]:
    """One epoch of the authors' pipeline: ImageFolder + PIL + Resize/CenterCrop/ToTensor/Normalize."""
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.Resize(round(size * 256 / 224)),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    valid = (
        (lambda p: "/masks/" not in p and p.endswith(".png"))
        if exclude_masks
        else (lambda p: p.endswith(".jpeg"))
    )
    ds = datasets.ImageFolder(str(root), transform=tf, is_valid_file=valid)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers)
    batches = iter(loader)  # workers are started here, outside the clock (for both pipelines)
    t0 = time.perf_counter()
    n = 0
    for x, _ in batches:
        assert x.shape[1:] == (3, size, size) and x.dtype == torch.float32
        n += len(x)
    return time.perf_counter() - t0, n


def cached_epochs(ds: CachedDataset, pp: Preprocess, workers: int, batch_size: int, epochs: int) -> float:
    """Median seconds of epochs 2..epochs+1 from the cache: uint8 batches, normalised per batch (CPU here)."""
    loader = DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    times = []
    for _ in range(epochs + 1):
        batches = iter(loader)
        t0 = time.perf_counter()
        for x, _ in batches:
            x = normalize_batch(x, pp, device="cpu")
            assert x.shape[1:] == (3, pp.image_size, pp.image_size) and x.dtype == torch.float32
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def bench_set(name: str, root: Path, cache_dir: Path, args, workers: int) -> dict:
    pp = Preprocess(input="raw", channels=3, image_size=args.image_size)
    plain_s, n = plain_epoch(root, args.image_size, workers, args.batch_size, name == "png")
    index = load_dataset(root)
    t0 = time.perf_counter()
    cache = build_cache(
        index, index.records, pp, cache_dir=cache_dir / f"w{workers}", progress=False, workers=max(1, workers)
    )
    build_s = time.perf_counter() - t0
    ds = CachedDataset(cache, index.records, {c: i for i, c in enumerate(index.classes)})
    cached_s = cached_epochs(ds, pp, workers, args.batch_size, args.epochs)
    row = {"set": name, "n": n, "plain_s": plain_s, "build_s": build_s, "cached_s": cached_s}
    print(
        f"{name:>5} workers={workers}: {n} images | plain epoch {plain_s:7.2f} s ({n / plain_s:8.1f} img/s) | "
        f"cache build {build_s:6.2f} s ({build_s / plain_s:4.2f}x a plain epoch) | "
        f"cached epoch {cached_s:6.3f} s ({n / cached_s:8.1f} img/s) | speed-up {plain_s / cached_s:6.1f}x",
        flush=True,
    )
    return row


def summarise(rows: list[dict], workers: int) -> float:
    plain = sum(r["plain_s"] for r in rows)
    build = sum(r["build_s"] for r in rows)
    cached = sum(r["cached_s"] for r in rows)
    print(
        f"total, workers={workers}: {sum(r['n'] for r in rows)} images | plain epoch {plain:.2f} s | "
        f"cache build {build:.2f} s ({build / plain:.2f}x a plain epoch) | cached epoch {cached:.3f} s | "
        f"speed-up {plain / cached:.1f}x",
        flush=True,
    )
    return plain / cached


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images per set (default 200)")
    parser.add_argument(
        "--workers",
        type=lambda t: [int(w) for w in t.split(",")],
        default=[0, min(2, os.cpu_count() or 1)],
        help="comma-separated DataLoader worker counts, each used by both pipelines; the last "
        "line reports the first (default 0,2)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--epochs", type=int, default=3, help="cached epochs to time after a warm-up (median)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in the main process (default 1: on a shared, busy machine more "
        "threads spin against each other; DataLoader workers always use 1)",
    )
    parser.add_argument("--dir", help="work folder (default: a temporary folder, removed afterwards)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="cxrtl-bench-"))
    try:
        t0 = time.perf_counter()
        covid, kermany = synthesize(
            work / "data", count=args.n, kermany_count=args.n, kermany_size=(2000, 2000), seed=0, workers=2
        )
        print(
            f"synthesised {args.n} PNGs 299x299 and ~{args.n} JPEGs ~2000x1600 in "
            f"{time.perf_counter() - t0:.1f} s; batch={args.batch_size}, "
            f"torch threads={torch.get_num_threads()}",
            flush=True,
        )
        ratios = {}
        for workers in args.workers:  # both pipelines get the same number of DataLoader workers
            rows = [
                bench_set("jpeg", kermany, work / "cache", args, workers),
                bench_set("png", covid, work / "cache", args, workers),
            ]
            ratios[workers] = summarise(rows, workers)
        # The headline is the first worker count (default 0: cxrtl's default, since reading a memory-mapped
        # cache gains nothing from worker processes); the others are printed above it.
        print(f"data pipeline speedup: {ratios[args.workers[0]]:.1f}x")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
