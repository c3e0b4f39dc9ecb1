"""`cxrtl predict --dicom-out DIR`: SR, SEG and SC objects that equal the JSON rows and that dciodvfy accepts."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from cxrtl.cli import main
from cxrtl.data.preprocess import Preprocess
from cxrtl.decisions import Conformal, OperatingPoint
from cxrtl.fsutil import sha256_file
from cxrtl.inference.dicom_out import DISCLAIMER, SCHEME
from helpers import make_segmenter_run, set_decisions
from test_predict import CLASSES, make_run, radiograph

DX = "1.2.840.10008.5.1.4.1.1.1.1"
CR = "1.2.840.10008.5.1.4.1.1.1"


# ---------------------------------------------------------------------------------------- sources
def source_dicom(
    path: Path,
    gray: np.ndarray,
    *,
    study: str | None = None,
    series: str | None = None,
    number: int = 1,
    photometric: str = "MONOCHROME2",
    jpeg: bool = False,
    sop_class: str = DX,
    view: str = "PA",
    **elements,
) -> Path:
    """A frontal chest DX as a modality writes it: full patient/study header, 8-bit pixels.

    ``photometric="MONOCHROME1"`` stores the inverted pixels (a viewer shows ``gray``); ``jpeg`` stores them
    JPEG Baseline compressed. Elements a result must NOT copy are included: PatientComments,
    OtherPatientIDs, StudyDescription, InstitutionName.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "P-0042", "19700101", "F"
    ds.PatientComments = "private remark that must stay in the source"
    ds.OtherPatientIDs = "OTHER-7"
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "101500", "S1", "ACC-1"
    ds.ReferringPhysicianName = "Who^Doctor"
    ds.StudyDescription = "CHEST PA"
    ds.InstitutionName = "Test Hospital"
    ds.Modality = "DX" if sop_class == DX else "CR"
    ds.Manufacturer = "ACME"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", view
    ds.PatientOrientation = ["A", "F"]
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.PresentationIntentType = "FOR PRESENTATION"
    stored = 255 - gray if photometric == "MONOCHROME1" else gray
    if jpeg:
        buf = io.BytesIO()
        Image.fromarray(stored).save(buf, format="JPEG", quality=95)
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
    else:
        ds.set_pixel_data(stored, photometric_interpretation=photometric, bits_stored=8)
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def three_sources(folder: Path, study: str | None = None) -> list[Path]:
    """A study of three frontal radiographs: plain MONOCHROME2, MONOCHROME1, and JPEG Baseline (a CR)."""
    folder.mkdir(parents=True, exist_ok=True)
    study = study or generate_uid()
    series = generate_uid()
    return [
        source_dicom(folder / "plain.dcm", radiograph(64, 72, seed=1), study=study, series=series),
        source_dicom(
            folder / "mono1.dcm",
            radiograph(64, 72, seed=2),
            study=study,
            series=series,
            number=2,
            photometric="MONOCHROME1",
        ),
        source_dicom(
            folder / "jpeg.dcm",
            radiograph(64, 80, seed=3),
            study=study,
            number=1,
            jpeg=True,
            sop_class=CR,
        ),
    ]


# ---------------------------------------------------------------------------------------- reading back
def read_sr(path: Path) -> dict:
    """An SR read back with highdicom: probabilities, finding, set, flag, algorithm, disclaimer."""
    sr = hd.sr.srread(path)
    groups = {g.tracking_identifier: g for g in sr.content.get_image_measurement_groups()}
    assert len(groups) == len(CLASSES) + 1
    out: dict = {"probabilities": {}, "prediction_set": [], "positive": None}
    for name in CLASSES:
        group = groups[f"cxrtl probability of {name}"]
        assert group.finding_type == hd.sr.CodedConcept(name, SCHEME, name)
        (m,) = [x for x in group.get_measurements() if x.name == codes.DCM.Probability]
        out["probabilities"][name] = m.value
        inset = [e for e in group.get_qualitative_evaluations() if e.name.value == "INSET"]
        if inset and inset[0].value == codes.SCT.Yes:
            out["prediction_set"].append(name)
        thr = [x for x in group.get_measurements() if x.name.value == "OPTHR"]
        if thr:
            (flag,) = [e for e in group.get_qualitative_evaluations() if e.name.value == "OPFLAG"]
            out["positive"] = {"class": name, "threshold": thr[0].value, "flag": flag.value == codes.SCT.Yes}
    out["label"] = groups["cxrtl classification"].finding_type.meaning
    out["texts"] = [item.TextValue for item in sr.ContentSequence if item.ValueType == "TEXT"]
    out["dataset"] = sr
    return out


