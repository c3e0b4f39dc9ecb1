"""DICOM decode cost: file to probabilities for a 2048x2048 16-bit radiograph, uncompressed and compressed.

One synthetic radiograph (smooth lungs and noise, 16 bits stored) is written as a PNG of its 8-bit display
(the baseline), an uncompressed DICOM, JPEG Lossless (process 14 SV1, through python-gdcm's encoder when
it is importable: pydicom has no JPEG Lossless encoder) and JPEG 2000 lossless (pydicom + pylibjpeg-openjpeg).
For each it reports the median decode-to-grey time and the median single-image time from file to
probabilities (DenseNet-121 at 224, eager, untrained weights). The last line is the slowest DICOM's
file-to-probabilities time over the PNG's. Usage: python benchmarks/dicom.py [--repeats N] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SIDE = 2048


def radiograph16(side: int = SIDE) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side] / side
    lungs = np.exp(-(((xx - 0.32) / 0.14) ** 2 + ((yy - 0.5) / 0.28) ** 2))
    lungs += np.exp(-(((xx - 0.68) / 0.14) ** 2 + ((yy - 0.5) / 0.28) ** 2))
    img = 12000 + 36000 * lungs + rng.normal(0, 300, (side, side))
    return np.clip(img, 0, 65535).astype(np.uint16)


def write_files(folder: Path) -> dict[str, Path]:
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

    from cxrtl.data.dicom import load_dicom_gray

    raw = radiograph16()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, generate_uid(), "DX"
    ds.set_pixel_data(raw, photometric_interpretation="MONOCHROME2", bits_stored=16)
    files = {"uncompressed DICOM": folder / "plain.dcm"}
    ds.save_as(files["uncompressed DICOM"], enforce_file_format=True)
    files["PNG (8-bit display)"] = folder / "display.png"
    Image.fromarray(load_dicom_gray(files["uncompressed DICOM"])).save(files["PNG (8-bit display)"])
    if jpeg_lossless(files["uncompressed DICOM"], folder / "jpegll.dcm"):
        files["JPEG Lossless DICOM"] = folder / "jpegll.dcm"
    ds.compress(JPEG2000Lossless)
    files["JPEG 2000 DICOM"] = folder / "j2k.dcm"
    ds.save_as(files["JPEG 2000 DICOM"])
    return files


def jpeg_lossless(src: Path, dst: Path) -> bool:
    """JPEG Lossless SV1 through GDCM's encoder, if python-gdcm is importable (pydicom cannot encode it)."""
    try:
        import gdcm
    except ImportError:
        print("JPEG Lossless: skipped (python-gdcm not importable; only its encoder is needed)")
        return False
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    return bool(writer.Write())


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="keep the files here (default: a temporary folder)")
    args = parser.parse_args()

    import torch

    from cxrtl.checkpoint import save_checkpoint
    from cxrtl.data.image_io import load_gray
    from cxrtl.data.preprocess import Preprocess
    from cxrtl.inference.predict import Predictor
    from cxrtl.transfer import create_model

    with tempfile.TemporaryDirectory(prefix="cxrtl-bench-") as tmp:
        folder = Path(args.out) if args.out else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        files = write_files(folder)
        torch.manual_seed(0)
        pp = Preprocess(input="raw", channels=3, image_size=224)
        model = create_model("densenet121", classes=["COVID", "Normal"], in_chans=3, init="none")
        save_checkpoint(folder / "run" / "best", model, {"preprocess": pp.to_dict()})
        predictor = Predictor.from_checkpoint(folder / "run")
        reference = predictor.predict([files["PNG (8-bit display)"]])
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; {SIDE}x{SIDE}, median of {args.repeats}"
        )
        print(f"{'file':<22} {'MB':>6} {'decode ms':>10} {'file->probs ms':>15} {'max |p - p_png|':>16}")
        total = {}
        for name, path in files.items():
            decode = median_ms(lambda p=path: load_gray(p, target_short_side=pp.resize_size), args.repeats)
            total[name] = median_ms(lambda p=path: predictor.predict([p]), args.repeats)
            gap = float(np.abs(predictor.predict([path]) - reference).max())
            mb = path.stat().st_size / 1e6
            print(f"{name:<22} {mb:>6.1f} {decode:>10.1f} {total[name]:>15.1f} {gap:>16.1e}")
        png = total.pop("PNG (8-bit display)")
        worst = max(total, key=total.get)
        print(f"slowest DICOM ({worst}) vs PNG, file to probabilities: {total[worst] / png:.2f}x")


if __name__ == "__main__":
    main()
