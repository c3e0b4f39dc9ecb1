"""The FastAPI app: ``/healthz``, ``/v1/model``, ``/v1/predict`` and the web page at ``/``.

Inference runs in a bounded thread pool, off the event loop, so ``/healthz`` and the page answer while the
model is busy. A request counts against ``max_queue`` only once its body is in (an idle or stalled client
holds no place); bodies must arrive within ``read_timeout`` seconds (else 408), and the bytes held by all
requests together stay under ``max_queue x max_upload_mb`` (else 503 with ``Retry-After``). Only the bound
host and localhost names are accepted as ``Host`` (DNS rebinding), a POST from a foreign ``Origin`` is
refused (a web page cannot drive the server), and every response carries a Content-Security-Policy that
lets the page load nothing from another host. Every error is a JSON ``{"error": "<problem>; <fix>"}``
without a traceback, and each request logs one line
(method, path, status, number of files, milliseconds): no file names, no image content, no DICOM header.

FastAPI is imported at the top (it resolves the handlers' annotations here); import this module only
after :func:`cxrtl.serve.server.require_extra`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..errors import CxrtlError
from .model_info import model_info
from .runner import predict_uploads
from .uploads import UploadError, check_content_type, check_declared_size, read_uploads

log = logging.getLogger("cxrtl.serve")

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
DEFAULT_MAX_PIXELS = 200_000_000  # decoded pixels per request: ~20 full-size radiographs, a few seconds
DEFAULT_READ_TIMEOUT = 30.0  # seconds for a whole request body (32 MB at ~10 Mbit/s)

PREDICT_BODY = {  # the multipart body, described in /openapi.json (the handler parses the stream itself)
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            }
        },
    }
}


@dataclass
class _Limits:
    """What one server admits: body bytes, files, pixels per request, requests at once; its batch size."""

    max_bytes: int
    max_files: int
    max_queue: int
    batch_size: int
    max_pixels: int
    read_timeout: float
    admitted: int = 0  # requests whose body is in, running or waiting (touched only on the event loop)
    buffered: int = 0  # body bytes held by all requests now (reading, waiting or running)

    @property
    def max_buffered(self) -> int:
        return self.max_queue * self.max_bytes

    def hold(self, n: int) -> None:
        """Count ``n`` more body bytes in memory; 503 when all requests together would pass the budget."""
        if self.buffered + n > self.max_buffered:
            raise UploadError(503, _busy(self.max_queue))
        self.buffered += n


def _busy(max_queue: int) -> str:
    return f"server busy ({max_queue} requests queued); retry after a second"


def create_app(
    predictor,
    *,
    max_upload_mb: float = 32,
    workers: int = 1,
    max_queue: int = 64,
    max_files: int = 64,
    token: str | None = None,
    batch_size: int = 16,
    max_pixels_per_request: int = DEFAULT_MAX_PIXELS,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    hosts: list[str] | tuple[str, ...] = (),
    allow_origins: list[str] | tuple[str, ...] = (),
):
    """A FastAPI app serving ``predictor`` (a loaded :class:`~cxrtl.inference.predict.Predictor`).

    Args:
        max_upload_mb: largest request body; refused with 413 while reading.
        workers: inference threads sharing the one loaded model.
        max_queue: requests admitted at once once their body is in (running or waiting); more get 503.
        max_files: files per request; more get 413.
        token: when set, ``/v1/*`` needs ``Authorization: Bearer <token>`` (compared in constant time).
        max_pixels_per_request: decoded pixels one request may cost (read from each file's header);
            the files beyond it get an error row.
        read_timeout: seconds within which a request body must arrive, else 408.
        hosts: the names clients may use in ``Host`` besides the localhost names (the bound address).
        allow_origins: web origins (``https://app.example``) whose pages may POST, besides the server's own.
    """
    if predictor.needs_mask and predictor.segmenter is None:
        raise CxrtlError(
            "this model was trained on lung-masked images and the server takes no masks; serve it with "
            "--segmenter SEG_RUN (a `cxrtl segment train` run predicts each mask), or a model trained "
            "with --input raw"
        )
    from .._version import __version__

    info = model_info(predictor)
    if predictor.segmenter is not None:  # masks predicted per upload (Predictor.use_segmenter)
        info["segmenter"] = Path(str(predictor.segmenter.source)).name  # a name, never a server path
    pool = ThreadPoolExecutor(max_workers=max(1, int(workers)), thread_name_prefix="cxrtl-infer")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="cxrtl",
        version=__version__,
        description="Chest-radiograph classifier. Research tool, not a medical device.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load from a CDN; the description is /openapi.json, offline
        redoc_url=None,
    )
    app.state.pool, app.state.info = pool, info
    limits = _Limits(
        int(max_upload_mb * 2**20), max_files, max_queue, batch_size, max_pixels_per_request, read_timeout
    )
    static = resources.files("cxrtl.serve") / "static"
    origins = {o.rstrip("/").lower() for o in allow_origins}
    _add_guard_and_errors(app, token, origins)
    app.add_middleware(_HostCheck, allowed_hosts=sorted({h.lower() for h in (*LOCAL_HOSTS, *hosts)}))
    _add_pages(app, info, (static / "index.html").read_text(encoding="utf-8"))
    _add_predict(app, predictor, info, pool, limits)
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _HostCheck:
    """Starlette's TrustedHostMiddleware decides which ``Host`` is accepted (against DNS rebinding); a
    refusal is answered as every other error, JSON naming the fix, with the security headers, and logged."""

    def __init__(self, app, allowed_hosts: list[str]):
        self.app = app
        self.check = TrustedHostMiddleware(self._accept, allowed_hosts=allowed_hosts, www_redirect=False)

    @staticmethod
    async def _accept(scope, receive, send) -> None:
        scope["cxrtl.host_ok"] = True

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def swallow(message) -> None:  # the refusal TrustedHostMiddleware would send
            pass

        await self.check(scope, receive, swallow)
        if scope.pop("cxrtl.host_ok", False):
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host", "")[:100]
        log.warning("refused a request for Host %r (not a name of this server; see --allow-host)", host)
        response = _error(
            400,
            f"Host {host!r} is not a name of this server; use the address it printed at start, or start it "
            "with --allow-host NAME for the name you use",
            SECURITY_HEADERS,
        )
        await response(scope, receive, send)


def _foreign_origin(request: Request, allowed: set[str]) -> str | None:
    """The ``Origin`` of a state-changing request when it is neither this server nor an allowed one."""
    if request.method in SAFE_METHODS:
        return None
    origin = request.headers.get("origin")
    if origin is None:  # not a browser (curl, scripts): nothing a web page could forge
        return None
    norm = origin.rstrip("/").lower()
    scheme, _, netloc = norm.partition("://")
    if norm in allowed or (scheme in ("http", "https") and netloc == request.headers.get("host", "").lower()):
        return None
    return origin


def _add_guard_and_errors(app: FastAPI, token: str | None, origins: set[str]) -> None:
    """Origin and token checks, security headers, one log line per request, every error as JSON."""

    @app.middleware("http")
    async def guard_and_log(request: Request, call_next):
        start = time.perf_counter()
        request.state.files = 0
        foreign = _foreign_origin(request, origins)
        if foreign is not None:
            response = _error(
                403,
                f"requests from the web page at {foreign[:100]} are refused; use the page this server "
                "serves, or start the server with --allow-origin ORIGIN to trust that site",
            )
        elif token and request.url.path.startswith("/v1/") and not _authorised(request, token):
            response = _error(
                401,
                "missing or wrong token; send the server's CXRTL_SERVE_TOKEN as 'Authorization: Bearer TOKEN'",
                # a body that was never read ends the connection with the answer
                {"WWW-Authenticate": "Bearer"}
                | ({} if request.method in SAFE_METHODS else {"Connection": "close"}),
            )
        else:
            try:
                response = await call_next(request)
            except Exception as exc:  # noqa: BLE001  (never a traceback in a response)
                log.debug("unhandled error", exc_info=True)
                response = _error(500, f"internal error ({type(exc).__name__}); the server keeps running")
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        ms = (time.perf_counter() - start) * 1000
        log.info(
            "%s %s %d files=%d ms=%.1f",
            request.method,
            request.url.path,
            response.status_code,
            request.state.files,
            ms,
        )
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        what = {
            404: "no such page; see /openapi.json for the API",
            405: "method not allowed; see /openapi.json for the API",
        }
        return _error(exc.status_code, what.get(exc.status_code, str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def bad_params(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return _error(
            400, f"invalid {where or 'request'} ({first.get('msg', 'bad value')}); use true or false"
        )


def _add_pages(app: FastAPI, info: dict[str, Any], index_html: str) -> None:
    """The web page, liveness and the model description."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(index_html)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: answers even while every inference thread is busy."""
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        """Classes, backbone, preprocessing, training summary, calibration and the cxrtl version."""
        return info


def _add_predict(
    app: FastAPI, predictor, info: dict[str, Any], pool: ThreadPoolExecutor, limits: _Limits
) -> None:
    """``POST /v1/predict``: admission (503 when full), the upload limits, inference in the pool."""

    @app.post("/v1/predict", openapi_extra=PREDICT_BODY)
    async def predict(request: Request, cam: bool = False, image: bool = False):
        """One row per uploaded file (field ``files``), as ``cxrtl predict --format json``.

        ``cam=true`` adds ``cam_png`` (base64 Grad-CAM overlay; PyTorch models only); ``image=true`` adds
        ``image_png`` (the decoded image, for showing a DICOM in a browser).
        """
        if cam and not info["cam"]:
            return _error(
                400,
                "Grad-CAM needs gradients, which an ONNX model does not have; serve the PyTorch checkpoint",
            )
        held = 0

        def hold(n: int) -> None:
            nonlocal held
            limits.hold(n)
            held += n

        try:
            check_content_type(request.headers.get("content-type"))
            check_declared_size(request.headers.get("content-length"), limits.max_bytes)
            uploads = await read_uploads(
                request.headers["content-type"],
                request.stream(),
                limits.max_bytes,
                limits.max_files,
                deadline_s=limits.read_timeout,
                on_bytes=hold,
            )
            request.state.files = len(uploads)
            if limits.admitted >= limits.max_queue:  # counted only now that the body is in
                raise UploadError(503, _busy(limits.max_queue))
            limits.admitted += 1
            try:
                loop = asyncio.get_running_loop()
                rows = await loop.run_in_executor(
                    pool,
                    lambda: predict_uploads(
                        predictor,
                        uploads,
                        cam=cam,
                        image=image,
                        batch_size=limits.batch_size,
                        max_pixels=limits.max_pixels,
                    ),
                )
            finally:
                limits.admitted -= 1
            return JSONResponse(rows)
        except UploadError as exc:
            headers = {}
            if exc.status == 503:
                headers["Retry-After"] = "1"
            if exc.status in (408, 413, 503):  # the rest of the body was not read: end the connection
                headers["Connection"] = "close"
            return _error(exc.status, exc.message, headers)
        except CxrtlError as exc:
            return _error(400, str(exc))
        finally:
            limits.buffered -= held


def _authorised(request, token: str) -> bool:
    got = request.headers.get("authorization", "")
    scheme, _, value = got.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())
