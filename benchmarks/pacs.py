"""DICOM results and a PACS round trip: what writing SR + SEG costs against predicting, and pull-predict-store.

1. One 2048x2048 16-bit DX radiograph, a lung-masked DenseNet-121 (224 px) with the default lung U-Net:
   the time to predict it (file to probabilities, its mask predicted on the way) against the time to build
   and write its SR and SEG (``--dicom-out``), timed interleaved (``benchmarks/_timing.py``: samples of at
   least 0.5 s, min and median); the first (cold) write is printed too. Headline = write / predict, the ratio
   of the medians: at most 1 means writing DICOM costs no more than the prediction.
2. With Debian's orthanc + orthanc-dicomweb installed: a study of 1 and of 20 such radiographs uploaded to
   a fresh Orthanc, then ``cxrtl predict dicomweb+http://... --study UID --store`` timed end to end in this
   process (model load, WADO-RS pull, prediction, SR + SEG building, STOW-RS).

Untrained weights: speed does not depend on them. Usage: PYTHONPATH=src python benchmarks/pacs.py
[--samples N] [--threads N] [--out DIR] [--side PX]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the Orthanc launcher of the tests
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Bench, interleaved, positive, ratio  # noqa: E402


def radiograph16(side: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    lungs = np.exp(-(((xx - 0.32) / 0.14) ** 2 + ((yy - 0.5) / 0.28) ** 2))
    lungs += np.exp(-(((xx - 0.68) / 0.14) ** 2 + ((yy - 0.5) / 0.28) ** 2))
    img = 12000 + 36000 * lungs + rng.normal(0, 300, (side, side))
    return np.clip(img, 0, 65535).astype(np.uint16)


def write_dx(path: Path, side: int, study: str, series: str, number: int) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Bench^Mark", "B-1", "", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = (
        "20260101",
        "",
        "",
        "",
        "",
    )
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DX", 1, number
    ds.BodyPartExamined, ds.ViewPosition, ds.PatientOrientation = "CHEST", "PA", ["A", "F"]
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.set_pixel_data(radiograph16(side, number), photometric_interpretation="MONOCHROME2", bits_stored=16)
    ds.WindowCenter, ds.WindowWidth = 30000, 40000
    ds.save_as(path, enforce_file_format=True)
    return path


def make_models(folder: Path) -> tuple[Path, Path]:
    import torch

    from cxrtl.checkpoint import save_checkpoint
    from cxrtl.data.preprocess import Preprocess
    from cxrtl.segmentation.model import DECODER_CHANNELS, DEFAULT_ENCODER, build_segmenter, save_segmenter
    from cxrtl.transfer import create_model

    torch.manual_seed(0)
    model = create_model("densenet121", ["NORMAL", "PNEUMONIA"], 3, init="none")
    run = folder / "run"
    run.mkdir(parents=True)
    save_checkpoint(run / "best", model, {"preprocess": Preprocess("masked", 3, 224).to_dict(), "epoch": 1})
    seg = folder / "seg"
    seg.mkdir()
    meta = {
        "encoder": DEFAULT_ENCODER,
        "in_chans": 1,
        "decoder_channels": DECODER_CHANNELS,
        "image_size": 256,
    }
    save_segmenter(seg / "best", build_segmenter(DEFAULT_ENCODER, 1, False), meta)
    return run, seg


def write_vs_predict(run: Path, seg: Path, folder: Path, side: int, samples: int, bench: Bench) -> float:
    from pydicom.uid import generate_uid

    from cxrtl.inference.dicom_out import DicomWriter, ModelIdentity
    from cxrtl.inference.dicom_source import MaskKeeper, read_source
    from cxrtl.inference.predict import Predictor

    src = write_dx(folder / "one.dcm", side, generate_uid(), generate_uid(), 1)
    t0 = time.perf_counter()
    predictor = Predictor.from_checkpoint(run, segmenter=seg)
    keeper = MaskKeeper()
    predictor.mask_hook = keeper
    rows = predictor.predict_files([src])  # warm-up (and the row and mask to write)
    cold_predict = time.perf_counter() - t0
    writer = DicomWriter(folder / "out", ModelIdentity.of(predictor, "bench"))
    row, mask = rows[0], keeper.get(str(src))

    def write() -> None:
        source = read_source(src)
        for kind, ds in writer.objects(source, row, mask):
            with io.BytesIO() as buf:
                ds.save_as(buf, enforce_file_format=True)
                assert kind in ("SR", "SEG")

    t0 = time.perf_counter()
    write()
    cold = time.perf_counter() - t0
    t = interleaved({"predict": lambda: predictor.predict_files([src]), "write": write}, samples=samples)
    keeper.close()
    bench.timings(t)
    print(f"one {side}x{side} 16-bit DX, masked densenet121 224 px + lung U-Net 256 px, CPU:")
    print(f"  predict (file to probabilities, mask included): {t['predict'].describe()}")
    print(f"  write SR + SEG: {t['write'].describe()}")
    print(
        f"  first in a process: load model + predict {cold_predict * 1000:.0f} ms, write SR + SEG (loading "
        f"highdicom and its IOD tables) {cold * 1000:.0f} ms: {cold / cold_predict:.2f}"
    )
    return ratio(t["write"], t["predict"])


def round_trip(run: Path, seg: Path, folder: Path, side: int) -> None:
    from pydicom.uid import generate_uid

    import orthanc_server
    from cxrtl.cli import main

    if orthanc_server.missing():
        print(f"round trip skipped: {orthanc_server.missing()}")
        return
    with orthanc_server.Orthanc(folder / "orthanc") as server:
        for n in (1, 20):
            study, series = generate_uid(), generate_uid()
            for i in range(n):
                f = write_dx(folder / f"s{n}-{i}.dcm", side, study, series, i + 1)
                server.upload(f)
                f.unlink()
            argv = ["predict", str(run), f"dicomweb+{server.dicomweb}", "--study", study, "--store"]
            argv += ["--segmenter", str(seg), "--no-progress", "--format", "csv"]
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
                rc = main(argv)
            dt = time.perf_counter() - t0
            assert rc == 0, err.getvalue()
            notes = [
                x.split(" (")[-1].rstrip(")")
                for x in err.getvalue().splitlines()
                if "pulled" in x or "stored" in x
            ]
            print(
                f"  Orthanc round trip (pull, predict, store SR + SEG), {n:2d} image(s): {dt:.1f} s "
                f"(pull {notes[0]}, store {notes[1]})"
            )


def main(argv: list[str] | None = None) -> int:
    bench = Bench("pacs")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=positive, default=9, help="interleaved samples per side (default 9)")
    ap.add_argument("--side", type=positive, default=2048, help="radiograph side in pixels (default 2048)")
    ap.add_argument("--out", help="work folder (default: a temporary one)")
    Bench.add_arguments(ap)
    args = ap.parse_args(argv)
    bench.start(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.out or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        run, seg = make_models(folder / "models")
        write_ratio = write_vs_predict(run, seg, folder, args.side, args.samples, bench)
        round_trip(run, seg, folder, args.side)
    note = "ratio of medians, write SR + SEG / predict; at most 1: writing costs no more than predicting"
    return bench.headline("DICOM write cost", write_ratio, note, higher_is_better=False)


if __name__ == "__main__":
    sys.exit(main())
