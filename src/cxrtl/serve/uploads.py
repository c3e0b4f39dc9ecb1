"""Read a multipart upload into memory, refusing it as soon as it passes the size or file-count limit.

Starlette's own form parser spools large files to a temporary file on disk; radiographs must not touch the
disk, so the body is streamed through python-multipart here with every file kept in memory, and the size is
counted while reading (a client that lies about Content-Length is stopped at the limit, not after it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass


class UploadError(Exception):
    """A problem with the whole request: the HTTP status and a ``<problem>; <fix>`` message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upload:
    """One uploaded file: the client's file name and its bytes."""

    name: str
    data: bytes


def check_content_type(content_type: str | None) -> None:
    """415 unless the request is ``multipart/form-data`` with a boundary."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        raise UploadError(
            415,
            f"{f'content type {kind!r} is' if kind else 'a request without a content type is'} not supported; "
            "send multipart/form-data with the "
            "images in the field 'files' (curl -F files=@image.png)",
        )
    if "boundary=" not in (content_type or ""):
        raise UploadError(400, "multipart/form-data without a boundary; let your HTTP client build the form")


def check_declared_size(content_length: str | None, max_bytes: int) -> None:
    """413 at once when the declared Content-Length is already over the limit."""
    try:
        declared = int(content_length) if content_length is not None else None
    except ValueError:
        raise UploadError(400, "Content-Length is not a number; let your HTTP client set it") from None
    if declared is not None and declared > max_bytes:
        raise UploadError(413, too_large(max_bytes))


def too_large(max_bytes: int) -> str:
    return (
        f"upload is larger than the {max_bytes / 2**20:g} MB limit; send fewer or smaller files per "
        "request, or start the server with a larger --max-upload-mb"
    )


async def read_uploads(
    content_type: str,
    chunks: AsyncIterator[bytes],
    max_bytes: int,
    max_files: int,
    deadline_s: float | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> list[Upload]:
    """The files of the form field ``files``, read chunk by chunk; other fields are ignored.

    ``deadline_s``: the whole body must arrive within this many seconds (a stalled or dribbling client
    gets 408). ``on_bytes(n)`` is called before each chunk is kept and may raise (the server's memory
    budget across requests).

    Raises UploadError: 413 past ``max_bytes`` (checked per chunk) or ``max_files``, 408 past the
    deadline, 400 for a malformed body or no files.
    """
    try:
        async with asyncio.timeout(deadline_s):
            return await _read(content_type, chunks, max_bytes, max_files, on_bytes)
    except TimeoutError:
        raise UploadError(
            408,
            f"the request body did not arrive within {deadline_s:g} s; send it at once (a client that "
            "stalls is cut off), or start the server with a larger --read-timeout",
        ) from None


async def _read(content_type, chunks, max_bytes, max_files, on_bytes) -> list[Upload]:
    from python_multipart import FormParser
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import parse_options_header

    files: list = []
    config = {"MAX_MEMORY_FILE_SIZE": max_bytes + 1, "UPLOAD_KEEP_FILENAME": False}

    def on_file(f) -> None:
        if (f.field_name or b"") == b"files":
            files.append(f)
            if len(files) > max_files:
                raise UploadError(
                    413,
                    f"too many files in one request (limit {max_files}); send at most {max_files} "
                    "files per request, or start the server with a larger --max-files",
                )

    total = 0
    try:
        kind, params = parse_options_header(content_type)
        parser = FormParser(
            kind.decode("latin-1"), None, on_file, boundary=params.get(b"boundary"), config=config
        )
        async for chunk in chunks:
            total += len(chunk)
            if total > max_bytes:
                raise UploadError(413, too_large(max_bytes))
            if on_bytes is not None:
                on_bytes(len(chunk))
            parser.write(chunk)
        parser.finalize()
    except (FormParserError, ValueError) as exc:
        raise UploadError(
            400, f"malformed multipart body ({exc}); let your HTTP client build the form"
        ) from None
    if not files:
        raise UploadError(
            400,
            "no files in the request; send one or more images in the form field 'files' (-F files=@x.png)",
        )
    out: list[Upload] = []
    for f in files:
        fh = f.file_object
        fh.seek(0)
        name = (f.file_name or b"").decode("utf-8", "replace") or f"file-{len(out) + 1}"
        out.append(Upload(name=name, data=fh.read()))
        f.close()
    return out
