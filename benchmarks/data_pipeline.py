"""Data pipeline benchmark: cxrtl's uint8 cache vs the authors' torchvision ImageFolder pipeline.

Both deliver normalised 3x224x224 float batches with the same DataLoader workers, on synthetic
Kermany-size JPEGs (about 2000x1600) and COVID-size PNGs (299x299). For each worker count the two
pipelines are timed interleaved (``benchmarks/_timing.py``): a sample of the plain pipeline is one epoch
of each set; a sample of cxrtl's is as many epochs from the cache as make at least 2,000 images per set
(and 0.5 s). The cache is built once, before the samples, and its build time reported against one plain
epoch. Last line: ``data pipeline speedup: <X>x``, the median plain epoch (both sets) over the median
cached epoch (both sets), at the first worker count.

    python benchmarks/data_pipeline.py [--n 200] [--workers 0,2] [--samples 5] [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import Bench, interleaved, positive, ratio, ratio_note, summed  # noqa: E402

from cxrtl.data.cache import build_cache  # noqa: E402
from cxrtl.data.dataset import CachedDataset  # noqa: E402
from cxrtl.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, normalize_batch  # noqa: E402
from cxrtl.data.sources import load_dataset  # noqa: E402
from cxrtl.data.synthetic import synthesize  # noqa: E402

MIN_IMAGES_PER_SAMPLE = 2000


def plain_loader(root: Path, size: int, workers: int, batch_size: int, png: bool) -> DataLoader:
    """The authors' pipeline: ImageFolder + PIL + Resize/CenterCrop/ToTensor/Normalize."""
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.Resize(round(size * 256 / 224)),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    valid = (lambda p: "/masks/" not in p and p.endswith(".png")) if png else (lambda p: p.endswith(".jpeg"))
    ds = datasets.ImageFolder(str(root), transform=tf, is_valid_file=valid)
    return DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )


def plain_epoch(loader: DataLoader, size: int) -> int:
    n = 0
    for x, _ in loader:
        assert x.shape[1:] == (3, size, size) and x.dtype == torch.float32
        n += len(x)
    return n


def cached_epoch(loader: DataLoader, pp: Preprocess) -> int:
    """One epoch from the cache: uint8 batches, normalised per batch (on the CPU here)."""
    n = 0
    for x, _ in loader:
        x = normalize_batch(x, pp, device="cpu")
        assert x.shape[1:] == (3, pp.image_size, pp.image_size) and x.dtype == torch.float32
        n += len(x)
    return n


def bench_workers(bench: Bench, sets: dict[str, Path], work: Path, args, workers: int) -> float:
    pp = Preprocess(input="raw", channels=3, image_size=args.image_size)
    ops, floors, counts, build_s = {}, {}, {}, {}
    for name, root in sets.items():
        plain = plain_loader(root, args.image_size, workers, args.batch_size, name == "png")
        index = load_dataset(root)
        t0 = time.perf_counter()
        cache = build_cache(
            index,
            index.records,
            pp,
            cache_dir=work / f"cache-w{workers}",
            progress=False,
            workers=max(1, workers),
        )
        build_s[name] = time.perf_counter() - t0
        ds = CachedDataset(cache, index.records, {c: i for i, c in enumerate(index.classes)})
        cached = DataLoader(
            ds, batch_size=args.batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0
        )
        counts[name] = len(ds)
        ops[f"plain {name}"] = lambda loader=plain: plain_epoch(loader, args.image_size)
        ops[f"cached {name}"] = lambda loader=cached: cached_epoch(loader, pp)
        floors[f"cached {name}"] = math.ceil(MIN_IMAGES_PER_SAMPLE / len(ds))
    # one untimed epoch of each first (warmup=1): workers start, files come into the page cache
    t = interleaved(ops, samples=args.samples, min_repeats=floors)
    n = sum(counts.values())
    for name in sets:
        p, c = t[f"plain {name}"], t[f"cached {name}"]
        print(
            f"{name:>5} workers={workers}: {counts[name]} images | plain epoch {p.describe(per=counts[name])} | "
            f"cached epoch {c.describe(per=counts[name])} | cache build {build_s[name]:.2f} s "
            f"({build_s[name] / p.median:.2f}x a plain epoch) | speed-up {ratio(p, c):.1f}x",
            flush=True,
        )
    plain = summed("plain epoch", [t[f"plain {s}"] for s in sets])
    cached = summed("cached epoch", [t[f"cached {s}"] for s in sets])
    speedup = ratio(plain, cached)
    print(
        f"total, workers={workers}: {n} images | plain epoch {plain.describe(per=n)} | "
        f"cached epoch {cached.describe(per=n)} | cache build {sum(build_s.values()):.2f} s | "
        f"speed-up {speedup:.1f}x",
        flush=True,
    )
    bench.timings(t, prefix=f"w{workers} ")
    bench.figure(f"w{workers} plain epoch (both sets)", plain)
    bench.figure(f"w{workers} cached epoch (both sets)", cached)
    bench.figure(f"w{workers} cache build s", build_s)
    bench.figure(f"w{workers} speedup", speedup)
    bench.figure(f"w{workers} note", ratio_note(plain, cached))
    return speedup


def main(argv=None) -> int:
    bench = Bench("data_pipeline")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images per set (default 200)")
    parser.add_argument(
        "--workers",
        type=lambda t: [int(w) for w in t.split(",")],
        default=None,
        help="comma-separated DataLoader worker counts, each used by both pipelines; the last "
        "line reports the first (default 0,2; --quick: 0)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--samples",
        type=positive,
        default=11,
        help="interleaved samples per pipeline (default 11: the cached side is memory-bound and moves with "
        "other jobs' memory traffic, so its median needs more samples than a compute-bound side)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="60 images per set, 0 workers only (about 40 s instead of ~3 min)",
    )
    parser.add_argument(
        "--threads",
        type=positive,
        default=1,
        help="torch threads in the main process (default 1: on a shared, busy machine more "
        "threads spin against each other; DataLoader workers always use 1)",
    )
    parser.add_argument("--dir", help="work folder (default: a temporary folder, removed afterwards)")
    args = parser.parse_args(argv)
    bench.start(args.threads)
    if args.quick:
        args.n = 60
    args.workers = args.workers or ([0] if args.quick else [0, min(2, os.cpu_count() or 1)])
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="cxrtl-bench-"))
    try:
        t0 = time.perf_counter()
        covid, kermany = synthesize(
            work / "data",
            count=args.n,
            kermany_count=args.n,
            kermany_size=(2000, 2000),
            seed=0,
            workers=2,
            progress=False,
        )
        print(
            f"synthesised {args.n} PNGs 299x299 and ~{args.n} JPEGs ~2000x1600 in "
            f"{time.perf_counter() - t0:.1f} s; batch={args.batch_size}, "
            f"torch threads={torch.get_num_threads()}; cached samples >= {MIN_IMAGES_PER_SAMPLE} images per set",
            flush=True,
        )
        sets = {"jpeg": kermany, "png": covid}
        ratios = {w: bench_workers(bench, sets, work, args, w) for w in args.workers}
        # The headline is the first worker count (default 0: cxrtl's default, since reading a memory-mapped
        # cache gains nothing from worker processes); the others are printed above it.
        first = args.workers[0]
        return bench.headline(
            "data pipeline speedup",
            ratios[first],
            f"workers={first}; {bench.figures[f'w{first} note']}",
        )
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
