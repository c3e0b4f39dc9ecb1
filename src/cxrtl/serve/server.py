"""Start the server: pick the backend, check the network settings, bind, print the URL, run uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from pathlib import Path

from ..errors import CxrtlError

log = logging.getLogger("cxrtl.serve")
TOKEN_ENV = "CXRTL_SERVE_TOKEN"
MIN_TOKEN = 16  # characters, off loopback
MAKE_TOKEN = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this
HEADER_TIMEOUT_S = 10  # a new connection (or the next request on one) must send its headers within this
MAX_HEADER_BYTES = 16 * 1024  # request line + headers; more is answered 400 by h11


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
    """The bearer token from CXRTL_SERVE_TOKEN; required off loopback unless ``insecure``, and then at
    least :data:`MIN_TOKEN` characters long."""
    token = os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(host):
        if not insecure:
            raise CxrtlError(
                f"--host {host} exposes the server beyond this machine without a token; set {TOKEN_ENV} "
                f"(clients send 'Authorization: Bearer TOKEN'; make one with {MAKE_TOKEN}), or pass "
                "--insecure on a trusted network"
            )
        log.warning("serving on %s WITHOUT a token (--insecure): anyone who can reach it can use it", host)
    if token is not None and not is_loopback(host) and len(token) < MIN_TOKEN:
        raise CxrtlError(
            f"{TOKEN_ENV} has {len(token)} characters, too short to guess-proof a server on --host {host}; "
            f"use at least {MIN_TOKEN}, for example one made with {MAKE_TOKEN}"
        )
    return token


def host_names(host: str) -> list[str]:
    """The ``Host`` names a client of a server bound to ``host`` may use (localhost names come on top).

    A wildcard address (0.0.0.0, ::) answers on every interface, so this machine's name and addresses are
    accepted; any other name (a reverse proxy's) must be added with --allow-host.
    """
    try:
        wildcard = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        wildcard = False
    if not wildcard:
        return [host.strip("[]")]
    names = {socket.gethostname(), socket.getfqdn()}
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            names.add(str(info[4][0]))
    except OSError:
        pass
    return sorted(n for n in names if n)


def tls_files(cert: str | os.PathLike | None, key: str | os.PathLike | None) -> tuple[str, str] | None:
    """The certificate and key to serve HTTPS with, checked now so that a bad pair is a one-line error."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise CxrtlError("--tls-cert and --tls-key go together; give both (PEM files) or neither")
    import ssl

    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).is_file():
            raise CxrtlError(f"{flag} {path} does not exist; give a PEM file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, ValueError) as exc:
        raise CxrtlError(
            f"cannot use --tls-cert {cert} with --tls-key {key} ({exc.__class__.__name__}: "
            f"{getattr(exc, 'reason', None) or exc}); give a PEM certificate and its unencrypted private key"
        ) from None
    return str(cert), str(key)


def protocol_class():
    """uvicorn's h11 protocol with a header deadline: a connection that has not sent a request's headers
    within :data:`HEADER_TIMEOUT_S` (a slowloris, or a socket opened and left idle) is closed.

    uvicorn's own keep-alive timeout starts only after a first response, and any byte received cancels it.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()

        def connection_lost(self, exc) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            cycle = self.cycle  # a new request replaces it once its headers are parsed

            def expire() -> None:
                idle = self.cycle is cycle and (cycle is None or cycle.response_complete)
                if idle and not self.transport.is_closing():
                    self.transport.close()

            self._header_timer = self.loop.call_later(HEADER_TIMEOUT_S, expire)

    return HeaderDeadlineProtocol


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
    max_pixels_per_request: int | None = None,
    read_timeout: float | None = None,
    allow_hosts: list[str] | tuple[str, ...] = (),
    allow_origins: list[str] | tuple[str, ...] = (),
    tls_cert: str | os.PathLike | None = None,
    tls_key: str | os.PathLike | None = None,
) -> int:
    """Load MODEL once and serve it until Ctrl-C; returns the exit code (0).

    ``segmenter``: a ``cxrtl segment train`` run that predicts the lung mask of each upload, so a model
    trained on masked images can be served. ``tls_cert``/``tls_key``: serve HTTPS with this PEM pair.
    """
    from .app import DEFAULT_MAX_PIXELS, DEFAULT_READ_TIMEOUT

    max_pixels = DEFAULT_MAX_PIXELS if max_pixels_per_request is None else max_pixels_per_request
    read_timeout = DEFAULT_READ_TIMEOUT if read_timeout is None else read_timeout
    for name, value in (
        ("--workers", workers),
        ("--max-queue", max_queue),
        ("--max-files", max_files),
        ("--max-pixels-per-request", max_pixels),
    ):
        if value < 1:
            raise CxrtlError(f"{name} must be at least 1, not {value}")
    for name, number in (("--max-upload-mb", max_upload_mb), ("--read-timeout", read_timeout)):
        if not number > 0:
            raise CxrtlError(f"{name} must be positive, not {number}")
    for origin in allow_origins:
        if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
            raise CxrtlError(f"--allow-origin {origin!r} is not an origin; give it as https://host[:port]")
    require_extra()
    token = resolve_token(host, insecure)
    tls = tls_files(tls_cert, tls_key)
    if token and tls is None and not is_loopback(host):
        log.warning("the token travels in clear text over plain HTTP; serve HTTPS with --tls-cert/--tls-key")
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
        max_pixels_per_request=max_pixels,
        read_timeout=read_timeout,
        hosts=[*host_names(host), *allow_hosts],
        allow_origins=allow_origins,
    )
    if not in_memory_files_supported():
        log.warning(
            "no memfd on this system: uploads pass through a private temporary folder, deleted at once"
        )
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"{'https' if tls else 'http'}://{shown}:{sock.getsockname()[1]}/"
    print(
        f"cxrtl serve: {predictor.source} ({', '.join(predictor.classes)}) at {url}  (Ctrl-C stops)",
        flush=True,
    )
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        http=protocol_class(),
        timeout_keep_alive=KEEP_ALIVE_S,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised the Ctrl-C it caught
        pass
    finally:
        sock.close()
    print("cxrtl serve: stopped", flush=True)
    return 0
