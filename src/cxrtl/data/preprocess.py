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

    The arithmetic runs in place in the output, and on a CPU one slice of it at a time, each small enough
    to stay in the CPU's caches (``_CPU_SLICE_BYTES``): the plain ``(x.float() / 255 - mean) / std`` made
    three tensors of output size (for 32 pseudo-RGB images at 224 px, 6 + 19 + 19 MB) and moved about
    130 MB through main memory per batch; here the output is written to memory once (19 MB). On a shared
    machine memory bandwidth is what other jobs take away, so this is both faster and steadier. The
    operations and their order are the same, so the values are bit-identical to that expression.
    """
    import torch

    if images.dim() == 3:
        images = images.unsqueeze(1)
    images = images.to(device if device is not None else images.device, non_blocking=True)
    b, c, h, w = images.shape
    channels = pp.channels if c == 1 else c
    out = torch.empty(
        (b, channels, h, w),
        dtype=torch.float32,
        device=images.device,
        memory_format=memory_format or torch.contiguous_format,
    )
    mean, std = _mean_std(out.device, pp.channels)
    step = max(1, _CPU_SLICE_BYTES // (4 * channels * h * w)) if out.device.type == "cpu" else b
    for i in range(0, b, step):
        o = out[i : i + step]
        scaled = o[:, :c]  # the image's own channel(s), scaled to [0, 1] in place
        scaled.copy_(images[i : i + step]).div_(255.0)
        for k in range(c, channels):  # pseudo-RGB: the grey channel repeated, normalised per channel
            torch.sub(scaled, mean[:, k : k + 1], out=o[:, k : k + 1]).div_(std[:, k : k + 1])
        scaled.sub_(mean[:, :c]).div_(std[:, :c])
    return out


# 2 MB slices were the fastest of 512 KB, 2 MB and whole batches on a 2-core AMD EPYC (1 MB L2 per core,
# 32 MB L3): 18-27 ms per 200 pseudo-RGB 224 px images, against 23-32 ms and 21-37 ms.
_CPU_SLICE_BYTES = 2 << 20
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
