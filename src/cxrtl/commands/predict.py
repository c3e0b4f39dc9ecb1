"""``cxrtl predict``: class probabilities for images, folders and DICOM files (+ Grad-CAM overlays)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys

from . import options

EPILOG = """\
MODEL is a run directory (its best checkpoint), a bundle (`cxrtl export --bundle`), a .safetensors/.json
checkpoint, an .onnx file written by `cxrtl export`, or hf://OWNER/NAME[@REVISION] (a bundle on the Hub).
The model's decision record (temperature, operating point, conformal sets, segmenter) is applied whichever
backend runs it: --backend onnx on a bundle uses its model.onnx (and segmenter.onnx) without torch.
`label` (and, in JSON, `pred`) is the predicted class, the argmax. After
`cxrtl evaluate --positive CLASS`, each row also flags P(CLASS) >= the threshold chosen there
(JSON `positive`: {class, threshold, flag}; CSV/table columns positive_threshold, positive_flag).
After `cxrtl evaluate --conformal ALPHA`, each row also has its conformal prediction set (JSON list;
CSV/table classes joined by |). An empty set is written `(empty)` (JSON `[]`): no class is plausible at
coverage 1 - ALPHA, a reason to look at the image, not a prediction; `label` still shows the argmax.
A file that cannot be read gets a row with its error and the others continue; the exit
status is 1 if any file failed. A model trained on lung-masked images needs --mask or --mask-dir.
Research tool, not a medical device.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict classes of radiographs (PNG/JPEG/DICOM files or folders)",
        description="Apply a trained cxrtl model to chest radiographs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    options.add_model(p)
    a("paths", metavar="PATH", nargs="+", help="image file (PNG/JPEG/DICOM...) or folder of them")
    options.add_format(p, ("table", "json", "csv"), "table")
    a("--batch-size", type=int, default=16, metavar="N", help="images per forward pass (default 16)")
    a("--cam", metavar="DIR", help="write a Grad-CAM overlay PNG per image into DIR (PyTorch models only)")
    a("--cam-class", metavar="CLASS", help="class for Grad-CAM (name or index; default: the predicted one)")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--mask", metavar="PATH", help="lung mask of the (single) image")
    m.add_argument("--mask-dir", metavar="DIR", help="folder of lung masks named like their images")
    a("--segmenter", metavar="SEG_RUN", help="predict lung masks for a masked model (--mask still wins)")
    a("--save-masks", metavar="DIR", help="with --segmenter: write the masks used, as <image stem>.png")
    options.add_device(p)
    options.add_backend(p)
    options.add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data.inputs import collect_inputs, find_masks
    from ..errors import CxrtlError
    from ..inference.predict import Predictor

    if args.batch_size < 1:
        raise CxrtlError(f"--batch-size must be at least 1, not {args.batch_size}")
    predictor = Predictor.from_checkpoint(
        args.model, device=args.device, threads=args.threads, backend=args.backend
    )
    if args.segmenter:
        predictor.use_segmenter(args.segmenter, save_masks=args.save_masks)
    elif args.save_masks and predictor.segmenter is not None:  # the segmenter a bundle carries
        predictor.save_masks = Path(args.save_masks)
    elif args.save_masks:
        raise CxrtlError("--save-masks writes the masks of --segmenter; add --segmenter SEG_RUN")
    images = collect_inputs(args.paths)
    if not images:
        raise CxrtlError(
            "no images found in " + ", ".join(args.paths) + "; give PNG/JPEG/DICOM files or folders"
        )
    masks = find_masks(images, args.mask, args.mask_dir)
    rows = predictor.predict_files(
        images,
        masks,
        batch_size=args.batch_size,
        cam_dir=args.cam,
        cam_class=args.cam_class,
        progress=args.progress,
    )
    sys.stdout.write(render(rows, predictor.classes, args.format))
    unlike = sum(bool(r.ood and r.ood["flag"]) for r in rows)
    if unlike:
        print(
            f"cxrtl: {unlike} of {len(rows)} image(s) are unlike the chest radiographs the model was trained "
            "on (ood flag); their predictions are not meaningful",
            file=sys.stderr,
        )
    failed = sum(r.error is not None for r in rows)
    if failed:
        print(f"cxrtl: {failed} of {len(rows)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def render(rows, classes: list[str], fmt: str) -> str:
    """Rows -> the text of one output format."""
    with_cam = any(r.cam is not None for r in rows)
    with_positive = any(r.positive is not None for r in rows)
    with_set = any(r.prediction_set is not None for r in rows)
    with_ood = any(r.ood is not None for r in rows)
    if fmt == "json":
        return json.dumps([r.to_dict() for r in rows], indent=2) + "\n"
    header = ["path", "label", *classes] + (["prediction_set"] if with_set else [])
    if with_positive:
        header += ["positive_threshold", "positive_flag"]
    if with_ood:
        header += ["ood_score", "ood_flag"]
    if with_cam:
        header += ["cam", "lung_fraction", "lung_share"]
    header.append("error")
    table = []
    for r in rows:
        probs = [(f"{r.probabilities[c]:.4f}" if r.probabilities else "") for c in classes]
        cells = [r.path, r.label or "", *probs] + ([_set_cell(r.prediction_set)] if with_set else [])
        if with_positive:
            cells += _positive_cells(r.positive)
        if with_ood:
            cells += (
                ["", ""] if r.ood is None else [f"{r.ood['score']:.4g}", "yes" if r.ood["flag"] else "no"]
            )
        if with_cam:
            cells += [r.cam or ""] + [
                "" if v is None else f"{v:.3f}" for v in (r.lung_fraction, r.lung_share)
            ]
        cells.append(r.error or "")
        table.append(cells)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(table)
        return buf.getvalue()
    if not any(r.error for r in rows):  # no empty error column in a clean table
        header, table = header[:-1], [t[:-1] for t in table]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *table]]
    return "\n".join(lines) + "\n"


def _set_cell(members: list[str] | None) -> str:
    """A row's conformal set as one cell: classes joined by |, the empty-set marker, or blank (no set)."""
    from ..decisions import EMPTY_SET

    if members is None:  # an error row, or a model without conformal sets
        return ""
    return "|".join(members) if members else EMPTY_SET


def _positive_cells(positive: dict | None) -> list[str]:
    """``[threshold, flag]`` cells of a row's stored-operating-point flag (empty for an error row)."""
    if positive is None:
        return ["", ""]
    return [f"{positive['threshold']:.4f}", "yes" if positive["flag"] else "no"]
