"""The Hugging Face Hub: ``hf://OWNER/NAME[@REVISION]`` model references, and pushing a bundle.

Built on huggingface_hub (which timm already brings). A reference downloads the bundle's snapshot, or uses
huggingface_hub's local cache (``HF_HUB_CACHE``) when offline; either way the bundle's checksums are then
verified like any local bundle's. Offline with nothing cached is one line in well under a second: the Hub
client is asked once, with a short timeout, and never retried. Tokens come from huggingface_hub's usual
places (``HF_TOKEN``, ``hf auth login``); cxrtl never reads or stores them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, overload

from .errors import CxrtlError

PREFIX = "hf://"
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REF = re.compile(rf"^({_PART})/({_PART})(?:@([A-Za-z0-9._/-]{{1,200}}))?$")
ETAG_TIMEOUT_S = 5.0


def is_hub_ref(ref: object) -> bool:
    return isinstance(ref, str) and ref.startswith(PREFIX)


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``hf://OWNER/NAME[@REVISION]`` -> (``OWNER/NAME``, revision or None); a one-line error if malformed."""
    m = _REF.match(ref[len(PREFIX) :]) if ref.startswith(PREFIX) else None
    if m is None or ".." in ref:
        raise CxrtlError(
            f"malformed Hub reference {ref!r}; write hf://OWNER/NAME or hf://OWNER/NAME@REVISION "
            "(e.g. hf://alice/covid-densenet@main)"
        )
    return f"{m.group(1)}/{m.group(2)}", m.group(3)


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise CxrtlError(
            "hf:// models need huggingface_hub; install it with `pip install 'cxrtl[hub]'`"
        ) from None
    return huggingface_hub


def download(ref: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local folder of a Hub bundle: downloaded, or from huggingface_hub's cache when offline."""
    repo_id, revision = parse_ref(ref)
    hub = _hub()
    from huggingface_hub import errors

    try:
        folder = hub.snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, etag_timeout=ETAG_TIMEOUT_S
        )
    except errors.LocalEntryNotFoundError:
        raise CxrtlError(
            f"cannot fetch {ref}: the Hub is unreachable (offline or HF_HUB_OFFLINE=1) and it is not in the "
            "Hugging Face cache; connect once to download it, or give a local bundle folder"
        ) from None
    except errors.RepositoryNotFoundError:
        raise CxrtlError(
            f"{ref}: no such model repository on the Hub (or it is private); check the name, or log in "
            "with `hf auth login`"
        ) from None
    except errors.RevisionNotFoundError:
        raise CxrtlError(
            f"{ref}: no revision {revision!r} in {repo_id}; check the branch, tag or commit"
        ) from None
    except (errors.HfHubHTTPError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CxrtlError(f"cannot fetch {ref} ({first}); try again, or give a local bundle folder") from None
    return Path(folder)


def resolve_model(ref: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A MODEL argument as a local path: ``hf://`` references are fetched, paths are returned expanded."""
    if is_hub_ref(ref):
        return download(str(ref), cache_dir)
    if isinstance(ref, str) and ref.lower().startswith("hf:"):
        parse_ref(ref)  # "hf:/x" or "HF://x": the malformed-reference error, not "no such file"
    return Path(ref).expanduser()


@overload
def resolve_model_arg(ref: str) -> str: ...
@overload
def resolve_model_arg(ref: None) -> None: ...
def resolve_model_arg(ref: str | None) -> str | None:
    """For CLI options that keep a string (``train --init``): an ``hf://`` reference becomes a local path."""
    return str(resolve_model(ref)) if ref is not None and is_hub_ref(ref) else ref


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
    from huggingface_hub import errors

    api = hub.HfApi()
    files = sorted([*meta["files"], "bundle.json"])
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            revision=revision,
            allow_patterns=files,
            commit_message=message or f"cxrtl bundle {meta.get('name', folder.name)}",
        )
    except (errors.HfHubHTTPError, errors.OfflineModeIsEnabled, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CxrtlError(
            f"cannot push to {repo_id} ({first}); check the network and your token (`hf auth login` or HF_TOKEN)"
        ) from None
    return {"repo": repo_id, "url": str(url), "commit": getattr(info, "oid", None), "files": files}
