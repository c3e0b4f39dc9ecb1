"""``cxrtl export``: a checkpoint to a self-describing ONNX file that runs under onnxruntime without torch."""

from __future__ import annotations

import argparse

EPILOG = """\
The ONNX file takes uint8 grey images [N,1,S,S] (N dynamic) prepared like in training and outputs
`logits` and `probabilities`; classes, preprocessing and calibration temperature are in its metadata.
`cxrtl predict OUT.onnx IMAGES...` runs it with onnxruntime only.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (dynamic batch, metadata embedded)",
        description="Export a cxrtl model for deployment.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("model", metavar="MODEL", help="run dir or checkpoint (.safetensors/.json)")
    a("--onnx", metavar="OUT.onnx", required=True, help="ONNX file to write")
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference.export import export_onnx

    out = export_onnx(args.model, args.onnx, exporter=args.exporter, opset=args.opset, verify=args.verify)
    print(f"wrote {out}")
    return 0
