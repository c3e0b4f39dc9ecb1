"""The Hugging Face Hub: ``hf://OWNER/NAME[@REVISION]`` model references, and pushing a bundle.

Built on huggingface_hub (which timm already brings). A reference downloads the bundle's snapshot, or uses
huggingface_hub's local cache (``HF_HUB_CACHE``) when offline; either way the bundle's checksums are then
verified like any local bundle's. Offline with nothing cached is one line in well under a second: the Hub
client is asked once, with a short timeout (``HF_HUB_ETAG_TIMEOUT``, default 5 s), and never retried.
Tokens come from huggingface_hub's usual places (``HF_TOKEN``, ``hf auth login``); cxrtl never reads or
stores them.

Every failure to reach the Hub is one line naming its cause (no network, DNS, timeout, proxy, TLS, or the
HTTP status the Hub answered) and its fix. The cause is found by walking the exception chain, so it works
whichever HTTP library the installed huggingface_hub talks through (requests, httpx or httpx2).
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import CxrtlError

PREFIX = "hf://"
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REF = re.compile(rf"({_PART})/({_PART})(?:@([A-Za-z0-9._/-]{{1,200}}))?")
# A revision is a branch, tag or commit name (git's ref rules, on the characters above): path components
# that are not empty and do not start or end with a dot, no "..", no ".lock" ending; "refs/pr/1" is a PR.
_REV_COMPONENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
ETAG_TIMEOUT_S = 5.0
# The Hub may take a while to answer a commit; a host that says nothing is not waited on forever.
PUSH_READ_TIMEOUT_S = 120.0
# The top-level packages whose exceptions mean "the Hub could not be reached or answered an error".
TRANSPORT_PACKAGES = frozenset(
    {"huggingface_hub", "hf_xet", "httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3"}
    | {"h11", "h2", "anyio", "ssl", "socket"}
)
# Their INFO line per request ("HTTP Request: GET ... 401") is chatter next to cxrtl's one-line error.
_CHATTY = ("httpx", "httpx2", "httpcore", "httpcore2")


def is_hub_ref(ref: object) -> bool:
    return isinstance(ref, str) and ref.startswith(PREFIX)


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``hf://OWNER/NAME[@REVISION]`` -> (``OWNER/NAME``, revision or None); a one-line error if malformed."""
    m = _REF.fullmatch(ref[len(PREFIX) :]) if ref.startswith(PREFIX) else None
    if m is None or ".." in ref or (m.group(3) is not None and not _is_revision(m.group(3))):
        raise CxrtlError(
            f"malformed Hub reference {ref!r}; write hf://OWNER/NAME or hf://OWNER/NAME@REVISION, where "
            "REVISION is a branch, tag or commit (e.g. hf://alice/covid-densenet@main)"
        )
    return f"{m.group(1)}/{m.group(2)}", m.group(3)


