"""DICOM decode cost: file to probabilities for a 2048x2048 16-bit radiograph, uncompressed and compressed.

One synthetic radiograph (smooth lungs and noise, 16 bits stored) is written as a PNG of its 8-bit display
(the baseline), an uncompressed DICOM, JPEG Lossless (process 14 SV1, through python-gdcm's encoder when
it is importable: pydicom has no JPEG Lossless encoder) and JPEG 2000 lossless (pydicom + pylibjpeg-openjpeg).
For each it reports the decode-to-grey time and the single-image time from file to probabilities
(DenseNet-121 at 224, eager, untrained weights), the files timed interleaved (``benchmarks/_timing.py``:
samples of at least 0.5 s, min and median). The last line is the slowest DICOM's median
file-to-probabilities time over the PNG's. Usage: python benchmarks/dicom.py [--samples N] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import Bench, interleaved, positive, ratio, ratio_note  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    bench = Bench("dicom")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples", type=positive, default=3, help="interleaved samples per file (default 3)"
    )
    parser.add_argument("--out", help="keep the files here (default: a temporary folder)")
    Bench.add_arguments(parser)
    args = parser.parse_args(argv)
    bench.start(args.threads)

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
            f"torch {torch.get_num_threads()} threads; {SIDE}x{SIDE}; {args.samples} interleaved samples per file"
        )
        decode = interleaved(
            {n: lambda p=p: load_gray(p, target_short_side=pp.resize_size) for n, p in files.items()},
            samples=args.samples,
        )
        total = interleaved(
            {n: lambda p=p: predictor.predict([p]) for n, p in files.items()}, samples=args.samples
        )
        print(
            f"{'file':<22} {'MB':>6} {'decode ms':>10} {'file->probs ms':>15} {'max |p - p_png|':>16}  (medians)"
        )
        for name, path in files.items():
            gap = float(np.abs(predictor.predict([path]) - reference).max())
            mb = path.stat().st_size / 1e6
            print(
                f"{name:<22} {mb:>6.1f} {decode[name].median * 1000:>10.1f} {total[name].median * 1000:>15.1f} "
                f"{gap:>16.1e}"
            )
        for name in files:
            print(f"{name}: decode {decode[name].describe()}; file to probabilities {total[name].describe()}")
        bench.timings(decode, prefix="decode ")
        bench.timings(total, prefix="file to probabilities ")
        png = total["PNG (8-bit display)"]
        dicoms = [n for n in total if n != "PNG (8-bit display)"]
        worst = max(dicoms, key=lambda n: total[n].median)
        return bench.headline(
            f"slowest DICOM ({worst}) vs PNG, file to probabilities",
            ratio(total[worst], png),
            ratio_note(total[worst], png),
            higher_is_better=False,
        )


if __name__ == "__main__":
    sys.exit(main())