def algorithm_items(ds) -> dict[str, list[str]]:
    """Every TID 4019 item in an SR tree: concept meaning -> text values (name, version, parameters)."""
    found: dict[str, list[str]] = {}

    def walk(items):
        for item in items:
            if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue in (
                "111001",
                "111003",
                "111002",
            ):
                found.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, []).append(item.TextValue)
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return found


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of Debian's dicom3tools validator on one file."""
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def masked_run(tmp_path_factory):
    """A masked-input model at 64 px with an operating point and a conformal threshold, and a segmenter."""
    pytest.importorskip("segmentation_models_pytorch")
    root = tmp_path_factory.mktemp("dicom_out")
    run = make_run(root / "run", Preprocess(input="masked", channels=3, image_size=64), seed=2)
    set_decisions(
        run,
        operating_point=OperatingPoint(positive="Viral Pneumonia", threshold=0.3),
        conformal=Conformal(alpha=0.1, threshold=0.7),
    )
    return run, make_segmenter_run(root / "seg")


def predict_json(capsys, *argv) -> tuple[int, list[dict], str]:
    capsys.readouterr()
    rc = main(["predict", *map(str, argv), "--format", "json", "--no-progress"])
    captured = capsys.readouterr()
    return rc, json.loads(captured.out) if captured.out.strip() else [], captured.err


