"""A round trip through a real PACS: Orthanc (Debian's orthanc + orthanc-dicomweb) on a free loopback port.

Synthetic radiographs (plain, MONOCHROME1, JPEG Baseline) are uploaded with a lateral view and a report;
`cxrtl predict dicomweb+http://... --study UID --store` pulls the study with WADO-RS, predicts on the frontal
images, skips the others with their reason, and stores SR and SEG objects with STOW-RS; a QIDO-RS query
then finds them in the study, equal to the JSON rows. Bad addresses, unknown studies, a token-protected
server and a refused STOW each give one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")
pytest.importorskip("dicomweb_client")

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import orthanc_server
from cxrtl.cli import main
from cxrtl.data.preprocess import Preprocess
from helpers import make_segmenter_run
from test_dicom_out import read_sr, source_dicom, three_sources
from test_predict import make_run, radiograph

pytestmark = pytest.mark.skipif(orthanc_server.missing() is not None, reason=str(orthanc_server.missing()))

TOKEN = "s3cret-test-token"
# A server with access rules: every request needs the bearer token, and STOW-RS (POST under /dicom-web) is
# refused; uploads through Orthanc's own REST API (POST /instances) are allowed, to fill it.
GUARDED = f"""
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  if httpHeaders['authorization'] ~= 'Bearer {TOKEN}' then return false end
  if method == 'POST' and string.sub(uri, 1, 10) == '/dicom-web' then return false end
  return true
end
"""


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    with orthanc_server.Orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("orthanc-guarded")
    with orthanc_server.Orthanc(folder, lua=GUARDED, headers={"Authorization": f"Bearer {TOKEN}"}) as server:
        yield server


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(a masked model at 64 px with its segmenter, a plain 32-px model)."""
    root = tmp_path_factory.mktemp("pacs-models")
    plain = make_run(root / "plain", Preprocess(input="raw", channels=1, image_size=32))
    if orthanc_server.missing() is not None:
        return None, None, plain
    pytest.importorskip("segmentation_models_pytorch")
    masked = make_run(root / "masked", Preprocess(input="masked", channels=3, image_size=64), seed=2)
    return masked, make_segmenter_run(root / "seg"), plain


