"""Synthetic data: deterministic, in the real layouts, imbalanced like the real sets, radiograph-like."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from cxrtl.data.sources import load_dataset
from cxrtl.data.synthetic import synthesize
from cxrtl.errors import CxrtlError

TINY = {"count": 16, "kermany_count": 14, "image_size": 64, "mask_size": 48, "kermany_size": (48, 64)}


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes(tmp_path):
    a = synthesize(tmp_path / "a", seed=3, **TINY)[0].parent
    b = synthesize(tmp_path / "b", seed=3, **TINY)[0].parent
    c = synthesize(tmp_path / "c", seed=4, **TINY)[0].parent
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_rerun_reuses_and_foreign_content_is_refused(tmp_path):
    roots = synthesize(tmp_path / "out", **TINY)
    assert synthesize(tmp_path / "out", **TINY) == roots
    with pytest.raises(CxrtlError, match="already holds"):
        synthesize(tmp_path / "out", seed=9, **TINY)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".synth-tmp")]


def test_real_layouts_and_imbalance(synth_roots):
    covid, kermany = synth_roots
    index = load_dataset(covid)
    counts = Counter(r.label for r in index.records)
    assert counts["Normal"] > counts["Lung_Opacity"] > counts["COVID"] > counts["Viral Pneumonia"] >= 2
    assert all(r.mask_path for r in index.records)
    img = Image.open(index.abspath(index.records[0].path))
    mask = Image.open(index.abspath(index.records[0].mask_path))
    assert img.format == "PNG" and img.size == (96, 96) and mask.size == (80, 80)
    assert sorted(p.name for p in covid.glob("*.xlsx")) == [f"{c}.metadata.xlsx" for c in index.classes]
    assert index.records[0].path == "COVID/images/COVID-1.png"
    k = load_dataset(kermany)
    kc = Counter(r.label for r in k.records)
    assert kc["PNEUMONIA"] > 2 * kc["NORMAL"] > 0
    assert {r.source_split for r in k.records} == {"train", "val", "test"}
    sizes = {Image.open(k.abspath(r.path)).size for r in k.records}
    assert len(sizes) > 5 and all(Image.open(k.abspath(r.path)).format == "JPEG" for r in k.records[:5])
    assert max(Counter(r.patient_id for r in k.records).values()) >= 2


def test_images_look_like_radiographs(covid_root):
    """Lungs (per the mask) are darker than the rest of the thorax; opacity classes brighten the lungs."""
    index = load_dataset(covid_root)
    lung_means = {}
    for r in index.records:
        img = np.asarray(Image.open(index.abspath(r.path)), dtype=np.float32)
        mask_im = Image.open(index.abspath(r.mask_path)).resize(img.shape[::-1], Image.NEAREST)
        mask = np.asarray(mask_im) > 0
        ring = (np.asarray(mask_im.filter(ImageFilter.MaxFilter(9))) > 0) & ~mask  # tissue around the lungs
        assert img[mask].mean() < img[ring].mean(), r.path
        lung_means.setdefault(r.label, []).append(img[mask].mean() / img[ring].mean())
    med = {c: float(np.median(v)) for c, v in lung_means.items()}
    assert med["Normal"] < med["COVID"] and med["Normal"] < med["Lung_Opacity"]
    # ... but brightness alone does not give the class away: the ranges overlap.
    assert max(lung_means["Normal"]) > min(lung_means["COVID"] + lung_means["Lung_Opacity"])


def test_some_kermany_images_reappear_in_the_covid_set(synth_roots):
    covid, kermany = synth_roots
    k = load_dataset(kermany)
    small = {}
    for r in k.records:
        im = Image.open(k.abspath(r.path)).convert("L").resize((96, 96), Image.BILINEAR)
        small[hashlib.sha256(im.tobytes()).hexdigest()] = r
    found = []
    for r in load_dataset(covid).records:
        digest = hashlib.sha256(Image.open(covid / r.path).tobytes()).hexdigest()
        if digest in small:
            found.append((r.label, small[digest].label))
    assert found and {c for c, _ in found} <= {"Normal", "Viral Pneumonia"}
    assert ("Normal", "NORMAL") in found


@pytest.mark.parametrize("count", [8, 50, 120, 121, 1000])
def test_count_is_the_number_of_images_made(count):
    from cxrtl.data.synthetic import COVID_COUNTS, _scaled_counts

    counts = _scaled_counts(count, COVID_COUNTS, 2)
    assert sum(counts.values()) == count and min(counts.values()) >= 2
