"""Deterministic synthetic chest-radiograph-like sets, written in the two real layouts (demo data, test fixture).

Each image has a thorax with two lung fields darker than their surroundings, spine, heart and ribs, and a
class-dependent pattern inside the lungs (COVID: bilateral peripheral lower-zone haze; Lung_Opacity: one
dense focal consolidation; Viral Pneumonia: diffuse interstitial streaks in a smaller, paediatric thorax;
Kermany PNEUMONIA: focal (bacterial) or diffuse (viral) opacity). Nuisances: an L/R marker, exposure,
slight rotation and noise. The patterns are coarse enough to survive downscaling to ~48 px. As in the real
data, a few Kermany images reappear (resized to 299, re-encoded as PNG) among the COVID set's Normal and
Viral Pneumonia images.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..errors import CxrtlError
from ..fsutil import ensure_dir

logger = logging.getLogger(__name__)

COVID_DIR = "COVID-19_Radiography_Dataset"
KERMANY_DIR = "chest_xray"
COVID_COUNTS = {"COVID": 3616, "Lung_Opacity": 6012, "Normal": 10192, "Viral Pneumonia": 1345}
KERMANY_COUNTS = {"NORMAL": 1583, "PNEUMONIA": 4273}
_MARKER = ".cxrtl-synth.json"
_INTERNAL = 128  # rendering height; images are upscaled to their file size afterwards


@dataclass
class _Anatomy:
    """Per-patient geometry, so images of one patient share a thorax."""

    scale: float
    body_w: float
    body_h: float
    body_y: float
    lung_sep: float
    lung_a: tuple[float, float]
    lung_b: tuple[float, float]
    lung_y: float
    heart: float
    tilt: float

    @classmethod
    def draw(cls, rng: np.random.Generator, paediatric: bool) -> _Anatomy:
        scale = rng.uniform(0.70, 0.84) if paediatric else rng.uniform(0.88, 1.0)
        a = rng.uniform(0.10, 0.13)
        b = rng.uniform(0.21, 0.28)
        return cls(
            scale=scale,
            body_w=rng.uniform(0.36, 0.46),
            body_h=rng.uniform(0.55, 0.68),
            body_y=rng.uniform(0.58, 0.66),
            lung_sep=rng.uniform(0.15, 0.19),
            lung_a=(a, a * rng.uniform(0.9, 1.05)),
            lung_b=(b, b * rng.uniform(0.92, 1.05)),
            lung_y=rng.uniform(0.44, 0.50),
            heart=rng.uniform(0.10, 0.145),
            tilt=rng.uniform(-0.15, 0.15),
        )


def _ellipse(x, y, cx, cy, a, b, soft, power=2.0):
    d = (np.abs((x - cx) / a) ** power + np.abs((y - cy) / b) ** power) ** (1.0 / power)
    return 1.0 / (1.0 + np.exp(np.minimum((d - 1.0) / soft, 60.0)))


def _blob(x, y, cx, cy, sigma):
    return np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2.0 * sigma * sigma)))


def _lowfreq(rng, h, w, cells=6):
    """Smooth random field in [0, 1] (bilinear-upscaled coarse noise) for texture."""
    coarse = rng.random((cells, max(2, round(cells * w / h)))).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC)).clip(0, 1)


def _render(rng: np.random.Generator, h: int, w: int, anat: _Anatomy, finding: str):
    """Float image in [0, 1] and binary lung mask (both ``[h, w]``) for one radiograph."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    y /= h
    x /= h
    cx = 0.5 * w / h + rng.uniform(-0.03, 0.03)
    s = anat.scale
    img = 0.06 + 0.05 * y + 0.03 * _lowfreq(rng, h, w, 4)
    body = _ellipse(x, y, cx, anat.body_y, anat.body_w * s, anat.body_h * s, 0.04, power=2.8)  # boxy torso
    img = img + 0.52 * body
    # Ribs: curved bright bands over the thorax.
    ribs = np.sin(2 * math.pi * ((y - 0.2) / (0.075 * s) + 1.6 * ((x - cx) / s) ** 2 + rng.uniform(0, 1)))
    img = img + 0.05 * np.clip(ribs, 0, 1) * body
    lungs = np.zeros_like(img)
    centres = []
    for k, side in enumerate((-1, 1)):
        lx = cx + side * anat.lung_sep * s
        ly = anat.lung_y * s + (1 - s) * 0.35 + side * anat.tilt * 0.02
        lungs = np.maximum(lungs, _ellipse(x, y, lx, ly, anat.lung_a[k] * s, anat.lung_b[k] * s, 0.05))
        centres.append((lx, ly))
    heart = _ellipse(x, y, cx + 0.045 * s, centres[0][1] + 0.13 * s, anat.heart * s, 0.11 * s, 0.08)
    lungs = lungs * (1.0 - 0.85 * heart)
    spine = np.exp(-(((x - cx) / (0.025 * s)) ** 2)) * body
    img = img + 0.12 * spine + 0.10 * heart
    img = img * (1.0 - 0.62 * lungs)
    # Vessels: faint texture inside the lungs for every class.
    img = img + 0.05 * lungs * _lowfreq(rng, h, w, 14)
    pattern = np.zeros_like(img)
    a, b = min(anat.lung_a) * s, min(anat.lung_b) * s
    if finding == "covid":  # bilateral, peripheral, lower-zone ground-glass haze
        for side, (lx, ly) in zip((-1, 1), centres):
            for _ in range(rng.integers(2, 4)):
                px = lx + side * a * rng.uniform(0.35, 0.75)
                py = ly + b * rng.uniform(0.15, 0.65)
                pattern += rng.uniform(0.6, 0.9) * _blob(x, y, px, py, rng.uniform(0.04, 0.06) * s)
        pattern = np.clip(pattern, 0, 1) * (0.6 + 0.4 * _lowfreq(rng, h, w, 10)) * 0.62
    elif finding == "focal":  # one dense consolidation in one lung
        lx, ly = centres[rng.integers(0, 2)]
        r, t = math.sqrt(rng.uniform(0, 0.5)), rng.uniform(0, 2 * math.pi)
        px, py = lx + r * a * math.cos(t), ly + r * b * math.sin(t)
        sig = rng.uniform(0.045, 0.065) * s
        pattern = np.clip(1.6 * _blob(x, y, px, py, sig), 0, 1) * 0.62
    elif finding == "diffuse":  # interstitial streaks radiating from the hila, plus haze
        for side, (lx, ly) in zip((-1, 1), centres):
            hx, hy = lx - side * 0.5 * a, ly - 0.05 * b
            for _ in range(rng.integers(9, 14)):
                ang = rng.uniform(-1.2, 1.2) + (0 if side > 0 else math.pi)
                dx, dy = math.cos(ang), math.sin(ang)
                along = (x - hx) * dx + (y - hy) * dy
                across = np.abs(-(x - hx) * dy + (y - hy) * dx)
                pattern += np.exp(-((across / (0.008 * s)) ** 2)) * (along > 0)
        pattern = np.clip(0.8 * pattern + 0.45, 0, 1) * 0.38
    img = img + pattern * lungs
    return img.astype(np.float32), (lungs > 0.5)


