"""What machine a figure was measured on: CPU model, cores, the instruction sets that decide speed, GPU.

One function, :func:`describe`, used by every benchmark (first line of its output, ``results.json``), by
``export --int8`` (does int8 pay here?) and by the model card (the CPU an int8 speed-up was measured on).
It reads ``/proc/cpuinfo`` (Linux; elsewhere the platform's processor name and no ISA flags) and package
versions from installed metadata, so it imports neither torch nor onnxruntime; the GPU is looked up only
when torch is already imported or ``gpu=True`` asks for it.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# /proc/cpuinfo flag -> the name printed; in the order printed. int8 convolutions gain from VNNI or AMX.
ISA_FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "amx_tile": "AMX",
}
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "amx_tile")
CPUINFO = "/proc/cpuinfo"


def _cpuinfo(path: Path) -> tuple[str | None, set[str]]:
    """(model name, flags) of the first processor listed in a /proc/cpuinfo file; (None, {}) if unreadable."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None, set()
    model: str | None = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86 / ARM spelling
            flags = set(value.split())
        if model and flags:
            break
    return model, flags


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _gpu() -> dict[str, Any] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return {
        "name": torch.cuda.get_device_name(0),
        "capability": f"{major}.{minor}",
        "count": torch.cuda.device_count(),
    }


def describe(gpu: bool | None = None, cpuinfo: str | os.PathLike | None = None) -> dict[str, Any]:
    """The machine as a JSON-able dict.

    ``gpu``: look up the CUDA GPU through torch (True), never (False), or only when torch is already
    imported (None, the default: describing the machine never costs a torch import). ``cpuinfo``: the
    file to read instead of :data:`CPUINFO`.
    """
    model, flags = _cpuinfo(Path(cpuinfo or CPUINFO))
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    info: dict[str, Any] = {
        "cpu": model or platform.processor() or platform.machine() or "unknown CPU",
        "cores": os.cpu_count() or 1,
        "cores_usable": usable,
        "isa": [name for flag, name in ISA_FLAGS.items() if flag in flags],
        "int8_dot_product": any(f in flags for f in INT8_FLAGS),
        "isa_known": bool(flags),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "gpu": None,
    }
    if gpu or (gpu is None and "torch" in sys.modules):
        try:
            info["gpu"] = _gpu()
        except Exception:  # a broken CUDA install must not stop a benchmark from describing the CPU
            info["gpu"] = None
    return info


def cpu_summary(info: dict[str, Any]) -> str:
    """``AMD EPYC, 2 cores (AVX2, AVX-512, AVX-512 VNNI)``."""
    isa = ", ".join(info["isa"]) if info["isa"] else ("no AVX2" if info["isa_known"] else "ISA unknown")
    cores = (
        f"{info['cores_usable']} of {info['cores']}"
        if info["cores_usable"] != info["cores"]
        else info["cores"]
    )
    return f"{info['cpu']}, {cores} cores ({isa})"


def summary(info: dict[str, Any]) -> str:
    """One line: CPU, ISA, GPU, library versions."""
    gpu = info.get("gpu")
    gpu_text = f"GPU {gpu['name']} (compute capability {gpu['capability']})" if gpu else "no GPU"
    versions = ", ".join(f"{k} {info[k]}" for k in ("torch", "onnxruntime") if info.get(k))
    return f"machine: {cpu_summary(info)}; {gpu_text}; {versions or 'no torch/onnxruntime'}"


def int8_expectation(info: dict[str, Any], size_ratio: float | None = None) -> str:
    """What int8 onnxruntime inference should gain on this CPU, in one sentence (``size_ratio``: fp32 file
    size over int8's, when known)."""
    smaller = f"a {size_ratio:.1f}x smaller file" if size_ratio else "a smaller file"
    if info["int8_dot_product"]:
        return "this CPU has int8 dot-product instructions (VNNI/AMX): int8 should run faster than fp32"
    if not info["isa_known"]:
        return (
            f"this CPU's instruction sets are unknown: int8 may be no faster than fp32; the gain is {smaller}"
        )
    return f"this CPU has no VNNI/AMX: int8 will be about as fast as fp32 here; the gain is {smaller}"
