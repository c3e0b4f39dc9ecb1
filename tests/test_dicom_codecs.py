"""Compressed DICOM: same pixels, same prediction; datasets of them; a missing plugin; quiet decoder logs."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from cxrtl.cli import main
from test_dicom import write_dicom
from test_predict import radiograph, save_png


def xray16(h=40, w=48, seed=3) -> tuple[np.ndarray, np.ndarray]:
    """(12-bit radiograph, its 8-bit display through the full-range window) as the PNG a viewer saves."""
    gray = radiograph(h, w, seed=seed)
    return gray.astype(np.uint16) * 16 + 8, gray


def compressed_copy(src: str, dst, syntax) -> str:
    ds = pydicom.dcmread(src)
    ds.compress(syntax)
    ds.save_as(dst)
    return str(dst)


def available_syntaxes():

    return [pytest.param(s, id=s.name) for s in (RLELossless, JPEG2000Lossless, JPEGLSLossless)]


@pytest.mark.parametrize("syntax", available_syntaxes())
def test_compressed_dicom_predicts_as_uncompressed_and_png(run3_tiny, tmp_path, syntax):
    from pydicom.pixels.encoders.base import get_encoder

    if not get_encoder(syntax).is_available:
        pytest.skip(f"no encoder installed for {syntax.name}")
    raw, gray = xray16()
    plain = write_dicom(tmp_path / "plain.dcm", raw, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    packed = compressed_copy(plain, tmp_path / "packed.dcm", syntax)
    assert pydicom.dcmread(packed).file_meta.TransferSyntaxUID == syntax
    from cxrtl.inference.predict import Predictor

    probs = Predictor.from_checkpoint(run3_tiny).predict([save_png(tmp_path / "x.png", gray), plain, packed])
    np.testing.assert_array_equal(probs[2], probs[1])  # lossless: the very same prediction
    np.testing.assert_allclose(
        probs[1], probs[0], atol=2e-3
    )  # 12-bit window vs the 8-bit PNG: within 1 level


@pytest.fixture(scope="module")
def run3_tiny(tmp_path_factory):
    from cxrtl.data.preprocess import Preprocess
    from test_predict import make_run

    return make_run(tmp_path_factory.mktemp("run"), Preprocess(input="raw", channels=3, image_size=32))


def test_dataset_of_compressed_dicoms_indexes_and_caches_like_pngs(tmp_path):
    from cxrtl.data.cache import build_cache
    from cxrtl.data.preprocess import Preprocess
    from cxrtl.data.sources import load_dataset

    pngs, dicoms = tmp_path / "png", tmp_path / "dcm"
    for c, label in enumerate(("NORMAL", "PNEUMONIA")):
        for i in range(3):
            raw, gray = xray16(seed=10 * c + i)
            save_png(pngs / label / f"{label}-{i}.png", gray)
            (dicoms / label).mkdir(parents=True, exist_ok=True)
            plain = write_dicom(tmp_path / "p.dcm", raw, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
            compressed_copy(plain, dicoms / label / f"{label}-{i}.dcm", RLELossless)
    write_dicom(dicoms / "NORMAL" / "report.dcm", None)
    pp = Preprocess(input="raw", channels=1, image_size=16)
    a, b = load_dataset(pngs), load_dataset(dicoms)
    assert [r.label for r in a.records] == [r.label for r in b.records] and len(b.records) == 6
    assert [(s.path, s.reason.split(" (")[0]) for s in b.skipped] == [
        ("NORMAL/report.dcm", "not an image object")
    ]
    ca = build_cache(a, a.records, pp, cache_dir=tmp_path / "ca")
    cb = build_cache(b, b.records, pp, cache_dir=tmp_path / "cb")
    assert not cb.failed
    diff = np.abs(np.asarray(ca.images, dtype=int) - np.asarray(cb.images, dtype=int))
    assert diff.max() <= 1  # the 12-bit window rounds to within one grey level of the 8-bit PNG


def test_missing_decoder_plugin_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    from pydicom.pixels.decoders.base import Decoder

    raw, _ = xray16()
    packed = compressed_copy(
        write_dicom(tmp_path / "p.dcm", raw, bits_stored=12), tmp_path / "j.dcm", RLELossless
    )
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))  # as if no plugin installed
    from cxrtl.data.dicom import DicomReadError, load_dicom_gray

    with pytest.raises(DicomReadError) as info:
        load_dicom_gray(packed)
    assert info.value.reason == "no decoder installed for RLE Lossless pixel data"
    assert str(info.value).endswith("; pip install 'cxrtl[dicom]'")


def damaged_jpeg(tmp_path) -> str:
    """pydicom's own JPEG-lossy.dcm: a JPEG Extended codestream with a misplaced marker segment."""
    from pathlib import Path

    pytest.importorskip("pylibjpeg")
    return str(Path(pydicom.__file__).parent / "data" / "test_files" / "JPEG-lossy.dcm")


@pytest.mark.parametrize("verbose", [False, True])
def test_decoder_tracebacks_only_with_verbose(run3_tiny, tmp_path, capsys, verbose):
    from cxrtl.data.image_io import ImageReadError, load_gray

    bad = damaged_jpeg(tmp_path)
    with pytest.raises(ImageReadError):
        load_gray(bad)  # the fixture is truly undecodable
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # the terminal of a user whose root logger prints everything
    logging.getLogger().addHandler(handler)
    try:
        rc = main([*(["-v"] if verbose else []), "predict", str(run3_tiny), bad, "--format", "json"])
    finally:
        logging.getLogger().removeHandler(handler)
    logged = stream.getvalue()
    assert rc == 1
    assert ("Traceback" in logged) is verbose and ("pydicom" in logged) is verbose, logged
    assert '"error": "cannot read image' in capsys.readouterr().out
