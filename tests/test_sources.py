"""Dataset layouts, junk handling and safe decoding: what `cxrtl data check` tells a user about a download."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrtl.data.image_io import ImageReadError, load_gray
from cxrtl.data.sources import kermany_patient_id, load_dataset
from cxrtl.errors import CxrtlError


def _png(path: Path, value: int = 100, size=(40, 32), mode="L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = (np.arange(size[0] * size[1]).reshape(size[1], size[0]) * 7 + value) % 251
    Image.fromarray(a.astype(np.uint8)).convert(mode).save(path)
    return path


def _reasons(index) -> dict[str, str]:
    return {s.path: s.reason for s in index.skipped}


def test_covid_layout_from_dataset_folder_and_parent(covid_root, tmp_path):
    (tmp_path / "download").mkdir()
    (tmp_path / "download" / covid_root.name).symlink_to(covid_root, target_is_directory=True)
    for root in (covid_root, tmp_path / "download"):
        index = load_dataset(root)
        assert index.layout == "covid-radiography" and index.kind == "covid"
        assert index.classes == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
        assert all(
            r.mask_path and r.mask_path.replace("/masks/", "/images/") == r.path for r in index.records
        )
        assert index.missing_masks == []
    # The metadata spreadsheets beside the class folders are reported, not counted.
    assert _reasons(index)["COVID.metadata.xlsx"] == "not an image"


def test_parent_holding_two_datasets_is_ambiguous(synth_out):
    with pytest.raises(CxrtlError, match="several datasets"):
        load_dataset(synth_out)


def test_kermany_layout_keeps_official_folder_and_patient(pneumonia_root, tmp_path):
    index = load_dataset(pneumonia_root)
    assert index.layout == "kermany" and index.classes == ["NORMAL", "PNEUMONIA"]
    assert {r.source_split for r in index.records} == {"train", "val", "test"}
    assert all(r.path.startswith(f"{r.source_split}/{r.label}/") for r in index.records)
    assert all(r.patient_id for r in index.records)
    per_patient = {}
    for r in index.records:
        per_patient.setdefault(r.patient_id, []).append(r)
    assert max(len(v) for v in per_patient.values()) >= 2  # several images per patient
    # A parent folder (the unzipped archive) works too.
    parent = tmp_path / "archive"
    parent.mkdir()
    (parent / "chest_xray").symlink_to(pneumonia_root, target_is_directory=True)
    assert len(load_dataset(parent).records) == len(index.records)


@pytest.mark.parametrize(
    "name,pid",
    [
        ("person1_bacteria_1.jpeg", "person1"),
        ("person1427_virus_2437.jpeg", "person1427"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("scan.jpeg", None),
    ],
)
def test_kermany_patient_ids(name, pid):
    assert kermany_patient_id(name) == pid


def test_messy_kermany_download(pneumonia_copy):
    """Second copy of the tree, __MACOSX, hidden files, junk, wrong extension, truncated: each image once."""
    clean = load_dataset(pneumonia_copy)
    n = len(clean.records)
    shutil.copytree(pneumonia_copy, pneumonia_copy / "chest_xray")  # the archive's nested copy
    mac = pneumonia_copy / "__MACOSX" / "train" / "NORMAL"
    mac.mkdir(parents=True)
    (mac / "._IM-0001-0001.jpeg").write_bytes(b"\x00\x05\x16\x07")
    normal = pneumonia_copy / "train" / "NORMAL"
    (normal / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (normal / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not an image")
    (normal / "notes.jpeg").write_text("this is text")
    _png(normal / "IM-9001-0001.jpeg", value=3)  # a PNG named .jpeg: used, by content
    good = next(normal.glob("IM-*.jpeg")).read_bytes()
    (normal / "IM-9002-0001.jpeg").write_bytes(good[: len(good) // 2])  # truncated
    index = load_dataset(pneumonia_copy)
    assert len(index.records) == n + 1
    assert len({r.path for r in index.records}) == len(index.records)
    assert not any(r.path.startswith("chest_xray/") for r in index.records)
    reasons = _reasons(index)
    assert reasons["__MACOSX/"] == "macOS archive metadata folder"
    assert reasons["train/NORMAL/.DS_Store"] == "hidden file"
    assert reasons["train/NORMAL/Thumbs.db"] == "not an image"
    assert reasons["train/NORMAL/notes.jpeg"] == "not an image"
    assert reasons["train/NORMAL/IM-9002-0001.jpeg"].startswith("truncated")
    copies = [p for p, why in reasons.items() if why.startswith("duplicate of ")]
    assert len(copies) == n and all(p.startswith("chest_xray/") for p in copies)
    assert reasons[copies[0]] == f"duplicate of {copies[0][len('chest_xray/') :]}"


def test_byte_identical_files_under_two_names_count_once(covid_copy):
    src = next((covid_copy / "Normal" / "images").glob("*.png"))
    shutil.copy(src, src.with_name("Normal-9999.png"))
    index = load_dataset(covid_copy)
    paths = {r.path for r in index.records}
    assert ("Normal/images/Normal-9999.png" in paths) != (f"Normal/images/{src.name}" in paths)
    assert any(s.reason.startswith("duplicate of") for s in index.skipped)


def test_missing_mask_is_reported_not_fatal(covid_copy):
    mask = next((covid_copy / "COVID" / "masks").glob("*.png"))
    mask.unlink()
    index = load_dataset(covid_copy)
    assert index.missing_masks == [f"COVID/images/{mask.name}"]
    rec = next(r for r in index.records if r.path == f"COVID/images/{mask.name}")
    assert rec.mask_path is None


def test_class_folders_and_odd_modes(tmp_path):
    root = tmp_path / "xrays"
    _png(root / "cats" / "a.png", 1, mode="RGB")
    _png(root / "cats" / "b.png", 2, mode="RGBA")
    _png(root / "cats" / "c.png", 3, mode="P")
    _png(root / "dogs" / "d.png", 4)
    Image.fromarray((np.arange(1280).reshape(32, 40) * 50).astype(np.uint16)).save(root / "dogs" / "e.png")
    index = load_dataset(root)
    assert index.layout == "class-folders" and index.classes == ["cats", "dogs"]
    assert len(index.records) == 5
    for r in index.records:
        img = load_gray(index.abspath(r.path))
        assert img.dtype == np.uint8 and img.shape == (32, 40)
    sixteen = load_gray(root / "dogs" / "e.png")
    assert sixteen.min() == 0 and sixteen.max() == 255  # 16-bit windowed to the full 8-bit range


def test_csv_manifest(tmp_path):
    _png(tmp_path / "img" / "a.png", 1)
    _png(tmp_path / "img" / "b.png", 2)
    _png(tmp_path / "img" / "c.png", 3)
    _png(tmp_path / "img" / "a_mask.png", 255)
    manifest = tmp_path / "list.csv"
    manifest.write_text(
        "path,label,mask_path,patient_id\nimg/a.png,sick,img/a_mask.png,p1\n"
        "img/b.png,well,,p1\nimg/c.png,well,,\nimg/gone.png,well,,\n"
    )
    index = load_dataset(manifest)
    assert index.layout == "csv" and index.classes == ["sick", "well"]
    assert [(r.path, r.label, r.mask_path, r.patient_id) for r in index.records] == [
        ("img/a.png", "sick", "img/a_mask.png", "p1"),
        ("img/b.png", "well", None, "p1"),
        ("img/c.png", "well", None, None),
    ]
    assert _reasons(index)["img/gone.png"] == "missing file"
    assert index.missing_masks == ["img/b.png", "img/c.png"]


def test_no_layout_and_empty_class_are_one_line_errors(tmp_path, covid_copy):
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.txt").write_text("hi")
    with pytest.raises(CxrtlError, match="no recognisable dataset layout") as err:
        load_dataset(tmp_path / "nothing")
    assert "\n" not in str(err.value)
    with pytest.raises(CxrtlError, match="does not exist"):
        load_dataset(tmp_path / "missing")
    for f in (covid_copy / "Viral Pneumonia" / "images").iterdir():
        f.write_text("junk")
    with pytest.raises(CxrtlError, match="'Viral Pneumonia'.*no usable images"):
        load_dataset(covid_copy)


def test_load_gray_refuses_broken_files(tmp_path, monkeypatch):
    good = _png(tmp_path / "good.png", size=(300, 200))
    data = good.read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageReadError) as err:
        load_gray(tmp_path / "trunc.png")
    assert err.value.reason == "truncated"
    with pytest.raises(ImageReadError, match="not an image"):
        load_gray(tmp_path / "text.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(ImageReadError, match="decompression bomb"):
        load_gray(good)


def test_large_jpeg_is_drafted_at_reduced_size_and_stays_close(tmp_path):
    from cxrtl.data.image_io import prepare_image
    from cxrtl.data.preprocess import Preprocess

    path = tmp_path / "big.jpeg"
    yy, xx = np.mgrid[0:1600, 0:2000]
    a = (60 + 100 * xx / 2000 + 20 * np.sin(yy / 40.0)).astype(np.uint8)
    a[500:900, 700:1100] = 250  # a sharp-edged bright patch, the worst case for DCT scaling
    Image.fromarray(a).convert("RGB").save(path, quality=90)
    info = {}
    pp = Preprocess(image_size=224)
    img = load_gray(path, target_short_side=pp.resize_size, info=info)
    assert info["drafted"] and 2 * pp.resize_size <= min(img.shape) < 1600
    full = load_gray(path)
    assert full.shape == (1600, 2000)
    diff = np.abs(prepare_image(img, pp).astype(int) - prepare_image(full, pp).astype(int))
    assert diff.max() <= 8 and diff.mean() < 0.5


def test_dicom_without_support_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "scan.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "cxrtl.data.dicom", None)
    with pytest.raises(CxrtlError, match=r"pip install cxrtl\[dicom\]"):
        load_gray(path)


def test_decompression_bomb_is_skipped_at_index_time(covid_copy):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = covid_copy / "Normal" / "images" / "Normal-bomb.png"
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 200000, 200000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )
    reasons = _reasons(load_dataset(covid_copy))
    assert reasons["Normal/images/Normal-bomb.png"].startswith("decompression bomb (200000x200000")
    with pytest.raises(ImageReadError, match="decompression bomb"):
        load_gray(bomb)


def test_jpeg_header_size():
    import io

    from cxrtl.data.image_io import header_size

    buf = io.BytesIO()
    Image.new("L", (123, 45)).save(buf, format="JPEG")
    assert header_size("JPEG", buf.getvalue()[:4096]) == (123, 45)