def _is_revision(rev: str) -> bool:
    """A branch, tag or commit name: no leading, trailing or doubled ``/``, no dot-led or ``.lock`` part."""
    return all(_REV_COMPONENT.fullmatch(c) and not c.endswith((".lock", ".")) for c in rev.split("/"))


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and all(cur is not s for s in seen):
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _from_transport(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) comes from the Hub client, the HTTP stack beneath it or the OS."""
    return any(
        type(e).__module__.split(".")[0] in TRANSPORT_PACKAGES or isinstance(e, OSError) for e in _chain(exc)
    )


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except ImportError:  # pragma: no cover - _hub() ran first
        return "https://huggingface.co"


def _proxy() -> str | None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        if os.environ.get(name):
            return name
    return None


_REASONS = (
    ("Connection refused", "connection refused"),
    ("Connection reset", "connection reset"),
    ("Network is unreachable", "network unreachable"),
    ("No route to host", "no route to host"),
)


def _reason(exc: BaseException) -> str:
    """A transport error's reason in a few words (requests nests it deep in a MaxRetryError's text)."""
    text = str(exc)
    for needle, short in _REASONS:
        if needle in text:
            return short
    return (text.strip().splitlines() or [type(exc).__name__])[0][:120]


def describe_failure(exc: BaseException, push: bool = False) -> tuple[str, str]:
    """(cause, fix) of a failed Hub call, the cause found anywhere in the exception chain."""
    from huggingface_hub import errors

    chain = _chain(exc)
    endpoint = _endpoint()
    login = "log in with `hf auth login` or set HF_TOKEN"
    for e in chain:
        if isinstance(e, errors.OfflineModeIsEnabled):
            return "HF_HUB_OFFLINE=1 is set, so the Hub is not asked", "unset HF_HUB_OFFLINE to go online"
        if isinstance(e, errors.LocalTokenNotFoundError):
            return "no Hub token found", login
        code = _status(e)
        if code is None:
            continue
        if isinstance(e, errors.RevisionNotFoundError):
            return "the Hub has no such revision (404)", "check the branch, tag or commit"
        if code == 401:
            return "the Hub answered 401 Unauthorized (no token, or an invalid one)", login
        if code == 403:
            if push:
                return (
                    "the Hub answered 403 Forbidden (a read-only token, or another owner's namespace)",
                    "use a token with write access to that namespace",
                )
            return "the Hub answered 403 Forbidden (a gated or restricted repository)", (
                "request access on the Hub, then " + login
            )
        if code == 404:
            return (
                "the Hub answered 404 Not Found (no such repository, or a private one your token cannot see)",
                f"check OWNER/NAME, or {login}",
            )
        if code == 407:
            return (
                "the proxy answered 407 (proxy authentication required)",
                "check the credentials in HTTPS_PROXY",
            )
        if code == 429:
            return "the Hub answered 429 Too Many Requests", "wait a minute and try again"
        if code >= 500:
            return f"the Hub answered {code} (a server error at {endpoint})", "try again later"
        return f"the Hub answered HTTP {code}", f"check the repository name, or {login}"
    proxy = _proxy()
    for e in chain:
        name = type(e).__name__
        text = _reason(e)
        if "Proxy" in name or (proxy and ("Connect" in name or isinstance(e, ConnectionError))):
            return (
                f"cannot connect to {endpoint} through the proxy in {proxy or 'the environment'} ({text})",
                f"check {proxy or 'HTTPS_PROXY'} and the network",
            )
        if isinstance(e, socket.gaierror) or any(
            s in str(e) for s in ("Name or service not known", "nodename nor servname", "name resolution")
        ):
            return (
                f"cannot resolve the host of {endpoint} (no network, or a DNS failure)",
                "check the network" + ("" if push else ", or work from the cache with HF_HUB_OFFLINE=1"),
            )
        if "Timeout" in name or isinstance(e, TimeoutError):
            return f"{endpoint} did not answer in time ({name})", "check the network and try again"
        if "SSL" in name or "Certificate" in name or type(e).__module__ == "ssl":
            return (
                f"TLS failure talking to {endpoint} ({text})",
                "check SSL_CERT_FILE, or the proxy's certificate",
            )
        if "Connect" in name or isinstance(e, ConnectionError):
            return f"cannot connect to {endpoint} ({text})", "check the network, and HF_ENDPOINT if set"
    name = type(exc).__name__
    cause = f"{name}: {(str(exc).strip().splitlines() or [name])[0][:160]}"
    if isinstance(
        exc, OSError
    ):  # the disk, not the network: a cache or bundle that cannot be read or written
        return cause, "check that the bundle folder is readable and the Hugging Face cache (HF_HOME) writable"
    return cause, f"check the network, or {login}"


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise CxrtlError(
            "hf:// models need huggingface_hub; install it with `pip install 'cxrtl[hub]'`"
        ) from None
    if not logging.getLogger().isEnabledFor(logging.DEBUG):  # without -v
        for name in _CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING)
    return huggingface_hub


@contextmanager
def _bounded(connect: float, read: float) -> Iterator[None]:
    """Bound connecting and each read of huggingface_hub's requests while cxrtl makes them.

    huggingface_hub 1.x and 2.x (httpx, httpx2) make their client with ``timeout=None`` and pass a timeout
    only to file downloads, so a metadata call (``model_info``, ``create_repo``) to a host that accepts the
    connection and never answers would wait forever. A request hook gives those unbounded requests a
    connect and a read timeout; a request with a timeout of its own keeps it. Requests-based releases
    pass a timeout on every call and have no hooks; they are left alone.
    """
    get_session = getattr(_hub(), "get_session", None)
    hooks = getattr(get_session(), "event_hooks", None) if get_session else None
    if not isinstance(hooks, dict) or not isinstance(hooks.get("request"), list):
        yield
        return

    def bound(request) -> None:
        timeout = request.extensions.get("timeout") or {}
        if timeout.get("connect") is None and timeout.get("read") is None:
            request.extensions["timeout"] = {**timeout, "connect": connect, "read": read}

    hooks["request"].append(bound)
    try:
        yield
    finally:
        if bound in hooks["request"]:
            hooks["request"].remove(bound)


def _etag_timeout() -> float:
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or ETAG_TIMEOUT_S)
    except ValueError:
        return ETAG_TIMEOUT_S


def download(ref: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local folder of a Hub bundle: downloaded, or from huggingface_hub's cache when offline."""
    repo_id, revision = parse_ref(ref)
    hub = _hub()
    from huggingface_hub import constants, errors

    timeout = _etag_timeout()
    try:
        with _bounded(connect=timeout, read=max(timeout, float(constants.HF_HUB_DOWNLOAD_TIMEOUT))):
            folder = hub.snapshot_download(
                repo_id, revision=revision, cache_dir=cache_dir, etag_timeout=timeout
            )
    except errors.RevisionNotFoundError:
        raise CxrtlError(
            f"{ref}: no revision {revision!r} in {repo_id}; check the branch, tag or commit"
        ) from None
    except Exception as exc:
        if not _from_transport(exc):
            raise  # not the Hub's: a bug, to surface as one
        chain = _chain(exc)
        if isinstance(exc, errors.LocalEntryNotFoundError) and all(
            _status(e) is None and not _from_transport_cause(e) for e in chain[1:]
        ):
            raise CxrtlError(
                f"cannot fetch {ref}: the Hub is unreachable (offline or HF_HUB_OFFLINE=1) and it is not in the "
                "Hugging Face cache; connect once to download it, or give a local bundle folder"
            ) from None
        cause, fix = describe_failure(exc)
        cached = (
            " (and it is not in the Hugging Face cache)"
            if isinstance(exc, errors.LocalEntryNotFoundError)
            else ""
        )
        raise CxrtlError(
            f"cannot fetch {ref}{cached}: {cause}; {fix}, or give a local bundle folder"
        ) from None
    return Path(folder)


