"""Issue 21 §1: the shared readers bound the memory and time of one image before decoding it.

Each hostile file is made by code (hostile_inputs.py) and sent through load_gray/prepare_image here; the
same files go through `predict`, `data check` and the server in test_hostile_channels.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from hostile_inputs import (
    SRC,
    evil_eps,
    fake_ghostscript,
    many_frame_gif,
    peak,
    png_streamed,
    reset_peak,
    tall_png,
    wide_png,
)
from PIL import Image

from cxrtl.data.image_io import ImageReadError, load_gray, prepare_image
from cxrtl.data.pixels import scale_to_u8
from cxrtl.data.preprocess import Preprocess

MB = 2**20


@pytest.mark.parametrize("make", [wide_png, tall_png], ids=["200000x1", "1x200000"])
def test_strips_beyond_1_to_20_are_refused_before_decoding(tmp_path, make):
    path = make(tmp_path)
    assert path.stat().st_size < 2000  # a few hundred bytes that asked for a 13 GB resize
    start = time.perf_counter()
    with pytest.raises(ImageReadError) as err:
        load_gray(path, target_short_side=256)
    assert time.perf_counter() - start < 1
    assert "aspect ratio beyond 1:20" in err.value.reason and "crop it" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_1_to_20_is_still_read_and_prepared_as_torchvision_does(tmp_path):
    pytest.importorskip("torchvision")
    from torchvision import transforms

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (30, 600), dtype=np.uint8)  # exactly 1:20
    Image.fromarray(img).save(tmp_path / "edge.png")
    gray = load_gray(tmp_path / "edge.png")
    pp = Preprocess(image_size=32)
    ref = transforms.Compose([transforms.Resize(pp.resize_size), transforms.CenterCrop(pp.image_size)])
    assert np.array_equal(prepare_image(gray, pp), np.asarray(ref(Image.fromarray(gray))))


@pytest.mark.parametrize("shape", [(1, 200_000), (200_000, 1), (3, 150_001)])
def test_prepare_image_crops_a_strip_in_source_coordinates(shape):
    """An array handed to the Python API is not refused: only the crop is resampled (no 13 GB resize)."""
    img = (np.arange(shape[0] * shape[1]) % 251).astype(np.uint8).reshape(shape)
    before = reset_peak()
    start = time.perf_counter()
    out = prepare_image(img, Preprocess(image_size=224))
    assert out.shape == (224, 224) and time.perf_counter() - start < 1
    assert peak() - before < 64 * MB


def test_a_strip_is_prepared_within_one_grey_level_of_the_full_resize():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (3, 2000), dtype=np.uint8)  # 1:667; the full resize is 170000 x 37
    pp = Preprocess(image_size=32)
    full = Image.fromarray(img).resize((int(37 * 2000 / 3), 37), Image.Resampling.BILINEAR)
    left, top = round((full.width - 32) / 2), round((full.height - 32) / 2)
    want = np.asarray(full.crop((left, top, left + 32, top + 32)), dtype=int)
    assert np.abs(prepare_image(img, pp).astype(int) - want).max() <= 1


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "<i2", "u1", "<i4", "<f4"])
def test_scaling_to_8_bits_is_the_float64_formula_bit_for_bit(dtype):
    rng = np.random.default_rng(2)
    a = rng.integers(-3000, 60000, (300, 401)).astype(dtype)
    lo, hi = float(a.min()) + 7, float(a.max()) - 11.5
    want = np.clip(np.rint((a.astype(np.float64) - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(scale_to_u8(a, lo, hi), want)
    assert not scale_to_u8(a, 5.0, 5.0).any()  # a flat image is black, not a division by zero


def test_16_bit_png_is_windowed_exactly(tmp_path):
    rng = np.random.default_rng(3)
    img = rng.integers(100, 40000, (50, 70)).astype(np.uint16)
    Image.fromarray(img).save(tmp_path / "a.png")
    lo, hi = float(img.min()), float(img.max())
    want = np.clip(np.rint((img - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(load_gray(tmp_path / "a.png"), want)


@pytest.mark.slow
def test_16_bit_9000x9000_png_decodes_in_bounded_memory_and_time(tmp_path):
    """81 Mpixel of 16-bit grey (a 1.2 MB file): 1.1 GB and 3.6 s of scaling before; decoded + 8-bit now."""
    row = b"".join(((x * 7) % 65536).to_bytes(2, "big") for x in range(9000))
    path = png_streamed(tmp_path / "deep.png", 9000, 9000, 16, row)
    before = reset_peak()
    start = time.perf_counter()
    gray = load_gray(path, target_short_side=256)
    seconds, cost = time.perf_counter() - start, peak() - before
    assert gray.shape == (9000, 9000) and gray.dtype == np.uint8 and gray[0, 1] == 0 and gray.max() == 255
    # the decoded 16-bit image (162 MB) and the 8-bit result (81 MB), plus strips of a million pixels
    assert cost < 320 * MB, f"{cost / MB:.0f} MB"
    assert seconds < 5, f"{seconds:.1f} s"


def test_only_the_supported_formats_are_opened(tmp_path):
    path = evil_eps(tmp_path)
    with pytest.raises(ImageReadError, match="not an image in a supported format"):
        load_gray(path)


def test_eps_never_reaches_ghostscript(tmp_path):
    """A fake `gs` on PATH leaves a marker when run: Pillow alone runs it, cxrtl's reader never does."""
    bindir, marker = fake_ghostscript(tmp_path)
    eps = evil_eps(tmp_path)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": SRC}

    def run(code: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )

    control = run(
        f"from PIL import Image\ntry:\n    Image.open({str(eps)!r}).load()\nexcept Exception:\n    pass"
    )
    assert marker.exists(), "the control must reach the fake Ghostscript: " + control.stderr
    marker.unlink()
    ours = run(
        "from cxrtl.data.image_io import load_gray, image_size, ImageReadError\n"
        f"for f in (load_gray, image_size):\n    try:\n        f({str(eps)!r})\n"
        "    except ImageReadError as e:\n        print(e.reason)\n"
    )
    assert ours.stdout.count("not an image in a supported format") == 2, ours.stdout + ours.stderr
    assert not marker.exists()


