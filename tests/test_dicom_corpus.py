"""pydicom's own test corpus (real files from dcmtk, GDCM and others) through `predict` and `data check`.

The expected outcome of every file is listed here, so a pydicom or plugin upgrade that changes the corpus
or a decoder shows up as a named failure. The corpus ships inside the pydicom package: it is listed
directly (``pydicom.data.get_testdata_files`` would try to download the files that are not shipped).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("pylibjpeg", reason="the corpus needs the `dicom` extra's decoders")

CORPUS = Path(pydicom.__file__).parent / "data" / "test_files"
SRC = str(Path(__file__).resolve().parents[1] / "src")

# Every image file decodes with the `dicom` extra: JPEG Baseline/Extended 12-bit/Lossless, JPEG-LS, JPEG 2000,
# RLE, deflate, big endian, palette, YBR, multi-frame (first frame), 8 to 32 bits.
PREDICTED = [
    "693_J2KI.dcm",
    "CT_small.dcm",
    "ExplVR_BigEnd.dcm",
    "GDCMJ2K_TextGBR.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "JPEG2000.dcm",
    "JPEGLSNearLossless_08.dcm",
    "JPEGLSNearLossless_16.dcm",
    "JPGExtended.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
    "SC_jpeg_no_color_transform.dcm",
    "SC_jpeg_no_color_transform_2.dcm",
    "SC_rgb_dcmtk_+eb+cr.dcm",
    "SC_rgb_dcmtk_+eb+cy+n1.dcm",
    "SC_rgb_dcmtk_+eb+cy+n2.dcm",
    "SC_rgb_dcmtk_+eb+cy+np.dcm",
    "SC_rgb_dcmtk_+eb+cy+s2.dcm",
    "SC_rgb_dcmtk_+eb+cy+s4.dcm",
    "SC_rgb_gdcm_KY.dcm",
    "SC_rgb_jls_lossy_line.dcm",
    "SC_rgb_jls_lossy_sample.dcm",
    "SC_rgb_jpeg.dcm",
    "SC_rgb_jpeg_app14_dcmd.dcm",
    "SC_rgb_jpeg_dcmd.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_jpeg_lossy_gdcm.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_rle_16bit.dcm",
    "SC_rgb_rle_16bit_2frame.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_rle_32bit.dcm",
    "SC_rgb_rle_32bit_2frame.dcm",
    "SC_rgb_small_odd.dcm",
    "SC_rgb_small_odd_big_endian.dcm",
    "SC_rgb_small_odd_jpeg.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "examples_jpeg2k.dcm",
    "examples_overlay.dcm",
    "examples_palette.dcm",
    "examples_rgb_color.dcm",
    "examples_ybr_color.dcm",
    "image_dfl.dcm",
    "liver_1frame.dcm",
    "liver_expb_1frame.dcm",
    "rtdose.dcm",
    "rtdose_1frame.dcm",
    "rtdose_expb.dcm",
    "rtdose_expb_1frame.dcm",
    "rtdose_rle.dcm",
    "rtdose_rle_1frame.dcm",
]

NO_IMAGE = "not an image object"  # reports, plans, waveforms, DICOMDIRs: no pixel data
DAMAGED = "damaged or truncated"
REFUSED = {
    "ExplVR_BigEndNoMeta.dcm": NO_IMAGE,
    "ExplVR_LitEndNoMeta.dcm": NO_IMAGE,
    "UN_sequence.dcm": NO_IMAGE,
    "dicomdirtests/DICOMDIR-empty.dcm": NO_IMAGE,
    "empty_charset_LEI.dcm": NO_IMAGE,
    "no_meta_group_length.dcm": NO_IMAGE,
    "priv_SQ.dcm": NO_IMAGE,
    "reportsi.dcm": NO_IMAGE,
    "reportsi_with_empty_number_tags.dcm": NO_IMAGE,
    "rtplan.dcm": NO_IMAGE,
    "rtplan_truncated.dcm": NO_IMAGE,
    "rtstruct.dcm": NO_IMAGE,
    "test-SR.dcm": NO_IMAGE,
    "waveform_ecg.dcm": NO_IMAGE,
    "no_meta.dcm": "not a DICOM file",  # no preamble, no meta, no image elements
    "meta_missing_tsyntax.dcm": DAMAGED,  # header without Rows/Columns
    "nested_priv_SQ.dcm": DAMAGED,
    "badVR.dcm": DAMAGED,  # an IS value of '1A'
    "MR_truncated.dcm": DAMAGED,  # 8130 of 8192 pixel bytes
    "JPEG-lossy.dcm": DAMAGED,  # libjpeg: misplaced marker segment (GDCM refuses it too)
    "JPEG2000-embedded-sequence-delimiter.dcm": DAMAGED,  # codestream header unreadable
}
# Refused already from the header by `data check`; the others are found when `data cache` decodes them.
PIXEL_DAMAGE = {"badVR.dcm", "MR_truncated.dcm", "JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"}


def corpus_files() -> list[str]:
    return sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*.dcm"))


def test_expected_list_covers_the_corpus():
    assert corpus_files() == sorted(PREDICTED + list(REFUSED)), "pydicom's corpus changed: update the lists"


def cli(*args: str) -> subprocess.CompletedProcess:
    """The real command line in a fresh process: the stderr a user's terminal would show."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "cxrtl", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
