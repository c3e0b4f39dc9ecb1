"""Preprocessing (eq. 9, resize/crop parity with torchvision), the uint8 cache and the datasets over it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrtl.data import cache as cache_mod
from cxrtl.data import prepare_data
from cxrtl.data.cache import build_cache, default_cache_dir
from cxrtl.data.dataset import CachedDataset
from cxrtl.data.image_io import apply_mask, load_gray, prepare_image, prepare_mask
from cxrtl.data.preprocess import Preprocess, normalize_batch
from cxrtl.data.sources import load_dataset
from cxrtl.data.splits import make_split, write_split_csv
from cxrtl.errors import CxrtlError


def _cache_dirs(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir()) if base.exists() else []


def test_prepare_image_matches_torchvision_resize_centercrop():
    from torchvision import transforms

    rng = np.random.default_rng(0)
    for shape in ((250, 300), (301, 199), (64, 64)):
        gray = rng.integers(0, 256, shape, dtype=np.uint8)
        pp = Preprocess(image_size=56)
        ref = transforms.Compose([transforms.Resize(pp.resize_size), transforms.CenterCrop(pp.image_size)])
        expected = np.asarray(ref(Image.fromarray(gray)))
        assert np.array_equal(prepare_image(gray, pp), expected)


def test_apply_mask_is_eq9_with_nearest_resize():
    img = np.full((8, 8), 200, np.uint8)
    mask = np.array([[0, 255], [128, 255]], np.uint8)  # resized to 8x8 by nearest: 4x4 blocks
    out = apply_mask(img, mask)
    assert out[:4, :4].max() == 0 and (out[:4, 4:] == 200).all() and (out[4:, 4:] == 200).all()
    assert (out[4:, :4] == round(200 * 128 / 255)).all()


def test_masked_prepare_and_prepare_mask_share_geometry():
    gray = np.full((120, 100), 90, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255  # the left half is lung
    pp = Preprocess(input="masked", image_size=32)
    img = prepare_image(gray, pp, mask)
    m = prepare_mask(mask, gray.shape, pp)
    assert img.shape == m.shape == (32, 32) and set(np.unique(m)) <= {0, 255}
    assert np.array_equal(img > 0, m > 0)
    with pytest.raises(CxrtlError, match="mask"):
        prepare_image(gray, pp)


def test_cache_is_reused_and_rebuilt_when_sources_or_preprocessing_change(covid_copy, tiny_pp):
    base = default_cache_dir()
    index = load_dataset(covid_copy)
    first = build_cache(index, index.records, tiny_pp, progress=False)
    assert first.built and first.images.shape == (len(index.records), 32, 32)
    assert first.images.dtype == np.uint8 and first.images[0].any()
    again = build_cache(
        index, list(reversed(index.records)), Preprocess(channels=1, image_size=32), progress=False
    )
    assert not again.built and again.dir == first.dir  # order and channel count do not matter
    bigger = build_cache(index, index.records, Preprocess(image_size=40), progress=False)
    assert bigger.built and bigger.dir != first.dir
    # Touch one source file: a new cache replaces the outdated one of the same files and settings.
    src = index.abspath(index.records[0].path)
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    rebuilt = build_cache(index, index.records, tiny_pp, progress=False)
    assert rebuilt.built and rebuilt.dir != first.dir
    assert first.dir.name not in _cache_dirs(base) and bigger.dir.name in _cache_dirs(base)


def test_cached_pixels_equal_the_shared_preprocessing(covid_root):
    pp = Preprocess(input="masked", image_size=24)
    index = load_dataset(covid_root)
    recs = index.records[:5]
    cache = build_cache(index, recs, pp, progress=False, workers=1)
    for r in recs:
        expected = prepare_image(load_gray(index.abspath(r.path)), pp, load_gray(index.abspath(r.mask_path)))
        assert np.array_equal(cache.images[cache.row_of[r.path]], expected)


def test_interrupted_build_leaves_no_cache(covid_copy, tiny_pp, monkeypatch):
    index = load_dataset(covid_copy)
    calls = {"n": 0}
    real = cache_mod._decode

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(cache_mod, "_decode", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_cache(index, index.records, tiny_pp, progress=False, workers=1)
    assert _cache_dirs(default_cache_dir()) == []
    monkeypatch.setattr(cache_mod, "_decode", real)
    assert build_cache(index, index.records, tiny_pp, progress=False).built


def test_undecodable_image_is_excluded_and_reported(covid_copy, tiny_pp):
    victim = next((covid_copy / "Normal" / "images").glob("*.png"))
    data = bytearray(victim.read_bytes())
    data[60:-40] = bytes(len(data) - 100)  # header and end marker intact, pixel data destroyed
    victim.write_bytes(bytes(data))
    prepared = prepare_data(covid_copy, tiny_pp, progress=False)
    rel = f"Normal/images/{victim.name}"
    assert rel in prepared.cache.failed
    assert all(r.path != rel for recs in prepared.split.values() for r in recs)
    assert any(s.path == rel and s.reason.startswith("cannot decode") for s in prepared.index.skipped)
    assert sum(len(d) for d in prepared.datasets.values()) == len(prepared.index.records) - 1


def test_prepare_data_gives_uint8_datasets(covid_root, tiny_pp, tmp_path):
    split_csv = write_split_csv(tmp_path / "split.csv", make_split(load_dataset(covid_root), seed=1))
    prepared = prepare_data(covid_root, tiny_pp, split_csv=split_csv, progress=False)
    assert prepared.classes == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    train = prepared.datasets["train"]
    assert isinstance(train, CachedDataset) and len(train) == len(prepared.split["train"])
    x, y = train[0]
    assert x.dtype == torch.uint8 and x.shape == (1, 32, 32)
    assert y == prepared.class_to_idx[train.records[0].label] == train.labels[0]
    loader = torch.utils.data.DataLoader(train, batch_size=8, shuffle=True)
    xb, yb = next(iter(loader))
    assert xb.shape == (8, 1, 32, 32) and yb.dtype == torch.int64
    assert normalize_batch(xb, tiny_pp).shape == (8, 3, 32, 32)
    xs, ys = train.batch([3, 0, 3])
    assert torch.equal(xs[0], xs[2]) and torch.equal(xs[1], train[0][0]) and ys.tolist()[1] == y


def test_masked_input_without_masks_fails_before_any_work(pneumonia_root):
    with pytest.raises(CxrtlError, match="masked input needs lung masks"):
        prepare_data(pneumonia_root, Preprocess(input="masked", image_size=32), progress=False)
    assert _cache_dirs(default_cache_dir()) == []
