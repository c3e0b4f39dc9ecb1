"""``cxrtl serve``: a trained model behind a REST API and a web page (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse

from . import options

EPILOG = """\
MODEL is a run directory, a checkpoint (.safetensors/.json) or an .onnx file written by `cxrtl export`.
The API: GET /healthz, GET /v1/model, POST /v1/predict (multipart field `files`; ?cam=true adds Grad-CAM
overlays); its OpenAPI description at /openapi.json; the web page at /. Uploads stay in memory and are never
written to disk. Binding a non-loopback --host needs the environment variable CXRTL_SERVE_TOKEN of at least
16 characters (clients send `Authorization: Bearer TOKEN`; make one with
python -c "import secrets; print(secrets.token_urlsafe(32))"), or --insecure; without --tls-cert/--tls-key
the token crosses the network in clear text. Only the bound host and localhost names are accepted in Host,
and web pages of other sites may not POST (add one with --allow-origin). Research tool, not a medical device.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP: REST API and web page",
        description="Serve a trained cxrtl model to programs (REST API) and to people (a web page).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    options.add_model(p)
    a("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    a("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    options.add_backend(p)
    a("--max-upload-mb", type=float, default=32, metavar="MB", help="largest request body (default 32)")
    a("--workers", type=int, default=1, metavar="N", help="inference threads sharing the model (default 1)")
    a(
        "--max-queue",
        type=int,
        default=64,
        metavar="N",
        help="requests admitted at once once their body is in; more get 503 (default 64)",
    )
    a("--max-files", type=int, default=64, metavar="N", help="files per request (default 64)")
    a("--insecure", action="store_true", help="allow a non-loopback --host without a token (warns)")
    options.add_device(p)
    a(
        "--max-pixels-per-request",
        type=int,
        metavar="N",
        help="decoded pixels one request may cost, read from the headers; files past it get an error row "
        "(default 200000000, about 20 full-size radiographs)",
    )
    a(
        "--read-timeout",
        type=float,
        metavar="S",
        help="seconds within which a request body must arrive, else 408 (default 30)",
    )
    a(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also accept this name in the Host header (a reverse proxy's or DNS name); repeatable",
    )
    a(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages of this origin (https://host[:port]) POST to the API; repeatable",
    )
    a("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (with --tls-key)")
    a("--tls-key", metavar="PEM", help="the certificate's private key (unencrypted PEM)")
    a(
        "--segmenter",
        metavar="SEG_RUN",
        help="a `cxrtl segment train` run: predict each upload's lung mask, to serve a masked-input model",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..serve.server import serve

    return serve(
        args.model,
        host=args.host,
        port=args.port,
        backend=args.backend,
        max_upload_mb=args.max_upload_mb,
        workers=args.workers,
        max_queue=args.max_queue,
        max_files=args.max_files,
        insecure=args.insecure,
        device=args.device,
        threads=args.threads,
        segmenter=args.segmenter,
        max_pixels_per_request=args.max_pixels_per_request,
        read_timeout=args.read_timeout,
        allow_hosts=args.allow_host,
        allow_origins=args.allow_origin,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
