"""Which device a command runs on, and how its arithmetic is done there (precision, memory format, seeds).

One home for both training and inference: ``--device`` means the same thing to ``train``, ``evaluate`` and
``predict``, and a ``cuda:N`` that does not exist is refused the same way everywhere.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch

from .errors import CxrtlError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cpu``/``cuda``/``cuda:N`` checked to exist."""
    if isinstance(name, torch.device):
        return name
    name = str(name or "auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
    """bf16 autocast + channels_last by default on CUDA, plain fp32 NCHW on CPU (faster and exact there)."""
    cuda = device.type == "cuda"
    bf16 = precision == "bf16" or (precision == "auto" and cuda)
    cl = cuda if channels_last is None else channels_last
    return Numerics(torch.bfloat16 if bf16 else None, torch.channels_last if cl else torch.contiguous_format)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
