"""``cxrtl export``: a run to a self-describing ONNX file (fp32 or int8), or to a bundle with a model card."""

from __future__ import annotations

import argparse

from . import options

EPILOG = """\
The ONNX file takes uint8 grey images [N,1,S,S] (N dynamic) prepared like in training and outputs
`logits` and `probabilities`; classes, preprocessing and calibration temperature are in its metadata.
`cxrtl predict OUT.onnx IMAGES...` runs it with onnxruntime only.

--bundle DIR writes the best checkpoint, model.onnx, config.yaml, metrics.json (from RUN/test/metrics.json
when the run was evaluated), a generated model card README.md and bundle.json (SHA-256 of every file).
`cxrtl predict DIR`, `cxrtl evaluate DIR` and `cxrtl push DIR` take it.

--int8 quantizes statically with onnxruntime (QDQ, per-channel weights), calibrated on images of the run's
validation split found in --calibration-data, and compares int8 with fp32 on its test split.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a run to ONNX (fp32 or int8) or to a bundle with a model card",
        description="Export a cxrtl model for deployment or sharing.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    options.add_model(p, help="run directory, bundle or checkpoint (.safetensors/.json; --onnx only)")
    a("--onnx", metavar="OUT.onnx", help="ONNX file to write")
    a("--bundle", metavar="DIR", help="bundle folder to write (new, empty, or an existing bundle)")
    a("--int8", action="store_true", help="statically quantize to int8 (needs --calibration-data)")
    a("--calibration-data", metavar="ROOT", help="dataset the run was trained on (its val split calibrates)")
    a(
        "--calibration-images",
        type=int,
        default=200,
        metavar="N",
        help="validation images to calibrate on [200]",
    )
    a("--metrics", metavar="FILE", help="test metrics.json for the card (default RUN/test/metrics.json)")
    a("--license", default="other", metavar="ID", help="license in the card's metadata [other]")
    a(
        "--segmenter",
        metavar="SEG_RUN",
        help="with --bundle: carry this lung segmenter, so a masked model predicts its own masks",
    )
    a(
        "--no-leakage-check",
        dest="leakage_check",
        action="store_false",
        help="skip hashing the split for the card",
    )
    a(
        "--exporter",
        choices=("auto", "dynamo", "torchscript"),
        default="auto",
        help="torch ONNX exporter (default auto: dynamo, falling back to torchscript)",
    )
    a("--opset", type=int, default=18, metavar="N", help="ONNX opset (default 18)")
    a(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the onnxruntime-vs-PyTorch check after export",
    )
    options.add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import CxrtlError

    if not args.onnx and not args.bundle:
        raise CxrtlError("nothing to write; give --onnx OUT.onnx or --bundle DIR")
    if args.segmenter and not args.bundle:
        raise CxrtlError("--segmenter is carried by a bundle; add --bundle DIR")
    if args.int8 and not args.calibration_data:
        raise CxrtlError("--int8 needs --calibration-data ROOT (the dataset the run was trained on)")
    if args.calibration_data and not args.int8:
        raise CxrtlError("--calibration-data is only used with --int8; add --int8 or leave it out")
    if args.bundle:
        _bundle(args)
    if args.onnx:
        _onnx(args)
    return 0


def _bundle(args: argparse.Namespace) -> None:
    from ..inference.bundle import make_bundle

    meta = make_bundle(
        args.model,
        args.bundle,
        metrics=args.metrics,
        int8=args.int8,
        calibration_data=args.calibration_data,
        calibration_images=args.calibration_images,
        leakage_check=args.leakage_check,
        license_id=args.license,
        exporter=args.exporter,
        opset=args.opset,
        verify=args.verify,
        progress=args.progress,
        segmenter=args.segmenter,
    )
    if meta["int8"]:
        _print_int8(meta["int8"])
    evaluated = "" if meta["evaluated"] else " (never evaluated: the card says so)"
    print(f"wrote bundle {args.bundle}: {', '.join(meta['files'])}{evaluated}")


def _onnx(args: argparse.Namespace) -> None:
    from ..inference.export import export_onnx

    if not args.int8:
        print(
            f"wrote {export_onnx(args.model, args.onnx, exporter=args.exporter, opset=args.opset, verify=args.verify)}"
        )
        return
    _onnx_int8(args)


def _onnx_int8(args: argparse.Namespace) -> None:
    import tempfile
    from pathlib import Path

    from ..errors import CxrtlError
    from ..inference.export import export_onnx
    from ..inference.quantize import quantize_run

    run_dir = Path(args.model)
    if not (run_dir / "split.csv").is_file():
        raise CxrtlError(f"--int8 needs a run directory with its split.csv, not {run_dir}")
    if Path(args.onnx).suffix.lower() != ".onnx":
        raise CxrtlError(f"ONNX output {args.onnx} should end in .onnx; e.g. --onnx model.onnx")
    with tempfile.TemporaryDirectory(prefix="cxrtl-fp32-") as tmp:
        fp32 = export_onnx(
            run_dir, Path(tmp) / "fp32.onnx", exporter=args.exporter, opset=args.opset, verify=args.verify
        )
        result = quantize_run(
            run_dir,
            fp32,
            Path(args.onnx),
            args.calibration_data,
            args.calibration_images,
            run_dir / "split.csv",
            args.progress,
        )
    _print_int8(result)
    print(f"wrote {args.onnx}")


def _print_int8(q: dict) -> None:
    print(
        f"int8 vs fp32 on {q['test_images']} test images: accuracy {q['accuracy_int8']:.4f} vs "
        f"{q['accuracy_fp32']:.4f} ({100 * q['accuracy_diff']:+.1f} points), max probability difference "
        f"{q['max_prob_diff']:.4f}, labels agree {100 * q['label_agreement']:.1f}%, int8 "
        f"{q['speedup']:.2f}x as fast on {q['speed_cpu']}"
    )
    if not q["int8_dot_product"]:
        print(f"note: {q['speed_expectation']}")
