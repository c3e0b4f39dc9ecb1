"""How an image becomes a model input (paper §III-D): the settings, and their per-batch normalisation.

:class:`Preprocess` is torch-free (training, the cache, checkpoints and the ONNX predictor all use it);
torch is imported only inside :func:`normalize_batch`. The cache stores one uint8 grey channel at the
crop size; pseudo-RGB is that channel repeated three times, so it is expanded on the device, not stored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ..errors import CxrtlError

if TYPE_CHECKING:  # torch is imported where batches are made, so `cxrtl data ...` starts fast
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input: raw or lung-masked, 1 or 3 channels, crop size."""

    input: str = "raw"  # "raw" | "masked" (eq. 9: C = A * max(0, B) / 255)
    channels: int = 3  # 1 (single channel) | 3 (pseudo-RGB)
    image_size: int = 224  # centre-crop size; the shorter side is first resized to resize_size

    def __post_init__(self):
        if self.input not in ("raw", "masked"):
            raise ValueError(f"input must be 'raw' or 'masked', not {self.input!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels!r}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8, not {self.image_size!r}")

    @property
    def resize_size(self) -> int:
        """Shorter-side resize before the crop, keeping torchvision's 256:224 ratio."""
        return round(self.image_size * 256 / 224)

    @property
    def mean(self) -> tuple[float, ...]:
        return IMAGENET_MEAN[: self.channels]

    @property
    def std(self) -> tuple[float, ...]:
        return IMAGENET_STD[: self.channels]

    def to_dict(self) -> dict:
        """The JSON form stored in checkpoints, with the derived values spelled out for other tools."""
        return {
            **asdict(self),
            "resize_size": self.resize_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        """Settings a checkpoint, cache or ONNX file stored; one-line error for values cxrtl never writes."""
        try:
            return cls(
                input=str(d.get("input", "raw")),
                channels=int(d.get("channels", 3)),
                image_size=int(d.get("image_size", 224)),
            )
        except (AttributeError, TypeError, ValueError):
            raise CxrtlError(
                f"unsupported preprocessing {d}; the checkpoint is damaged or from a newer cxrtl"
            ) from None


def normalize_batch(
    images: torch.Tensor,
    pp: Preprocess,
    device: torch.device | str | None = None,
    memory_format: torch.memory_format | None = None,
) -> torch.Tensor:
    """uint8 ``[B, 1, H, W]`` (or ``[B, H, W]``) -> float ``[B, C, H, W]`` scaled to [0, 1] and normalised.

    The arithmetic runs in place in two float tensors, the grey scaled one and the output: the plain
    ``(x.float() / 255 - mean) / std`` made three of output size (for 32 pseudo-RGB images at 224 px,
    6 + 19 + 19 MB) and moved 133 MB through memory, against 83 MB here; on a CPU the fresh pages and the
    memory traffic cost more than the arithmetic, and varied with the allocator's state. The operations
    and their order are the same, so the values are bit-identical to that expression.
    """
    import torch

    if images.dim() == 3:
        images = images.unsqueeze(1)
    images = images.to(device if device is not None else images.device, non_blocking=True)
    b, c, h, w = images.shape
    grey = torch.empty((b, c, h, w), dtype=torch.float32, device=images.device)
    grey.copy_(images).div_(255.0)
    mean, std = _mean_std(grey.device, pp.channels)
    out = torch.empty(
        (b, pp.channels if c == 1 else c, h, w),
        dtype=torch.float32,
        device=grey.device,
        memory_format=memory_format or torch.contiguous_format,
    )
    torch.sub(grey, mean, out=out)  # broadcasting the grey channel repeats it for pseudo-RGB
    return out.div_(std)


_STATS: dict = {}  # (device, channels) -> (mean, std) as [1, C, 1, 1] float32 tensors on that device


def _mean_std(device: torch.device, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ImageNet mean/std made once per (device, channels): a tensor built from a Python list on a GPU
    is a blocking host-to-device copy, two per batch before this cache."""
    import torch

    key = (str(device), channels)
    if key not in _STATS:
        _STATS[key] = tuple(
            torch.tensor(v[:channels], dtype=torch.float32, device=device).view(1, -1, 1, 1)
            for v in (IMAGENET_MEAN, IMAGENET_STD)
        )
    return _STATS[key]
