"""``cxrtl predict``: class probabilities for images, folders and DICOM files (+ Grad-CAM overlays)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

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

Working with a PACS (the `pacs` extra): --dicom-out DIR writes, for each DICOM input, a Structured Report
(TID 1500: the predicted class, each probability, the prediction set and operating-point flag where the model
has them, the algorithm and model), a lung Segmentation when a segmenter drew the mask, and a Secondary
Capture of the Grad-CAM overlay with --cam; each joins the source's study in a new series. A PATH of the form
dicomweb+http://HOST:PORT/PATH with --study UID [--series UID] pulls the study with WADO-RS, predicts on its
frontal chest radiographs (others are skipped with their reason) and, with --store, sends the result
objects back with STOW-RS. Every object says "Research use only; not for diagnostic use".
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
    d = p.add_argument_group("PACS (DICOM results, DICOMweb)")
    d.add_argument(
        "--dicom-out",
        metavar="DIR",
        help="write each DICOM input's results as DICOM objects into DIR (SR; SEG with a segmenter; SC with --cam)",
    )
    d.add_argument(
        "--study", metavar="UID", help="with a dicomweb+http://... input: the StudyInstanceUID to pull"
    )
    d.add_argument("--series", metavar="UID", help="with --study: pull only this SeriesInstanceUID")
    d.add_argument(
        "--store", action="store_true", help="send the result objects back to the DICOMweb server (STOW-RS)"
    )
    d.add_argument(
        "--token",
        metavar="TOKEN",
        help="bearer token for the DICOMweb server (default: $CXRTL_DICOMWEB_TOKEN, which other users "
        "cannot see in the process list)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import tempfile

    from ..data.inputs import collect_inputs, find_masks
    from ..errors import CxrtlError
    from ..inference.predict import Predictor

    if args.batch_size < 1:
        raise CxrtlError(f"--batch-size must be at least 1, not {args.batch_size}")
    remote = _check_pacs_args(args)
    pacs = None
    if args.dicom_out or args.store:
        from ..inference.dicom_out import require_highdicom
        from ..inference.dicom_source import check_out_dir

        require_highdicom()
        if args.dicom_out:
            check_out_dir(Path(args.dicom_out))  # before any work: never predict into a file
    if remote:
        from ..inference.dicomweb import DicomWeb, token_from

        pacs = DicomWeb(args.paths[0], token_from(args.token))  # a malformed address fails here, offline
    predictor = Predictor.from_checkpoint(
        args.model, device=args.device, threads=args.threads, backend=args.backend
    )
    if args.segmenter:
        predictor.use_segmenter(args.segmenter, save_masks=args.save_masks)
    elif args.save_masks and predictor.segmenter is not None:  # the segmenter a bundle carries
        predictor.save_masks = Path(args.save_masks)
    elif args.save_masks:
        raise CxrtlError("--save-masks writes the masks of --segmenter; add --segmenter SEG_RUN")
    with contextlib.ExitStack() as stack:
        names: dict[str, str] = {}
        if pacs is not None:
            pulled = stack.enter_context(tempfile.TemporaryDirectory(prefix="cxrtl-dicomweb-"))
            images, names = _pull(pacs, args.study, args.series, Path(pulled))
        else:
            images = collect_inputs(args.paths)
        if not images:
            raise CxrtlError(
                "no images found in " + ", ".join(args.paths) + "; give PNG/JPEG/DICOM files or folders"
            )
        masks = find_masks(images, args.mask, args.mask_dir)
        writer = keeper = None
        if args.dicom_out or args.store:
            from ..inference.dicom_out import DicomWriter, ModelIdentity
            from ..inference.dicom_source import MaskKeeper

            out = args.dicom_out or stack.enter_context(tempfile.TemporaryDirectory(prefix="cxrtl-results-"))
            writer = DicomWriter(out, ModelIdentity.of(predictor, _model_name(args.model)))
            if predictor.segmenter is not None:
                keeper = MaskKeeper()
                stack.callback(keeper.close)
                predictor.mask_hook = keeper
        rows = predictor.predict_files(
            images,
            masks,
            batch_size=args.batch_size,
            cam_dir=args.cam,
            cam_class=args.cam_class,
            progress=args.progress,
        )
        written: dict[int, list] = {}
        if writer is not None:
            written = _write_dicom(writer, rows, keeper, names)
        for r in rows:  # a pulled instance is named by its WADO-RS address, not the temporary file
            r.path = names.get(r.path, r.path)
        if args.store and pacs is not None:
            objects = [ds for files in written.values() for _, ds in files]
            try:
                t0 = time.perf_counter()
                n = pacs.store(objects, args.study)
            except CxrtlError:
                sys.stdout.write(render(rows, predictor.classes, args.format, _dicom_paths(written, args)))
                raise
            print(
                f"cxrtl: stored {n} result object(s) in study {args.study} on {pacs.url} "
                f"({time.perf_counter() - t0:.1f} s)",
                file=sys.stderr,
            )
    sys.stdout.write(render(rows, predictor.classes, args.format, _dicom_paths(written, args)))
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


def _check_pacs_args(args: argparse.Namespace) -> bool:
    """The PACS options fit together; True when the input is a DICOMweb server."""
    from ..errors import CxrtlError
    from ..inference.dicomweb import is_dicomweb

    remote = any(is_dicomweb(p) for p in args.paths)
    if remote and len(args.paths) > 1:
        raise CxrtlError(
            "a dicomweb+http://... input is the only input of a run; predict local files in another"
        )
    if remote and not args.study:
        raise CxrtlError("a dicomweb+http://... input needs --study UID (the StudyInstanceUID to pull)")
    if not remote:
        given = [
            o for o, v in (("--study", args.study), ("--series", args.series), ("--store", args.store)) if v
        ]
        if given:
            raise CxrtlError(
                f"{'/'.join(given)} work with a DICOMweb input; give dicomweb+http://HOST:PORT/PATH as the input"
            )
    if args.series and not args.study:
        raise CxrtlError("--series needs --study")
    if remote and (args.mask or args.mask_dir):
        raise CxrtlError(
            "--mask/--mask-dir are for local files; a pulled study's masks come from --segmenter"
        )
    return remote


def _model_name(model: str) -> str:
    if "://" in model:
        return model
    path = Path(model).expanduser().resolve()
    return path.name if path.name not in ("best.safetensors", "best.json", "model.onnx") else path.parent.name


def _pull(pacs, study: str, series: str | None, folder: Path) -> tuple[list[Path], dict[str, str]]:
    """Retrieve the study, keep the instances the model can take as files; ``(paths, {file: address})``."""
    from ..errors import CxrtlError
    from ..inference.dicomweb import skip_reason

    t0 = time.perf_counter()
    datasets = pacs.retrieve(study, series)
    print(
        f"cxrtl: pulled {len(datasets)} instance(s) of study {study} from {pacs.url} "
        f"({time.perf_counter() - t0:.1f} s)",
        file=sys.stderr,
    )
    datasets.sort(key=lambda ds: (_int(ds.get("SeriesNumber")), _int(ds.get("InstanceNumber"))))
    paths: list[Path] = []
    names: dict[str, str] = {}
    skipped: list[str] = []
    for ds in datasets:
        sop = str(ds.get("SOPInstanceUID", "")) or f"instance-{len(paths) + len(skipped) + 1}"
        address = f"{pacs.url}/studies/{study}/series/{ds.get('SeriesInstanceUID', '?')}/instances/{sop}"
        reason = skip_reason(ds)
        if reason is not None:
            skipped.append(reason)
            print(f"cxrtl: note: skipped {address}: {reason}", file=sys.stderr)
            continue
        path = folder / f"{sop}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        names[str(path)] = address
    if datasets and not paths:
        raise CxrtlError(
            f"none of the {len(datasets)} instance(s) of study {study} is an image the model can take "
            f"({'; '.join(sorted(set(skipped)))}); choose another study or series"
        )
    return paths, names


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _write_dicom(writer, rows, keeper, names) -> dict[int, list]:
    """The DICOM objects of each predicted DICOM row; a row that cannot have them gets the error."""
    from ..errors import CxrtlError
    from ..inference.dicom_source import is_dicom_input, non_dicom_note, read_source

    written: dict[int, list] = {}
    not_dicom = []
    for i, r in enumerate(rows):
        if r.error is not None:
            continue
        if not is_dicom_input(r.path):
            not_dicom.append(r.path)
            continue
        try:
            source = read_source(r.path)
            mask = keeper.get(r.path) if keeper is not None else None
            stem = str(source.SOPInstanceUID) if r.path in names else Path(r.path).stem
            if writer.out is not None:
                written[i] = writer.write(source, r, mask, r.cam, stem=stem)
            else:
                written[i] = [(None, ds) for _, ds in writer.objects(source, r, mask, r.cam)]
        except CxrtlError as exc:
            r.error = str(exc)
        except Exception as exc:  # noqa: BLE001  (an odd header must not stop the other rows)
            r.error = f"{r.path}: cannot write its DICOM results ({type(exc).__name__}: {exc})"
    note = non_dicom_note(not_dicom)
    if note:
        print(f"cxrtl: note: {note}", file=sys.stderr)
    return written


def _dicom_paths(written: dict[int, list], args) -> dict[int, list[str]] | None:
    if not args.dicom_out:
        return None
    return {i: [str(p) for p, _ in files] for i, files in written.items()}


def render(rows, classes: list[str], fmt: str, dicom: dict[int, list[str]] | None = None) -> str:
    """Rows -> the text of one output format (JSON rows list their DICOM result files under ``dicom``)."""
    with_cam = any(r.cam is not None for r in rows)
    with_positive = any(r.positive is not None for r in rows)
    with_set = any(r.prediction_set is not None for r in rows)
    with_ood = any(r.ood is not None for r in rows)
    if fmt == "json":
        out = [r.to_dict() for r in rows]
        for i, files in (dicom or {}).items():
            out[i]["dicom"] = files
        return json.dumps(out, indent=2) + "\n"
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