def test_corpus_through_predict(tmp_path):
    from cxrtl.data.preprocess import Preprocess
    from test_predict import make_run

    run = make_run(tmp_path / "run", Preprocess(input="raw", channels=3, image_size=32), classes=["A", "B"])
    res = cli("predict", str(run), str(CORPUS), "--format", "json")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr and "ERROR pydicom" not in res.stderr, res.stderr
    assert (
        res.stderr.strip().splitlines()[-1]
        == f"cxrtl: {len(REFUSED)} of {len(corpus_files())} file(s) failed"
    )
    rows = {str(Path(r["path"]).relative_to(CORPUS)): r for r in json.loads(res.stdout)}
    assert sorted(rows) == corpus_files()
    for name in PREDICTED:
        assert rows[name].get("error") is None and abs(sum(rows[name]["probabilities"].values()) - 1) < 1e-5
    for name, reason in REFUSED.items():
        error = rows[name]["error"]
        assert rows[name]["probabilities"] is None and "\n" not in error, name
        assert error.startswith(f"cannot read image {CORPUS / name}: {reason}"), (name, error)
    counts = {r: sum(1 for v in REFUSED.values() if v == r) for r in set(REFUSED.values())}
    print(f"predicted {len(PREDICTED)}, refused {len(REFUSED)}: {counts}")


@pytest.mark.slow
def test_corpus_through_data_check_and_cache(tmp_path):
    root = tmp_path / "corpus"
    for i, name in enumerate(corpus_files()):  # two class folders, files dealt alternately
        dst = root / "AB"[i % 2] / Path(name).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(CORPUS / name, dst)
    res = cli("data", "check", str(root), "--format", "json")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    report = json.loads(res.stdout)
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    for name, reason in REFUSED.items():
        if name not in PIXEL_DAMAGE:
            assert skipped.pop(Path(name).name).startswith(reason), name
    # two byte-identical files in the corpus: one copy is kept, the other listed as its duplicate
    twins = {"SC_rgb_jpeg_app14_dcmd.dcm", "SC_jpeg_no_color_transform_2.dcm"}
    assert len(skipped) == 1 and set(skipped) < twins
    ((name, reason),) = skipped.items()
    assert reason.startswith("duplicate of ") and (twins - {name}).pop() in reason
    assert report["total"] == len(PREDICTED) - 1 + len(PIXEL_DAMAGE)

    res = cli("data", "cache", str(root), "--image-size", "16", "--cache-dir", str(tmp_path / "cache"))
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert f"could not decode {len(PIXEL_DAMAGE)} image(s)" in res.stdout
    for name in PIXEL_DAMAGE:
        assert f"{name}: {DAMAGED}" in res.stdout, (name, res.stdout)