# ---------------------------------------------------------------------------------------- tests
def test_sr_seg_sc_equal_the_json_rows(masked_run, tmp_path, capsys):
    run, seg_run = masked_run
    sources = three_sources(tmp_path / "in")
    png = tmp_path / "in" / "photo.png"
    Image.fromarray(radiograph(64, 64, seed=4)).save(png)
    out, masks, cams = tmp_path / "out", tmp_path / "masks", tmp_path / "cams"
    rc, rows, err = predict_json(
        capsys,
        run,
        *sources,
        png,
        "--segmenter",
        seg_run,
        "--save-masks",
        masks,
        "--cam",
        cams,
        "--dicom-out",
        out,
    )
    assert rc == 0, err
    assert "1 input(s) are not DICOM and get no DICOM output" in err and "photo.png" in err
    by_path = {r["path"]: r for r in rows}
    assert "dicom" not in by_path[str(png)]
    sha = sha256_file(run / "best.safetensors")
    series_of_kind: dict[str, set] = {"SR": set(), "SEG": set(), "SC": set()}
    for src in sources:
        row = by_path[str(src)]
        source = pydicom.dcmread(src)
        files = [Path(f) for f in row["dicom"]]
        assert [f.name for f in files] == [f"{src.stem}.sr.dcm", f"{src.stem}.seg.dcm", f"{src.stem}.sc.dcm"]
        sr_path, seg_path, sc_path = files

        # SR: the JSON row's values, exactly; the algorithm and model named; the disclaimer said
        got = read_sr(sr_path)
        assert got["probabilities"] == row["probabilities"]
        assert got["label"] == row["label"]
        assert got["prediction_set"] == row["prediction_set"]
        assert got["positive"] == row["positive"]
        assert DISCLAIMER in got["texts"]
        algo = algorithm_items(got["dataset"])
        assert set(algo["Algorithm Name"]) == {"cxrtl"}
        params = set(algo["Algorithm Parameters"])
        assert {"model: run", f"checkpoint sha256: {sha}"} <= params

        # SEG: the very mask the model used (the PNG --save-masks wrote), as binary frames
        seg = hd.seg.segread(seg_path)
        png_mask = np.asarray(Image.open(masks / f"{src.stem}.png")) > 127
        assert seg.pixel_array.shape == png_mask.shape == (source.Rows, source.Columns)
        np.testing.assert_array_equal(seg.pixel_array.astype(bool), png_mask)
        assert seg.SegmentSequence[0].SegmentLabel == "Lung"
        assert seg.ContentDescription == DISCLAIMER
        assert seg.get_source_image_uids() == [
            (source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID)
        ]

        # SC: the overlay PNG above a band holding the burned-in disclaimer
        sc = pydicom.dcmread(sc_path)
        cam = np.asarray(Image.open(row["cam"]).convert("RGB"))
        assert sc.BurnedInAnnotation == "YES" and DISCLAIMER in sc.ImageComments
        pixels = sc.pixel_array
        assert pixels.shape[0] > cam.shape[0]
        np.testing.assert_array_equal(pixels[: cam.shape[0], : cam.shape[1]], cam)
        band = pixels[cam.shape[0] :]
        assert (band > 200).any() and (band < 50).any()  # white text on black
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert sc.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID

        for kind, path in zip(("SR", "SEG", "SC"), files):
            ds = pydicom.dcmread(path)
            # joins the source's study, in a new series of its own kind
            assert ds.StudyInstanceUID == source.StudyInstanceUID
            assert ds.SeriesInstanceUID != source.SeriesInstanceUID
            series_of_kind[kind].add((ds.StudyInstanceUID, ds.SeriesInstanceUID, int(ds.SeriesNumber)))
            assert "research use only" in ds.SeriesDescription
            # the patient and study attributes a PACS needs, copied; nothing else of the source's
            for key in (
                "PatientName",
                "PatientID",
                "PatientBirthDate",
                "PatientSex",
                "StudyDate",
                "StudyTime",
                "StudyID",
                "AccessionNumber",
                "ReferringPhysicianName",
            ):
                assert ds[key].value == source[key].value, (kind, key)
            for key in ("PatientComments", "OtherPatientIDs", "StudyDescription", "InstitutionName"):
                assert key not in ds, (kind, key)
            assert ds.get("Manufacturer") == "cxrtl"
        # SR evidence names the source's study, series and instance
        (evidence,) = got["dataset"].CurrentRequestedProcedureEvidenceSequence
        assert evidence.StudyInstanceUID == source.StudyInstanceUID
        assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
        assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
            source.SOPInstanceUID
        )
    # one new series per kind for the study: three SRs share one series, numbered 9001/9002/9003
    for kind, number in (("SR", 9001), ("SEG", 9002), ("SC", 9003)):
        assert len(series_of_kind[kind]) == 1 and next(iter(series_of_kind[kind]))[2] == number


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="needs Debian's dicom3tools (dciodvfy)")
def test_dciodvfy_reports_no_errors(masked_run, tmp_path, capsys):
    run, seg_run = masked_run
    sources = three_sources(tmp_path / "in")
    # one source with none of the optional orientation attributes (no image library entry, empty 2C values)
    bare = source_dicom(tmp_path / "in" / "bare.dcm", radiograph(60, 60, seed=5))
    stripped = pydicom.dcmread(bare)
    for key in ("PatientOrientation", "ImagerPixelSpacing", "BodyPartExamined", "ViewPosition"):
        del stripped[key]
    stripped.save_as(bare)
    rc, rows, err = predict_json(
        capsys,
        run,
        *sources,
        bare,
        "--segmenter",
        seg_run,
        "--cam",
        tmp_path / "cams",
        "--dicom-out",
        tmp_path / "out",
    )
    assert rc == 0, err
    files = [Path(f) for r in rows for f in r["dicom"]]
    assert len(files) == 12
    warnings = set()
    for f in files:
        errors, warns = dciodvfy(f)
        assert errors == [], (f.name, errors)
        warnings.update(w.split(" - ", 1)[-1] for w in warns)
    print("dciodvfy warnings:", sorted(warnings))


