"""What produced a result: cxrtl, torch, timm and Python versions, the git commit, the device.

Recorded in every ``summary.json``, checkpoint metadata, ``metrics.json`` and ``results.json`` so that a
reader of a result can tell which code and libraries made it. Versions are read from package metadata
(``importlib.metadata``), so asking never imports torch; the device name is only looked up when a
``torch.device`` is given (the caller already has torch loaded then).
"""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from ._version import __version__

_PACKAGES = ("torch", "timm", "torchvision", "onnxruntime")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout cxrtl runs from (with ``+dirty`` for local changes), else None."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "") if sha else None


def device_name(device: Any = None) -> str | None:
    """A readable name of ``device``: the GPU model for CUDA (``cuda:0 (NVIDIA H100 ...)``), else its type."""
    if device is None:
        return None
    text = str(device)
    if text.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            index = torch.device(text).index or 0
            return f"{text} ({torch.cuda.get_device_name(index)})"
    if text == "cpu":
        return f"cpu ({platform.processor() or platform.machine()})"
    return text


def provenance(device: Any = None) -> dict[str, Any]:
    """``{"cxrtl", "python", "torch", "timm", ..., "git_commit", "device", "platform"}``; None where unknown."""
    return {
        "cxrtl": __version__,
        "python": platform.python_version(),
        **{name: _version(name) for name in _PACKAGES},
        "git_commit": git_commit(),
        "device": device_name(device),
        "platform": platform.platform(terse=True),
    }
