"""Benchmark: dedup hashing against the obvious script, and matching, at the real datasets' image sizes.

Synthetic chest-radiograph-like images: 299 px PNGs (COVID-19 Radiography Database) and ~2000x1600 JPEGs
(Kermany). cxrtl's cold hashing (a fresh cache each time: big JPEGs DCT-reduced on decode, area-averaged
thumbnails, pHash + dHash + a 256-bit pHash) is timed interleaved with the script one would write first,
``imagehash.phash`` and ``imagehash.dhash`` on each file decoded at full resolution (``benchmarks/_timing.py``:
samples of at least 0.5 s, min and median), both in one process; then once warm (cached). Matching is
measured on 27,021 hashes with realistic clustering, and the full 27k extrapolated. Last line:
``dedup hashing speedup: <X>x``, the ratio of the medians (both sets summed) of the plain script over cxrtl.
Run: ``python benchmarks/dedup.py [--png N] [--jpeg N] [--workers W] [--samples N]`` (about a minute).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import Bench, interleaved, positive, ratio, ratio_note, summed  # noqa: E402

N_COVID, N_KERMANY = 21_165, 5_856


def synthetic_cxr(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A grey image with a chest-like structure (body, two lungs, ribs, noise), different per seed."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy /= h
    xx /= w
    body = np.exp(-(((xx - 0.5) / (0.42 + 0.05 * rng.random())) ** 2)) * 170
    img = 30 + body
    for cx in (0.32 + 0.05 * rng.standard_normal(), 0.68 + 0.05 * rng.standard_normal()):
        cy, rx, ry = (
            0.48 + 0.05 * rng.standard_normal(),
            0.13 + 0.03 * rng.random(),
            0.28 + 0.05 * rng.random(),
        )
        lung = np.exp(-((((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) ** 2))
        img -= lung * (90 + 30 * rng.random())
    freq = 14 + 6 * rng.random()
    img += 12 * np.sin(yy * freq * np.pi + rng.random() * 6) * (np.abs(xx - 0.5) > 0.08)
    for _ in range(int(rng.integers(3, 9))):  # opacities
        cx, cy, r = rng.random(), rng.random(), 0.03 + 0.1 * rng.random()
        img += (40 * rng.random()) * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / r**2))
    img += rng.normal(0, 6, size=(h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_images(folder: Path, n_png: int, n_jpeg: int, seed: int = 0) -> list[str]:
    """Write ``n_png`` 299 px PNGs and ``n_jpeg`` ~2000x1600 JPEGs; return their paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_png):
        p = folder / f"covid-{i}.png"
        Image.fromarray(synthetic_cxr(rng, 299, 299)).save(p)
        paths.append(str(p))
    base = synthetic_cxr(rng, 400, 500)
    for i in range(n_jpeg):  # big JPEGs: upsample a small synthetic image to keep generation fast
        h, w = int(rng.integers(1400, 1900)), int(rng.integers(1700, 2300))
        small = synthetic_cxr(rng, 200, 250) if i % 4 == 0 else np.roll(base, i * 7, axis=1)
        img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        p = folder / f"person{i}_bacteria_{i}.jpeg"
        img.save(p, quality=90)
        paths.append(str(p))
    return paths


