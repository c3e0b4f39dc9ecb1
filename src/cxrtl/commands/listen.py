"""``cxrtl listen``: a DICOM node that receives images by C-STORE, predicts each study, forwards its results."""

from __future__ import annotations

import argparse

from . import options

EPILOG = """\
A modality or PACS sends images to AE title --ae-title at --host:--port (default 127.0.0.1: this machine
only). A study that has received nothing for --settle seconds is predicted once (frontal chest radiographs;
others are skipped with their reason), and its result objects (an SR per image, a SEG with a segmenter) are
sent by C-STORE to --forward AE@HOST:PORT. One study at a time; at most --max-queue studies wait, more are
refused (status A700) so the sender retries. Received images are deleted once their results are sent,
unless --keep DIR. Needs the `pacs` extra and pynetdicom. Research tool, not a medical device: every object
says "Research use only; not for diagnostic use".
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "listen",
        help="a DICOM node: receive studies by C-STORE, predict, forward the results",
        description="Receive images by DICOM C-STORE, predict each study, send its results to a PACS.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    options.add_model(p)
    a("--ae-title", default="CXRTL", help="this node's AE title (default CXRTL)")
    a("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    a("--port", type=int, default=11112, help="DICOM port (default 11112)")
    a("--forward", required=True, metavar="AE@HOST:PORT", help="where the result objects go (C-STORE)")
    a("--settle", type=float, default=5.0, metavar="S", help="a study is complete after S quiet seconds (5)")
    a("--max-queue", type=int, default=4, metavar="N", help="studies waiting at most; more are refused (4)")
    a("--keep", metavar="DIR", help="keep each received study under DIR (default: deleted once sent)")
    a("--segmenter", metavar="SEG_RUN", help="predict lung masks (a masked model; its SEG is sent too)")
    options.add_device(p)
    options.add_backend(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import signal
    import sys
    import threading

    from ..errors import CxrtlError
    from ..inference.dicom_out import DicomWriter, ModelIdentity
    from ..inference.listener import Destination, Listener
    from ..inference.predict import Predictor

    forward = Destination.parse(args.forward)
    if args.settle < 0 or args.max_queue < 1:
        raise CxrtlError("--settle must be >= 0 and --max-queue >= 1")
    predictor = Predictor.from_checkpoint(
        args.model, device=args.device, threads=args.threads, backend=args.backend, segmenter=args.segmenter
    )
    writer = DicomWriter(None, ModelIdentity.of(predictor, _name(args.model)))
    node = Listener(predictor, writer, forward, args.ae_title, args.keep, args.settle, args.max_queue)
    node.start(args.host, args.port)
    print(
        f"cxrtl: listening as {args.ae_title} on {args.host}:{args.port}, forwarding to {args.forward}; "
        "Ctrl-C stops",
        file=sys.stderr,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):  # a timed wait lets SIGTERM and Ctrl-C in
            pass
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()
    return 0


def _name(model: str) -> str:
    from .predict import _model_name

    return _model_name(model)