def test_a_gif_of_300000_frames_is_read_at_its_first_frame_without_walking_them(tmp_path):
    path = many_frame_gif(tmp_path, 300_000)
    start = time.perf_counter()
    gray = load_gray(path)
    assert gray.shape == (1, 1) and time.perf_counter() - start < 0.5  # the frame walk alone took 2.3 s


@pytest.mark.slow
def test_16_bit_dicom_is_scaled_by_lookup_in_bounded_memory(tmp_path):
    """A 5000 x 5000 12-bit DICOM with rescale and window: float64 copies cost 0.9 GB before."""
    pytest.importorskip("pydicom")
    from test_dicom import write_dicom

    row = ((np.arange(5000) * 7) % 4096).astype(np.uint16)
    path = write_dicom(
        tmp_path / "deep.dcm",
        np.broadcast_to(row, (5000, 5000)).copy(),
        bits_stored=12,
        RescaleSlope=1,
        RescaleIntercept=-1024,
        WindowCenter=500,
        WindowWidth=1500,
    )
    before = reset_peak()
    start = time.perf_counter()
    gray = load_gray(path)
    seconds, cost = time.perf_counter() - start, peak() - before
    assert gray.shape == (5000, 5000) and gray.max() == 255 and gray.min() == 0
    # pydicom's file bytes and array (50 + 50 MB) and the 8-bit result (25 MB)
    assert cost < 250 * MB, f"{cost / MB:.0f} MB"
    assert seconds < 5, f"{seconds:.1f} s"


def test_a_dicom_strip_is_refused_from_its_header(tmp_path):
    pytest.importorskip("pydicom")
    from test_dicom import write_dicom

    path = write_dicom(tmp_path / "strip.dcm", np.zeros((2, 900), dtype=np.uint8))
    with pytest.raises(ImageReadError, match="aspect ratio beyond 1:20"):
        load_gray(path)