def main(argv=None) -> int:
    bench = Bench("dedup", gpu=False)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--png", type=int, default=300, help="299 px PNGs to hash")
    ap.add_argument("--jpeg", type=int, default=60, help="~2000x1600 JPEGs to hash")
    ap.add_argument(
        "--workers",
        type=positive,
        default=1,
        help="cxrtl's hashing processes (default 1, like the plain script: the ratio compares the code)",
    )
    ap.add_argument("--samples", type=positive, default=7, help="cold-hashing samples per set (default 7)")
    Bench.add_arguments(ap)
    args = ap.parse_args(argv)
    bench.start(args.threads)
    from cxrtl.integrity import duplicates, hashing

    with tempfile.TemporaryDirectory(prefix="cxrtl-bench-dedup-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        png = write_images(tmp / "png", args.png, 0, seed=1)
        jpg = write_images(tmp / "jpg", 0, args.jpeg, seed=2)
        print(
            f"wrote {len(png)} PNGs (299 px) and {len(jpg)} JPEGs (~2000x1600) in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        fresh = iter(range(10**6))

        def cold(paths: list[str]) -> None:
            hashing.hash_images(
                paths, cache_dir=tmp / f"cold{next(fresh)}", progress=False, workers=args.workers
            )

        sets = {"png": png, "jpeg": jpg}
        ops = {}
        for k, p in sets.items():
            ops[f"plain {k}"] = lambda p=p: plain_hashes(p)
            ops[f"cxrtl {k}"] = lambda p=p: cold(p)
        t = interleaved(ops, samples=args.samples)
        cache = tmp / "cache"
        rates = {}
        for name, paths in sets.items():
            hashes, bad = hashing.hash_images(paths, cache_dir=cache, progress=False, workers=args.workers)
            w = time.perf_counter()
            hashing.hash_images(paths, cache_dir=cache, progress=False, workers=args.workers)
            warm = time.perf_counter() - w
            c, b = t[f"cxrtl {name}"], t[f"plain {name}"]
            rates[name] = len(paths) / c.median
            print(
                f"hash {name}: {len(paths)} images | plain script {b.describe(per=len(paths))} | cxrtl cold "
                f"{c.describe(per=len(paths))}, cached {warm:.3f} s ({len(paths) / max(warm, 1e-9):.0f} img/s), "
                f"{len(bad)} unreadable | speed-up {ratio(b, c):.1f}x"
            )
        bench.timings(t, prefix="cold hashing ")
        t_all = t
        # exact-candidate cost: a full decode of big JPEGs for same-size near pairs with different bytes
        t = time.perf_counter()
        hashing.ensure_pixel_digests(
            hashes, range(len(hashes)), cache_dir=cache, progress=False, workers=args.workers
        )
        full = (time.perf_counter() - t) / max(1, len(hashes))
        print(f"full-resolution decode for exact check (only for candidates): {full * 1000:.1f} ms/JPEG")

    # matching on 27k hashes: random ones plus clusters (re-encoded copies flip a few bits)
    rng = np.random.default_rng(0)
    n = N_COVID + N_KERMANY
    base = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64)
    base[: n // 2] &= np.uint64(0xFFFFFFFF00FFFFFF)  # skew: many hashes share bits, like similar radiographs
    dup_idx = rng.choice(n, size=2000, replace=False)
    for k in range(0, 2000, 2):
        flips = rng.choice(64, size=rng.integers(0, 5), replace=False)
        v = int(base[dup_idx[k]])
        for f in flips:
            v ^= 1 << int(f)
        base[dup_idx[k + 1]] = np.uint64(v)
    t = time.perf_counter()
    pairs = duplicates.search_pairs(base, duplicates.DEFAULT_THRESHOLD)
    match = time.perf_counter() - t
    print(f"match: {n} hashes, threshold {duplicates.DEFAULT_THRESHOLD}: {len(pairs)} pairs in {match:.2f} s")
    hash_s = N_COVID / rates["png"] + N_KERMANY / rates["jpeg"]
    total = hash_s + match
    print(
        f"extrapolated full 27k ({N_COVID} PNG + {N_KERMANY} JPEG), {args.workers} process(es): "
        f"hashing {hash_s:.0f} s + matching {match:.1f} s = {total:.0f} s ({total / 60:.1f} min) cold; "
        "cached runs skip hashing"
    )
    bench.figure("match_s", match)
    bench.figure("extrapolated_27k_s", total)
    bench.figure("images_per_s_27k", n / total)
    print(f"dedup images/s, extrapolated to 27k: {n / total:.0f} (absolute: it moves with the machine)")
    plain_t = summed("plain script", [t_all[f"plain {k}"] for k in ("png", "jpeg")])
    cxrtl_t = summed("cxrtl", [t_all[f"cxrtl {k}"] for k in ("png", "jpeg")])
    speedup = ratio(plain_t, cxrtl_t)
    bench.figure("speedup", speedup)
    return bench.headline("dedup hashing speedup", speedup, f"both sets; {ratio_note(plain_t, cxrtl_t)}")


def plain_hashes(paths: list[str]) -> None:
    """The script one writes first: each file decoded at full resolution, imagehash's pHash and dHash."""
    import imagehash
    from PIL import Image

    for p in paths:
        with Image.open(p) as im:
            grey = im.convert("L")
        imagehash.phash(grey)
        imagehash.dhash(grey)


if __name__ == "__main__":
    sys.exit(main())
