"""DICOM decoding: LUTs, windowing, polarity, bit depths and broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrtl.data.dicom import DicomReadError, is_dicom, load_dicom_gray
from cxrtl.errors import CxrtlError


def gradient(h=40, w=48) -> np.ndarray:
    """A uint8 test image using the full 0..255 range, with some structure."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = xx * 255 / (w - 1) * 0.7 + yy * 255 / (h - 1) * 0.3
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def write_dicom(
    path, pixels: np.ndarray | None, photometric="MONOCHROME2", bits_stored=None, signed=False, **elements
) -> str:
    """Write a minimal Digital X-Ray DICOM; ``pixels=None`` writes one without pixel data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "anon"
    if pixels is not None:
        ds.set_pixel_data(
            pixels,
            photometric_interpretation=photometric,
            bits_stored=bits_stored or pixels.dtype.itemsize * 8,
        )
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def test_8bit_monochrome2_is_exact(tmp_path):
    img = gradient()
    out = load_dicom_gray(write_dicom(tmp_path / "a.dcm", img))
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out, img)


def test_monochrome1_is_inverted(tmp_path):
    img = gradient()
    out = load_dicom_gray(write_dicom(tmp_path / "m1.dcm", 255 - img, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("bits", [12, 16])
def test_high_bit_depth_scaled_to_8_bits(tmp_path, bits):
    img = gradient()
    scale = (2**bits - 1) / 255.0
    raw = np.rint(img.astype(np.float64) * scale).astype(np.uint16)
    out = load_dicom_gray(write_dicom(tmp_path / f"b{bits}.dcm", raw, bits_stored=bits))
    assert np.abs(out.astype(int) - img.astype(int)).max() <= 1


def test_window_centre_width_applied(tmp_path):
    # 12-bit data; a window over [1000, 3000] maps 1000 -> black and 3000 -> white, clipping outside.
    raw = np.array([[0, 1000, 2000], [3000, 4095, 1500]], dtype=np.uint16)
    out = load_dicom_gray(
        write_dicom(tmp_path / "w.dcm", raw, bits_stored=12, WindowCenter=2000.5, WindowWidth=2001)
    )
    assert out[0, 0] == 0 and out[0, 1] == 0
    assert out[1, 0] == 255 and out[1, 1] == 255
    assert abs(int(out[0, 2]) - 128) <= 1 and abs(int(out[1, 2]) - 64) <= 1


def test_modality_lut_rescale_applied_before_window(tmp_path):
    # Stored values 0..4095 with slope 2, intercept -1000: the window is in rescaled units.
    raw = np.array([[500, 1000, 1500]], dtype=np.uint16)  # rescaled: 0, 1000, 2000
    out = load_dicom_gray(
        write_dicom(
            tmp_path / "r.dcm",
            raw,
            bits_stored=12,
            RescaleSlope=2,
            RescaleIntercept=-1000,
            RescaleType="US",
            WindowCenter=1000.5,
            WindowWidth=2001,
        )
    )
    assert out[0, 0] == 0 and out[0, 2] == 255 and abs(int(out[0, 1]) - 128) <= 1


def test_voi_lut_sequence_applied(tmp_path):
    raw = np.array([[0, 1, 2, 3]], dtype=np.uint16)
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 16])  # LUT Descriptor: 4 entries, first 0, 16 bits
    item.add_new(0x00283006, "US", [0, 100, 200, 300])  # LUT Data
    out = load_dicom_gray(write_dicom(tmp_path / "v.dcm", raw, bits_stored=12, VOILUTSequence=[item]))
    np.testing.assert_array_equal(out, [[0, 85, 170, 255]])


def test_dicom_without_pixel_data_is_a_clear_error(tmp_path):
    path = write_dicom(tmp_path / "sr.dcm", None)
    with pytest.raises(DicomReadError, match="no pixel data"):
        load_dicom_gray(path)


def test_not_a_dicom_and_truncated_dicom_are_errors(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not a dicom file at all" * 3)
    with pytest.raises(CxrtlError):
        load_dicom_gray(junk)
    good = write_dicom(tmp_path / "t.dcm", gradient(64, 64))
    data = Path(good).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 2000])
    with pytest.raises(CxrtlError):
        load_dicom_gray(cut)


def test_bomb_dimensions_rejected_before_decoding(tmp_path):
    path = write_dicom(tmp_path / "bomb.dcm", gradient(8, 8))
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 60000, 60000
    ds.save_as(path)
    with pytest.raises(DicomReadError, match="safety limit"):
        load_dicom_gray(path)


def test_is_dicom_by_suffix_and_magic(tmp_path):
    path = write_dicom(tmp_path / "noext", gradient())
    assert is_dicom(path)
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    assert not is_dicom(png)
    np.testing.assert_array_equal(load_dicom_gray(path), gradient())


def test_missing_pydicom_names_the_extra(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "pydicom" or name.startswith("pydicom."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(CxrtlError, match=r"cxrtl\[dicom\]"):
        load_dicom_gray(tmp_path / "x.dcm")


def test_rgb_dicom_gives_the_grey_of_its_png(tmp_path):
    # dicom.py had its own float RGB->grey that differed from Pillow's convert("L") by 1 on ~1 colour in 1800
    from test_predict import rgb_with_rounding_ties

    rgb = rgb_with_rounding_ties(seed=1)
    out = load_dicom_gray(write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(rgb).convert("L")))
