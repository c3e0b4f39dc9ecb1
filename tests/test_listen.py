"""`cxrtl listen`: a DICOM node. Orthanc sends a study by C-STORE; the node predicts it and C-STOREs the SR and
SEG objects back to Orthanc, where they join the study."""

from __future__ import annotations

import io
import time

import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")
pytest.importorskip("pynetdicom")

import orthanc_server
from cxrtl.cli import main
from cxrtl.data.preprocess import Preprocess
from helpers import make_segmenter_run
from test_dicom_out import read_sr, source_dicom, three_sources
from test_predict import make_run, radiograph

pytestmark = pytest.mark.skipif(orthanc_server.missing() is not None, reason=str(orthanc_server.missing()))


@pytest.mark.slow
def test_orthanc_sends_a_study_and_gets_the_results_back(tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    from pydicom.uid import generate_uid

    from cxrtl.inference.dicom_out import DicomWriter, ModelIdentity
    from cxrtl.inference.listener import Destination, Listener
    from cxrtl.inference.predict import Predictor

    run = make_run(tmp_path / "run", Preprocess(input="masked", channels=3, image_size=64), seed=2)
    seg = make_segmenter_run(tmp_path / "seg")
    port = orthanc_server.free_port()
    peers = {"cxrtl": ["CXRTL", "127.0.0.1", port]}
    with orthanc_server.Orthanc(tmp_path / "orthanc", modalities=peers) as pacs:
        study = generate_uid()
        sources = three_sources(tmp_path / "in", study)
        lateral = source_dicom(
            tmp_path / "in" / "lat.dcm", radiograph(64, 64, seed=9), study=study, view="LL"
        )
        for f in [*sources, lateral]:
            pacs.upload(f)
        predictor = Predictor.from_checkpoint(run, segmenter=seg)
        writer = DicomWriter(None, ModelIdentity.of(predictor, "run"))
        forward = Destination("ORTHANC", "127.0.0.1", pacs.dicom_port)
        node = Listener(predictor, writer, forward, keep=tmp_path / "keep", settle=5.0).start(
            "127.0.0.1", port
        )
        try:
            (found,) = _lookup(pacs, study)
            pacs.post("/modalities/cxrtl/store", {"Resources": [found], "Synchronous": True})
            deadline = time.monotonic() + 180
            while not node.done and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            node.stop()
        (done,) = node.done
        assert "error" not in done, done
        assert len(done["rows"]) == 3 and done["sent"] == 6, done
        assert any("lateral view" in s for s in done["skipped"])
        by_uid = {r["path"].rsplit("/", 1)[1].removesuffix(".dcm"): r for r in done["rows"]}
        series = pacs.get(f"/studies/{found}/series")
        kinds = sorted(s["MainDicomTags"]["Modality"] for s in series)
        assert kinds == ["CR", "DX", "DX", "SEG", "SR"]  # the lateral has a series of its own
        (sr_series,) = [s for s in series if s["MainDicomTags"]["Modality"] == "SR"]
        for instance in sr_series["Instances"]:
            data = pacs._request_raw(f"/instances/{instance}/file")
            f = tmp_path / "sr.dcm"
            f.write_bytes(data)
            ds = pydicom.dcmread(io.BytesIO(data))
            ref = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
            uid = ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            assert read_sr(f)["probabilities"] == by_uid[uid]["probabilities"]
        assert len(list((tmp_path / "keep" / study).glob("*.dcm"))) == 4  # --keep: what was received


def _lookup(pacs, study: str) -> list[str]:
    import json
    import urllib.request

    req = urllib.request.Request(pacs.url + "/tools/lookup", data=study.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return [x["ID"] for x in json.loads(resp.read()) if x["Type"] == "Study"]


def test_a_bad_forward_address_is_one_line(tmp_path, capsys):
    run = make_run(tmp_path / "run", Preprocess(input="raw", channels=1, image_size=32))
    assert main(["listen", str(run), "--forward", "ORTHANC-localhost-4242"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("cxrtl: error: --forward") and "AE@HOST:PORT" in line


def test_a_full_queue_refuses_with_out_of_resources(tmp_path):
    from pydicom.uid import generate_uid
    from pynetdicom import AE

    from cxrtl.inference.dicom_out import DicomWriter, ModelIdentity
    from cxrtl.inference.listener import OUT_OF_RESOURCES, Destination, Listener
    from cxrtl.inference.predict import Predictor

    run = make_run(tmp_path / "run", Preprocess(input="raw", channels=1, image_size=32))
    predictor = Predictor.from_checkpoint(run)
    writer = DicomWriter(None, ModelIdentity.of(predictor, "run"))
    port = orthanc_server.free_port()
    # one study may wait; a long settle keeps the first one waiting while the second arrives
    node = Listener(predictor, writer, Destination("NOWHERE", "127.0.0.1", 9), settle=600, max_queue=1)
    node.start("127.0.0.1", port)
    try:
        a = pydicom.dcmread(
            source_dicom(tmp_path / "a.dcm", radiograph(40, 40, seed=1), study=generate_uid())
        )
        b = pydicom.dcmread(
            source_dicom(tmp_path / "b.dcm", radiograph(40, 40, seed=2), study=generate_uid())
        )
        ae = AE(ae_title="SENDER")
        ae.add_requested_context(a.SOPClassUID, a.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="CXRTL")
        assert assoc.is_established
        assert assoc.send_c_store(a).Status == 0
        assert assoc.send_c_store(b).Status == OUT_OF_RESOURCES  # the sender is told to retry later
        assoc.release()
        assert [p.name for p in node._work.iterdir()] == [a.StudyInstanceUID]
    finally:
        node.stop()
    assert not node._work.exists()  # nothing received is left behind
