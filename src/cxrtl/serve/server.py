"""Start the server: pick the backend, check the network settings, bind, print the URL, run uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket

from ..errors import CxrtlError

log = logging.getLogger("cxrtl.serve")
TOKEN_ENV = "CXRTL_SERVE_TOKEN"


def require_extra() -> None:
    """A one-line error naming the extra when FastAPI, uvicorn or python-multipart is missing."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise CxrtlError(
            f"cxrtl serve needs FastAPI, uvicorn and python-multipart ({exc.name} is missing); "
            "install them with pip install 'cxrtl[serve]'"
        ) from None


def load_predictor(model: str | os.PathLike, backend: str = "auto", device: str = "auto", threads=None):
    """The Predictor for MODEL on ``backend`` (auto, torch, onnx): :meth:`Predictor.from_checkpoint`."""
    from ..inference.predict import Predictor

    return Predictor.from_checkpoint(model, device=device, threads=threads, backend=backend)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, insecure: bool) -> str | None:
    """The bearer token from CXRTL_SERVE_TOKEN; required off loopback unless ``insecure``."""
    token = os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(host):
        if not insecure:
            raise CxrtlError(
                f"--host {host} exposes the server beyond this machine without a token; set {TOKEN_ENV} "
                "(clients send 'Authorization: Bearer TOKEN'), or pass --insecure on a trusted network"
            )
        log.warning("serving on %s WITHOUT a token (--insecure): anyone who can reach it can use it", host)
    return token


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, so that a busy port is a one-line error and port 0 gives the real port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CxrtlError(
            f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(
    model: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "auto",
    max_upload_mb: float = 32,
    workers: int = 1,
    max_queue: int = 64,
    max_files: int = 64,
    insecure: bool = False,
    device: str = "auto",
    threads: int | None = None,
    segmenter: str | os.PathLike | None = None,
) -> int:
    """Load MODEL once and serve it until Ctrl-C; returns the exit code (0).

    ``segmenter``: a ``cxrtl segment train`` run that predicts the lung mask of each upload, so a model
    trained on masked images can be served.
    """
    for name, value in (("--workers", workers), ("--max-queue", max_queue), ("--max-files", max_files)):
        if value < 1:
            raise CxrtlError(f"{name} must be at least 1, not {value}")
    if not max_upload_mb > 0:
        raise CxrtlError(f"--max-upload-mb must be positive, not {max_upload_mb}")
    require_extra()
    token = resolve_token(host, insecure)
    import uvicorn

    from .app import create_app
    from .runner import in_memory_files_supported

    predictor = load_predictor(model, backend, device, threads)
    if segmenter:
        predictor.use_segmenter(segmenter)
    app = create_app(
        predictor,
        max_upload_mb=max_upload_mb,
        workers=workers,
        max_queue=max_queue,
        max_files=max_files,
        token=token,
    )
    if not in_memory_files_supported():
        log.warning(
            "no memfd on this system: uploads pass through a private temporary folder, deleted at once"
        )
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/"
    print(
        f"cxrtl serve: {predictor.source} ({', '.join(predictor.classes)}) at {url}  (Ctrl-C stops)",
        flush=True,
    )
    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised the Ctrl-C it caught
        pass
    finally:
        sock.close()
    print("cxrtl serve: stopped", flush=True)
    return 0
