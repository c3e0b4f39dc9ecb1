"""The FastAPI app: ``/healthz``, ``/v1/model``, ``/v1/predict`` and the web page at ``/``.

Inference runs in a bounded thread pool, off the event loop, so ``/healthz`` and the page answer while the
model is busy; a request that finds ``max_queue`` requests already admitted gets 503 with ``Retry-After``
before its body is read, so memory stays bounded by ``max_queue x max_upload_mb``. Every error is a JSON
``{"error": "<problem>; <fix>"}`` without a traceback, and each request logs one line (method, path,
status, number of files, milliseconds): no file names, no image content, no DICOM header.

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
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import CxrtlError
from .model_info import model_info
from .runner import predict_uploads
from .uploads import UploadError, check_content_type, check_declared_size, read_uploads

log = logging.getLogger("cxrtl.serve")

PREDICT_BODY = {  # the multipart body, described for /docs (the handler parses the stream itself)
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
    """What one server admits: body bytes, files per request, requests at once; and its batch size."""

    max_bytes: int
    max_files: int
    max_queue: int
    batch_size: int
    admitted: int = 0  # requests running or waiting now (touched only on the event loop)


def create_app(
    predictor,
    *,
    max_upload_mb: float = 32,
    workers: int = 1,
    max_queue: int = 64,
    max_files: int = 64,
    token: str | None = None,
    batch_size: int = 16,
):
    """A FastAPI app serving ``predictor`` (a loaded :class:`~cxrtl.inference.predict.Predictor`).

    Args:
        max_upload_mb: largest request body; refused with 413 while reading.
        workers: inference threads sharing the one loaded model.
        max_queue: requests admitted at once (running or waiting); more get 503 + Retry-After.
        max_files: files per request; more get 413.
        token: when set, ``/v1/*`` needs ``Authorization: Bearer <token>`` (compared in constant time).
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
        info["segmenter"] = str(predictor.segmenter.source)
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
    )
    app.state.pool, app.state.info = pool, info
    limits = _Limits(int(max_upload_mb * 2**20), max_files, max_queue, batch_size)
    static = resources.files("cxrtl.serve") / "static"
    _add_guard_and_errors(app, token)
    _add_pages(app, info, (static / "index.html").read_text(encoding="utf-8"))
    _add_predict(app, predictor, info, pool, limits)
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _add_guard_and_errors(app: FastAPI, token: str | None) -> None:
    """The token check, one log line per request, and every error as JSON without a traceback."""

    @app.middleware("http")
    async def guard_and_log(request: Request, call_next):
        start = time.perf_counter()
        request.state.files = 0
        if token and request.url.path.startswith("/v1/") and not _authorised(request, token):
            response = _error(
                401,
                "missing or wrong token; send the server's CXRTL_SERVE_TOKEN as 'Authorization: Bearer TOKEN'",
                {"WWW-Authenticate": "Bearer"},
            )
        else:
            try:
                response = await call_next(request)
            except Exception as exc:  # noqa: BLE001  (never a traceback in a response)
                log.debug("unhandled error", exc_info=True)
                response = _error(500, f"internal error ({type(exc).__name__}); the server keeps running")
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
        what = {404: "no such page; see /docs for the API", 405: "method not allowed; see /docs for the API"}
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
        if limits.admitted >= limits.max_queue:
            return _error(
                503,
                f"server busy ({limits.max_queue} requests queued); retry after a second",
                {"Retry-After": "1"},
            )
        limits.admitted += 1
        try:
            return JSONResponse(await _answer(request, predictor, pool, limits, cam, image))
        except UploadError as exc:
            return _error(exc.status, exc.message, {"Connection": "close"} if exc.status == 413 else None)
        except CxrtlError as exc:
            return _error(400, str(exc))
        finally:
            limits.admitted -= 1


async def _answer(
    request: Request, predictor, pool: ThreadPoolExecutor, limits: _Limits, cam: bool, image: bool
):
    """Read the uploads within the limits, then predict them in the inference pool -> the JSON rows."""
    check_content_type(request.headers.get("content-type"))
    check_declared_size(request.headers.get("content-length"), limits.max_bytes)
    uploads = await read_uploads(
        request.headers["content-type"], request.stream(), limits.max_bytes, limits.max_files
    )
    request.state.files = len(uploads)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        pool, lambda: predict_uploads(predictor, uploads, cam=cam, image=image, batch_size=limits.batch_size)
    )


def _authorised(request, token: str) -> bool:
    got = request.headers.get("authorization", "")
    scheme, _, value = got.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())