def basic_text_sr(path: Path, study: str) -> Path:
    """A report in the study: a DICOM object that is not an image."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = (
        "P-0042",
        "Doe^Jane",
        "SR",
        5,
        1,
    )
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.save_as(path, enforce_file_format=True)
    return path


def upload_study(server, folder: Path, extras: bool = True) -> tuple[str, list[Path]]:
    """Three frontal radiographs (+ a lateral and a report) in one new study on ``server``."""
    study = generate_uid()
    sources = three_sources(folder, study)
    others = []
    if extras:
        lateral = source_dicom(
            folder / "lateral.dcm", radiograph(64, 64, seed=9), study=study, view="LL", number=3
        )
        others = [lateral, basic_text_sr(folder / "report.dcm", study)]
    for f in sources + others:
        server.upload(f)
    return study, sources


def run_cli(capsys, *argv, env=None) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["predict", *map(str, argv), "--no-progress"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_line(err: str) -> str:
    """The one error line (notes such as "pulled 3 instance(s)" may come before it), no traceback."""
    assert "Traceback" not in err
    errors = [x for x in err.strip().splitlines() if x.startswith("cxrtl: error: ")]
    assert len(errors) == 1, err
    assert err.strip().splitlines()[-1] == errors[0]
    return errors[0]


@pytest.mark.slow
def test_round_trip_pull_predict_store_and_find_again(orthanc, models, tmp_path, capsys):
    from dicomweb_client.api import DICOMwebClient

    masked, seg_run, _ = models
    study, sources = upload_study(orthanc, tmp_path / "in")
    masks = tmp_path / "masks"
    rc, out, err = run_cli(
        capsys,
        masked,
        f"dicomweb+{orthanc.dicomweb}",
        "--study",
        study,
        "--store",
        "--segmenter",
        seg_run,
        "--save-masks",
        masks,
        "--format",
        "json",
    )
    assert rc == 0, err
    rows = json.loads(out)
    by_uid = {pydicom.dcmread(s).SOPInstanceUID: s for s in sources}
    assert sorted(r["path"].rsplit("/", 1)[1] for r in rows) == sorted(by_uid)  # the three frontal images
    assert all(r["path"].startswith(f"{orthanc.dicomweb}/studies/{study}/series/") for r in rows)
    assert "a lateral view (ViewPosition LL)" in err
    assert "not an image (Basic Text SR Storage)" in err
    assert f"stored 6 result object(s) in study {study}" in err

    # QIDO-RS finds the new series in the source study; WADO-RS gives back the SR and SEG objects
    client = DICOMwebClient(orthanc.dicomweb)
    series = {
        s["0020000E"]["Value"][0]: (s["00080060"]["Value"][0], s["00200011"]["Value"][0])
        for s in client.search_for_series(study)
    }
    found = sorted(v for v in series.values() if v[0] in ("SR", "SEG") and v[1] in (9001, 9002))
    assert found == [("SEG", 9002), ("SR", 9001)]
    rows_by_uid = {r["path"].rsplit("/", 1)[1]: r for r in rows}
    for uid, (modality, number) in series.items():
        if number not in (9001, 9002):
            continue
        for ds in client.retrieve_series(study, uid):
            if modality == "SR":
                ref = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
                source_uid = ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                f = tmp_path / "sr.dcm"
                ds.save_as(f, enforce_file_format=True)
                got = read_sr(f)
                assert got["probabilities"] == rows_by_uid[source_uid]["probabilities"]
                assert got["label"] == rows_by_uid[source_uid]["label"]
            else:
                seg = hd.seg.Segmentation.from_dataset(ds)
                ((_, _, source_uid),) = seg.get_source_image_uids()
                png = np.asarray(Image.open(masks / f"{source_uid}.png")) > 127
                np.testing.assert_array_equal(seg.pixel_array.astype(bool), png)
            assert ds.StudyInstanceUID == study

    # pulled again, the study's own results are skipped as such, not predicted on
    rc, out, err = run_cli(
        capsys,
        masked,
        f"dicomweb+{orthanc.dicomweb}/",
        "--study",
        study,
        "--segmenter",
        seg_run,
        "--format",
        "json",
    )
    assert rc == 0, err
    assert len(json.loads(out)) == 3
    assert "a cxrtl result (Segmentation Storage, series 9002)" in err
    assert "not an image (Comprehensive 3D SR Storage)" in err


def test_series_and_dicom_out_with_a_pulled_study(orthanc, models, tmp_path, capsys):
    _, _, plain = models
    study, sources = upload_study(orthanc, tmp_path / "in", extras=False)
    series = pydicom.dcmread(sources[0]).SeriesInstanceUID  # plain + MONOCHROME1 share it; the JPEG does not
    out_dir = tmp_path / "out"
    rc, out, err = run_cli(
        capsys,
        plain,
        f"dicomweb+{orthanc.dicomweb}",
        "--study",
        study,
        "--series",
        series,
        "--dicom-out",
        out_dir,
        "--format",
        "json",
    )
    assert rc == 0, err
    rows = json.loads(out)
    assert len(rows) == 2
    for r in rows:
        (sr,) = r["dicom"]
        assert Path(sr).name == r["path"].rsplit("/", 1)[1] + ".sr.dcm"
        assert read_sr(Path(sr))["probabilities"] == r["probabilities"]
    rc, _, err = run_cli(
        capsys, plain, f"dicomweb+{orthanc.dicomweb}", "--study", study, "--series", "1.2.3.4"
    )
    assert rc == 2 and "has no series 1.2.3.4" in one_line(err)


# ---------------------------------------------------------------------------------------- bad input
def test_bad_addresses_and_unknown_studies_are_one_line(orthanc, models, capsys):
    _, _, plain = models
    closed = orthanc_server.free_port()  # nothing listens there
    cases = [
        (
            [f"dicomweb+http://127.0.0.1:{closed}/dicom-web", "--study", "1.2.3"],
            "cannot reach the DICOMweb server",
        ),
        ([f"dicomweb+{orthanc.url}/no-such-root", "--study", "1.2.3"], "HTTP 404"),
        ([f"dicomweb+{orthanc.dicomweb}", "--study", "1.2.3.999"], "no study 1.2.3.999 on"),
        ([f"dicomweb+{orthanc.dicomweb}"], "needs --study UID"),
        (["dicomweb+http://", "--study", "1.2.3"], "is not a DICOMweb address"),
        (["dicomweb+http://127.0.0.1:notaport/x", "--study", "1.2.3"], "no valid port"),
    ]
    for argv, expected in cases:
        rc, out, err = run_cli(capsys, plain, *argv)
        assert rc == 2 and out == "", (argv, err)
        assert expected in one_line(err), (argv, err)


def test_a_token_protected_server_and_a_refused_stow(guarded, models, tmp_path, capsys, monkeypatch):
    _, _, plain = models
    study, _ = upload_study(guarded, tmp_path / "in", extras=False)
    address = f"dicomweb+{guarded.dicomweb}"

    rc, out, err = run_cli(capsys, plain, address, "--study", study)
    assert rc == 2 and out == ""
    line = one_line(err)
    assert "HTTP 403" in line and "--token" in line and "CXRTL_DICOMWEB_TOKEN" in line

    rc, out, err = run_cli(capsys, plain, address, "--study", study, "--token", TOKEN, "--format", "json")
    assert rc == 0, err
    assert len(json.loads(out)) == 3

    monkeypatch.setenv("CXRTL_DICOMWEB_TOKEN", TOKEN)  # the token from the environment; the STOW is refused
    rc, out, err = run_cli(capsys, plain, address, "--study", study, "--store", "--format", "json")
    assert rc == 2
    assert len(json.loads(out)) == 3  # the predictions are still given
    line = one_line(err)
    assert "STOW-RS" in line and "HTTP 403" in line