def test_a_plain_model_writes_only_the_sr(tmp_path, capsys):
    run = make_run(tmp_path / "run", Preprocess(input="raw", channels=1, image_size=32))
    (src,) = three_sources(tmp_path / "in")[:1]
    rc, rows, err = predict_json(capsys, run, src, "--dicom-out", tmp_path / "out")
    assert rc == 0, err
    assert [Path(f).name for f in rows[0]["dicom"]] == ["plain.sr.dcm"]
    got = read_sr(Path(rows[0]["dicom"][0]))
    assert got["probabilities"] == rows[0]["probabilities"]
    assert got["prediction_set"] == [] and got["positive"] is None  # the model carries neither


def test_a_dicom_without_study_uid_is_an_error_row(tmp_path, capsys):
    run = make_run(tmp_path / "run", Preprocess(input="raw", channels=1, image_size=32))
    good = source_dicom(tmp_path / "good.dcm", radiograph(40, 40, seed=1))
    orphan = source_dicom(tmp_path / "orphan.dcm", radiograph(40, 40, seed=2))
    ds = pydicom.dcmread(orphan)
    del ds.StudyInstanceUID
    ds.save_as(orphan)
    rc, rows, err = predict_json(capsys, run, good, orphan, "--dicom-out", tmp_path / "out")
    assert rc == 1
    assert rows[0]["dicom"] and "error" not in rows[0]
    assert "no StudyInstanceUID" in rows[1]["error"] and "dicom" not in rows[1]
    assert rows[1]["probabilities"] is not None  # the prediction itself stands
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.sr.dcm"]


def test_dicom_out_into_a_file_is_one_line(tmp_path, capsys):
    run = make_run(tmp_path / "run", Preprocess(input="raw", channels=1, image_size=32))
    src = source_dicom(tmp_path / "a.dcm", radiograph(40, 40))
    target = tmp_path / "results.dcm"
    target.write_bytes(b"not a folder")
    capsys.readouterr()
    assert main(["predict", str(run), str(src), "--dicom-out", str(target), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("cxrtl: error: --dicom-out") and "is a file" in line
    assert target.read_bytes() == b"not a folder"


def test_pacs_options_need_a_dicomweb_input(tmp_path, capsys):
    run = make_run(tmp_path / "run", Preprocess(input="raw", channels=1, image_size=32))
    src = source_dicom(tmp_path / "a.dcm", radiograph(40, 40))
    for extra in (["--store"], ["--study", "1.2.3"]):
        capsys.readouterr()
        assert main(["predict", str(run), str(src), *extra, "--no-progress"]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "work with a DICOMweb input" in line


def test_the_ood_flag_is_reported_where_the_row_has_one(tmp_path):
    from cxrtl.inference.dicom_out import DicomWriter, ModelIdentity
    from cxrtl.inference.dicom_source import read_source
    from cxrtl.inference.predict import Prediction

    src = read_source(source_dicom(tmp_path / "a.dcm", radiograph(40, 40)))
    probs = {"COVID": 0.2, "Normal": 0.5, "Viral Pneumonia": 0.3}
    writer = DicomWriter(None, ModelIdentity("m", "0" * 64))
    for ood, want in ((None, None), (True, codes.SCT.Yes), ({"flag": False, "score": 0.1}, codes.SCT.No)):
        row = Prediction(path="a.dcm", label="Normal", probabilities=probs)
        if ood is not None:
            row.ood = ood  # the field an OOD detector adds to a row
        sr = writer.structured_report(src, row)
        f = tmp_path / "sr.dcm"
        sr.save_as(f, enforce_file_format=True)
        (summary,) = [
            g
            for g in hd.sr.srread(f).content.get_image_measurement_groups()
            if g.tracking_identifier == "cxrtl classification"
        ]
        flags = [e.value for e in summary.get_qualitative_evaluations() if e.name.value == "OOD"]
        assert flags == ([] if want is None else [want])