def _draw_marker(im: Image.Image, rng: np.random.Generator) -> None:
    """A bright 'L' or 'R' side marker in an upper corner, as radiographers place them."""
    w, h = im.size
    size = max(4, int(h * rng.uniform(0.05, 0.08)))
    left = rng.random() < 0.5
    x0 = int(w * rng.uniform(0.04, 0.12)) if left else int(w * rng.uniform(0.82, 0.9))
    y0 = int(h * rng.uniform(0.04, 0.12))
    lw = max(1, size // 5)
    val = int(rng.integers(200, 256))
    d = ImageDraw.Draw(im)
    if rng.random() < 0.5:  # L
        d.rectangle([x0, y0, x0 + lw, y0 + size], fill=val)
        d.rectangle([x0, y0 + size - lw, x0 + size * 2 // 3, y0 + size], fill=val)
    else:  # R
        d.rectangle([x0, y0, x0 + lw, y0 + size], fill=val)
        d.ellipse([x0 - size // 3, y0, x0 + size * 2 // 3, y0 + size // 2], outline=val, width=lw)
        d.line([x0 + lw, y0 + size // 2, x0 + size * 2 // 3, y0 + size], fill=val, width=lw)


def _affine(im: Image.Image, angle: float, zoom: float, shift, resample, fill) -> Image.Image:
    """Rotate by ``angle`` degrees and zoom about the centre, then shift (fractions of the size)."""
    w, h = im.size
    c, s = math.cos(math.radians(angle)) / zoom, math.sin(math.radians(angle)) / zoom
    cx, cy = w / 2 + shift[0] * w, h / 2 + shift[1] * h
    # inverse map: output (x, y) -> input (a x + b y + c0, d x + e y + f0)
    coeffs = (c, s, w / 2 - c * cx - s * cy, -s, c, h / 2 + s * cx - c * cy)
    return im.transform((w, h), Image.Transform.AFFINE, coeffs, resample=resample, fillcolor=fill)


def _finish(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, out_hw):
    """Position (rotate, zoom, shift), expose, upscale, add noise and a marker.

    Returns the uint8 image at ``out_hw`` and the lung mask (uint8 0/255) at the rendering size.
    """
    angle, zoom = rng.uniform(-6, 6), rng.uniform(0.9, 1.12)
    shift = (rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05))
    fill = float(np.median(img[:, :3]))
    im = _affine(Image.fromarray(img), angle, zoom, shift, Image.Resampling.BILINEAR, fill)
    mk = _affine(
        Image.fromarray(mask.astype(np.uint8) * 255), angle, zoom, shift, Image.Resampling.NEAREST, 0
    )
    a = np.asarray(im, dtype=np.float32)
    ih, iw = a.shape
    gx = np.linspace(-0.5, 0.5, iw, dtype=np.float32)[None, :]
    gy = np.linspace(-0.5, 0.5, ih, dtype=np.float32)[:, None]
    heel = 1.0 + rng.uniform(-0.25, 0.25) * gx + rng.uniform(-0.2, 0.2) * gy  # uneven exposure
    gain, offset, gamma = rng.uniform(0.8, 1.2), rng.uniform(-0.07, 0.07), rng.uniform(0.8, 1.25)
    a = (np.clip(a * heel * gain + offset, 0, 1) ** gamma) * np.float32(255.0)
    h, w = out_hw
    a = np.array(Image.fromarray(a).resize((w, h), Image.Resampling.BILINEAR))
    a += rng.standard_normal(a.shape, dtype=np.float32) * np.float32(255.0 * rng.uniform(0.008, 0.025))
    out = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))
    _draw_marker(out, rng)
    return out, mk


def _scaled_counts(total: int, real: dict[str, int], minimum: int) -> dict[str, int]:
    """``total`` images split in the real set's proportions (largest remainders), at least ``minimum`` each.

    The counts add up to ``total`` exactly (rounding each class alone made 121 of ``--count 120``), unless
    the minimums alone exceed it.
    """
    full = sum(real.values())
    exact = {k: total * v / full for k, v in real.items()}
    counts = {k: max(minimum, int(x)) for k, x in exact.items()}
    by_remainder = sorted(real, key=lambda k: exact[k] - int(exact[k]), reverse=True)
    i = 0
    while sum(counts.values()) < total:
        counts[by_remainder[i % len(by_remainder)]] += 1
        i += 1
    while sum(counts.values()) > total:
        above = [k for k in real if counts[k] > minimum]
        if not above:
            break
        counts[max(above, key=lambda k: counts[k] - exact[k])] -= 1
    return counts


def _rng(seed: int, *keys) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF] + [int(k) for k in keys])


def _kermany_plan(n_normal: int, n_pneu: int, seed: int):
    """Patients -> (folder, class, file name, patient key, kind) rows, several images per patient."""
    rng = _rng(seed, 7)
    rows = []
    counter = {"bacteria": 0, "virus": 0}
    for label, n in (("NORMAL", n_normal), ("PNEUMONIA", n_pneu)):
        patients, made, pid = [], 0, 0
        while made < n:
            pid += int(rng.integers(1, 4))
            k = min(n - made, int(rng.integers(1, 4 if label == "NORMAL" else 5)))
            patients.append((pid, k))
            made += k
        order = rng.permutation(len(patients))
        n_test = max(1, round(0.107 * len(patients)))
        folders = {}
        for rank, i in enumerate(order):
            folders[i] = "val" if rank == 0 else "test" if rank <= n_test else "train"
        for i, (pid, k) in enumerate(patients):
            if label == "NORMAL":
                prefix = "NORMAL2-IM" if rng.random() < 0.4 else "IM"
                names = [f"{prefix}-{pid:04d}-{j + 1:04d}.jpeg" for j in range(k)]
                kind, key = "normal", f"{prefix}-{pid}"
            else:
                kind = "bacteria" if rng.random() < 0.65 else "virus"
                names = []
                for _ in range(k):
                    counter[kind] += 1
                    names.append(f"person{pid}_{kind}_{counter[kind]}.jpeg")
                key = f"person{pid}"
            for name in names:
                rows.append((folders[i], label, name, key, kind))
    return rows


def _save(im: Image.Image, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)


def synthesize(
    out: str | os.PathLike,
    count: int = 400,
    seed: int = 0,
    kermany_count: int | None = None,
    image_size: int = 299,
    mask_size: int = 256,
    kermany_size: tuple[int, int] = (400, 1000),
    cross_duplicates: int | None = None,
    workers: int = 2,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Write ``OUT/COVID-19_Radiography_Dataset`` (``count`` images) and ``OUT/chest_xray``; return both roots.

    Deterministic for the same arguments. An OUT already holding the same synthetic set is reused; one
    holding anything else under those two names is refused. Files appear only when complete (built in a
    hidden temporary folder and renamed into place).

    Args:
        kermany_count: Kermany-like images (default ``count * 5856 / 21165``, at least 12).
        kermany_size: range of the longer side of the Kermany JPEGs (real ones: about 400 to 2900).
        cross_duplicates: Kermany images copied into COVID Normal and into Viral Pneumonia (default 2-5% each).
    """
    count = int(count)
    if count < 8:
        raise CxrtlError(f"--count {count} is too small; give at least 8 (2 per class)")
    kermany_count = max(12, round(count * 5856 / 21165)) if kermany_count is None else int(kermany_count)
    params = {
        "version": 1,
        "count": count,
        "seed": int(seed),
        "kermany_count": kermany_count,
        "image_size": image_size,
        "mask_size": mask_size,
        "kermany_size": list(kermany_size),
        "cross_duplicates": cross_duplicates,
    }
    out = ensure_dir(out)
    covid_root, kermany_root = out / COVID_DIR, out / KERMANY_DIR
    marker = out / _MARKER
    if covid_root.exists() or kermany_root.exists():
        try:
            same = json.loads(marker.read_text()) == params
        except (OSError, ValueError):
            same = False
        if same and covid_root.is_dir() and kermany_root.is_dir():
            logger.info("reusing synthetic data in %s", out)
            return covid_root, kermany_root
        raise CxrtlError(
            f"{out} already holds {COVID_DIR}/ or {KERMANY_DIR}/ from something else; "
            "choose an empty output folder or delete them"
        )
    tmp = out / f".synth-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_sets(
            tmp,
            count,
            int(seed),
            kermany_count,
            image_size,
            mask_size,
            kermany_size,
            cross_duplicates,
            workers,
            progress,
        )
        os.rename(tmp / KERMANY_DIR, kermany_root)
        os.rename(tmp / COVID_DIR, covid_root)
        marker.write_text(json.dumps(params))
    except OSError as exc:
        raise CxrtlError(
            f"cannot write synthetic data to {out}: {exc.strerror or exc}; "
            "choose a writable folder with free space"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return covid_root, kermany_root


def _write_sets(
    tmp: Path,
    count,
    seed,
    kermany_count,
    image_size,
    mask_size,
    kermany_size,
    cross_duplicates,
    workers,
    progress=True,
) -> None:
    kc = _scaled_counts(kermany_count, KERMANY_COUNTS, 4)
    plan = _kermany_plan(kc["NORMAL"], kc["PNEUMONIA"], seed)
    anat_of: dict[str, _Anatomy] = {}
    for _, _, _, key, _ in plan:
        if key not in anat_of:
            anat_of[key] = _Anatomy.draw(_rng(seed, 11, len(anat_of)), paediatric=True)
    lo, hi = kermany_size

    def kermany_one(i):
        folder, label, name, key, kind = plan[i]
        rng = _rng(seed, 21, i)
        long_side = int(rng.integers(lo, hi + 1))
        aspect = rng.uniform(1.05, 1.45)
        h, w = round(long_side / aspect), long_side
        ih, iw = _INTERNAL, round(_INTERNAL * aspect)
        finding = {"normal": "none", "bacteria": "focal", "virus": "diffuse"}[kind]
        img, lung = _render(rng, ih, iw, anat_of[key], finding)
        im, mask = _finish(rng, img, lung, (h, w))
        if rng.random() < 0.1:
            im = im.convert("RGB")  # like the real download: a few stored as RGB
        path = tmp / KERMANY_DIR / folder / label / name
        _save(im, path, quality=int(rng.integers(85, 96)))
        return path, mask

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        kermany_images = list(
            tqdm(
                pool.map(kermany_one, range(len(plan))),
                total=len(plan),
                desc=f"synth {KERMANY_DIR}",
                unit="img",
                disable=not progress,
                leave=False,
            )
        )

    cc = _scaled_counts(count, COVID_COUNTS, 2)
    findings = {"COVID": "covid", "Lung_Opacity": "focal", "Normal": "none", "Viral Pneumonia": "diffuse"}
    # A few Kermany images reappear among COVID Normal / Viral Pneumonia (as the Kaggle sources say).
    donors = {
        "Normal": [i for i, p in enumerate(plan) if p[4] == "normal"],
        "Viral Pneumonia": [i for i, p in enumerate(plan) if p[4] == "virus"],
    }
    jobs = []
    for c, (label, n) in enumerate(cc.items()):
        k = 0
        if label in donors:
            k = cross_duplicates if cross_duplicates is not None else max(1, round(0.03 * n))
            k = min(k, len(donors[label]), n - 1)
        pick = _rng(seed, 31, c).permutation(len(donors.get(label, [])))[:k]
        dup_at = set(_rng(seed, 32, c).permutation(n)[:k].tolist())
        it = iter(pick.tolist())
        for j in range(n):
            jobs.append((label, j, donors[label][next(it)] if j in dup_at else None))

    def covid_one(job_index):
        label, j, donor = jobs[job_index]
        rng = _rng(seed, 41, job_index)
        stem = f"{label}-{j + 1}.png"
        if donor is not None:
            k_path, k_mask = kermany_images[donor]
            with Image.open(k_path) as k_img:  # the decoded JPEG, as the real copies were made
                im = k_img.convert("L").resize((image_size, image_size), Image.BILINEAR)
            mask = k_mask.resize((mask_size, mask_size), Image.NEAREST)
        else:
            anat = _Anatomy.draw(rng, paediatric=(label == "Viral Pneumonia"))
            img, lung = _render(rng, _INTERNAL, _INTERNAL, anat, findings[label])
            im, mask = _finish(rng, img, lung, (image_size, image_size))
            mask = mask.resize((mask_size, mask_size), Image.NEAREST)
        _save(im, tmp / COVID_DIR / label / "images" / stem, compress_level=1)
        _save(mask, tmp / COVID_DIR / label / "masks" / stem, compress_level=1)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(
            tqdm(
                pool.map(covid_one, range(len(jobs))),
                total=len(jobs),
                desc=f"synth {COVID_DIR}",
                unit="img",
                disable=not progress,
                leave=False,
            )
        )
    for label in cc:  # the real download keeps metadata spreadsheets beside the class folders
        (tmp / COVID_DIR / f"{label}.metadata.xlsx").write_bytes(
            b"PK\x03\x04" + f"synthetic metadata for {label}\n".encode()
        )
    (tmp / COVID_DIR / "README.md.txt").write_text("Synthetic COVID-19 Radiography-like data (cxrtl).\n")
