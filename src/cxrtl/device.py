"""Which device a command runs on, and how its arithmetic is done there (precision, memory format, seeds).

One home for both training and inference: ``--device`` means the same thing to ``train``, ``evaluate`` and
``predict``, and a ``cuda:N`` that does not exist is refused the same way everywhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from .errors import CxrtlError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
DEVICE_ENV = "CXRTL_DEVICE"
# bf16 runs natively from compute capability 8.0 (A100, RTX 30xx, H100); a T4 (7.5) or V100 (7.0) emulates it.
NATIVE_BF16_CAPABILITY = (8, 0)
log = logging.getLogger(__name__)


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cpu``/``cuda``/``cuda:N`` checked to exist.

    ``CXRTL_DEVICE`` (same choices) says what ``auto`` means: ``CXRTL_DEVICE=cpu`` keeps a GPU machine's
    runs on the CPU (the test suite sets it, so numerics compared at 1e-6 never run in TF32 or bf16).
    """
    if isinstance(name, torch.device):
        return name
    name = str(name or "auto")
    if name == "auto":
        name = os.environ.get(DEVICE_ENV) or "auto"
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if name != "cpu" and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
            raise CxrtlError(
                f"{DEVICE_ENV}={name!r} is not a device; set it to {DEVICE_CHOICES}, or unset it"
            )
    if name == "cpu":
        return torch.device("cpu")
    index = name[5:] if name.startswith("cuda:") else None
    if name != "cuda" and not (index and index.isdigit()):
        raise CxrtlError(f"unknown device {name!r}; use {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise CxrtlError(f"--device {name} asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if index is not None and int(index) >= torch.cuda.device_count():
        raise CxrtlError(
            f"--device {name} does not exist: PyTorch sees {torch.cuda.device_count()} GPU(s); "
            f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    return torch.device(name)


@dataclass(frozen=True)
class Numerics:
    """How a step runs: autocast dtype (None = fp32) and memory format."""

    amp_dtype: torch.dtype | None = None
    memory_format: torch.memory_format = torch.contiguous_format

    def autocast(self, device: torch.device):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.amp_dtype)


def resolve_numerics(
    device: torch.device, precision: str = "auto", channels_last: bool | None = None
) -> Numerics:
    """How a step runs on ``device`` for ``--precision`` and ``--channels-last`` (None: on with CUDA).

    ``auto``: bf16 autocast on a CUDA GPU with native bf16, plain fp32 everywhere else. On a GPU that only
    emulates bf16 (compute capability < 8: T4, V100) auto picks fp32, not fp16 + GradScaler: emulated bf16
    is slower than fp32 there, and fp16 needs a loss scaler whose skipped steps make the history depend on
    the scaler's state (one more thing to save, resume and explain) for a speed-up the paper's
    batch-16 runs do not need. CPU stays fp32: exact, deterministic and faster than CPU bf16.
    """
    cuda = device.type == "cuda"
    native = cuda and _native_bf16(device)
    if precision == "bf16" and cuda and not native:
        log.warning("%s emulates bf16 (compute capability < 8); --precision fp32 is faster there", device)
    bf16 = precision == "bf16" or (precision == "auto" and native)
    cl = cuda if channels_last is None else channels_last
    return Numerics(torch.bfloat16 if bf16 else None, torch.channels_last if cl else torch.contiguous_format)


def _native_bf16(device: torch.device) -> bool:
    """Whether the CUDA ``device`` computes bf16 in hardware (compute capability 8.0 or later)."""
    return tuple(torch.cuda.get_device_capability(device)) >= NATIVE_BF16_CAPABILITY


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