def _from_transport_cause(exc: BaseException) -> bool:
    """An exception below huggingface_hub's own: the HTTP stack's, or the OS's socket errors."""
    root = type(exc).__module__.split(".")[0]
    return (root in TRANSPORT_PACKAGES and root != "huggingface_hub") or isinstance(
        exc, (ConnectionError, TimeoutError, socket.gaierror)
    )


def push(
    bundle: str | os.PathLike,
    repo: str,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """Upload a verified bundle folder to the Hub model repository ``repo`` (created when missing)."""
    from .bundle_manifest import verify_bundle

    folder = Path(bundle).expanduser()
    meta = verify_bundle(folder)
    repo_id, _ = parse_ref(PREFIX + repo)
    hub = _hub()

    api = hub.HfApi()
    files = sorted([*meta["files"], "bundle.json"])
    try:
        with _bounded(connect=_etag_timeout(), read=PUSH_READ_TIMEOUT_S):
            url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                repo_type="model",
                revision=revision,
                allow_patterns=files,
                commit_message=message or f"cxrtl bundle {meta.get('name', folder.name)}",
            )
    except Exception as exc:
        if not _from_transport(exc):
            raise  # not the Hub's: a bug, to surface as one
        cause, fix = describe_failure(exc, push=True)
        raise CxrtlError(f"cannot push to {repo_id}: {cause}; {fix}") from None
    return {"repo": repo_id, "url": str(url), "commit": getattr(info, "oid", None), "files": files}
