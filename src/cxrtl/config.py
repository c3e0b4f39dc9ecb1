"""Training configuration: one dataclass whose field names are the CLI long options, YAML in and out."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import CxrtlError

SCHEMES = ("finetune", "extractor")
LOSSES = ("ce", "wce-1cf", "wce-icf", "focal")
FOCAL_ALPHAS = ("none", "1cf", "icf")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
SELECT_BY = ("val_acc", "val_loss")  # which validation number picks the best checkpoint
DEFAULT_BACKBONE = "densenet121"
# Paper §IV: batch size / learning rate = 1.6e4 (batch 16 -> lr 1e-3, as the authors' notebook ran).
BATCH_PER_LR = 1.6e4


@dataclass
class TrainConfig:
    """Everything one training run needs; YAML keys and CLI long options are these names ('_' <-> '-')."""

    data: str | None = None  # dataset root
    out: str | None = None  # run directory
    split: str | None = None  # split CSV; None -> the dataset's default split, saved into the run dir
    backbone: str | None = None  # timm name; None -> densenet121, or the checkpoint's for a transfer
    init: str = "imagenet"  # imagenet | none | path of a cxrtl checkpoint (transfer)
    pretrained_file: str | None = (
        None  # local ImageNet weights (.safetensors); else env CXRTL_IMAGENET_WEIGHTS
    )
    keep_hidden: bool = False  # transfer: keep the trained n->64 layer, replace only the last one
    scheme: str = "finetune"  # finetune | extractor (frozen backbone incl. BatchNorm statistics)
    loss: str = "ce"  # ce | wce-1cf | wce-icf | focal
    focal_gamma: float = 2.0
    focal_alpha: str = "none"  # none | 1cf | icf: per-class alpha of the focal loss
    channels: int = 3  # 1 | 3 (pseudo-RGB)
    input: str = "raw"  # raw | masked
    image_size: int = 224
    epochs: int = 30
    batch_size: int = 16  # per process; the lr rule uses the global batch (batch_size x processes)
    lr: float | None = None  # None -> global batch / 1.6e4
    milestones: list[int] = field(default_factory=lambda: [8, 15, 25])
    gamma: float = 0.1
    warmup_steps: int | None = None  # linear lr warm-up; None -> none alone, min(200, an epoch) with DDP
    seed: int = 2022
    group_by: str | None = None  # None | patient: patient-grouped split when the split is made here
    official: bool = False  # Kermany: use the official train/val/test folders
    ratios: list[float] | None = None  # train/val/test ratios; None -> the dataset kind's default
    device: str = "auto"  # auto | cpu | cuda
    workers: int = 0  # DataLoader worker processes (the cache makes 0 fast enough on most machines)
    precision: str = "auto"  # auto (bf16 on CUDA with native bf16, else fp32) | fp32 | bf16
    channels_last: bool | None = None  # None -> on with CUDA, off on CPU
    compile: bool = False  # torch.compile the model
    tensorboard: bool = False  # also log to RUN_DIR/tensorboard when tensorboard is installed
    cache_dir: str | None = None  # image cache; None -> env CXRTL_CACHE_DIR or ~/.cache/cxrtl
    overwrite: bool = False  # replace an existing run in --out
    progress: bool = True  # tqdm progress bars on stderr (only when stderr is a terminal)
    select_by: str = "val_acc"  # val_acc (the paper's; ties keep the earlier epoch) | val_loss (lowest)

    def resolved_lr(self, world_size: int = 1) -> float:
        """The learning rate: the given one, or the paper's rule on the global batch."""
        return float(self.lr) if self.lr is not None else self.batch_size * world_size / BATCH_PER_LR

    def validate(self) -> TrainConfig:
        """Check choices and ranges; raise a one-line CxrtlError naming the option."""

        def bad(key, value, want):
            raise CxrtlError(f"invalid {key.replace('_', '-')} {value!r}; expected {want}")

        for key, choices in (
            ("scheme", SCHEMES),
            ("loss", LOSSES),
            ("focal_alpha", FOCAL_ALPHAS),
            ("device", DEVICES),
            ("precision", PRECISIONS),
            ("input", ("raw", "masked")),
            ("select_by", SELECT_BY),
        ):
            if getattr(self, key) not in choices:
                bad(key, getattr(self, key), " | ".join(choices))
        if self.channels not in (1, 3):
            bad("channels", self.channels, "1 or 3")
        if self.group_by not in (None, "patient"):
            bad("group_by", self.group_by, "patient (or leave it out)")
        for key, low in (("image_size", 8), ("epochs", 1), ("batch_size", 1), ("workers", 0)):
            if getattr(self, key) < low:
                bad(key, getattr(self, key), f"an integer >= {low}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            bad("warmup_steps", self.warmup_steps, "an integer >= 0")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            bad("lr", self.lr, "a positive number")
        if not (math.isfinite(self.gamma) and 0 < self.gamma <= 1):
            bad("gamma", self.gamma, "a number in (0, 1]")
        if not (math.isfinite(self.focal_gamma) and self.focal_gamma >= 0):
            bad("focal_gamma", self.focal_gamma, "a number >= 0")
        if any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(set(self.milestones)):
            bad("milestones", self.milestones, "increasing positive epoch numbers")
        if self.ratios is not None and (
            len(self.ratios) not in (3, 4)
            or any(r < 0 for r in self.ratios)
            or not math.isclose(sum(self.ratios), 1.0, abs_tol=1e-6)
        ):
            bad(
                "ratios",
                self.ratios,
                "three (train,val,test) or four (train,val,calibration,test) non-negative numbers summing to 1",
            )
        if self.keep_hidden and self.init in ("imagenet", "none"):
            raise CxrtlError(
                "keep-hidden needs --init PATH of a cxrtl checkpoint to keep the hidden layer from"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_FIELDS = {f.name: f for f in fields(TrainConfig)}


def _coerce(key: str, value: Any) -> Any:
    """Turn a YAML value into the field's type, or raise a one-line error."""
    if value is None:
        return None
    kind = _FIELDS[key].type
    try:
        if "bool" in kind:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind.startswith("int"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError
            return value
        if kind.startswith("float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
            return float(value)
        if kind.startswith("list[int]"):
            if not isinstance(value, list) or any(
                isinstance(v, bool) or not isinstance(v, int) for v in value
            ):
                raise TypeError
            return list(value)
        if kind.startswith("list[float]"):
            if isinstance(value, str):  # "0.7,0.2,0.1" (the comma form, as `data split --ratios` takes)
                value = _comma_floats(key, value)
            if not isinstance(value, list) or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) for v in value
            ):
                raise TypeError
            return [float(v) for v in value]
        if isinstance(value, (dict, list)):
            raise TypeError
        return str(value)
    except TypeError:
        raise CxrtlError(
            f"config key {key!r} has value {value!r} of the wrong type; expected {kind}"
        ) from None


def _comma_floats(key: str, text: str) -> list[float]:
    """``"0.7,0.2,0.1"`` (commas and/or spaces) -> floats, or a one-line error naming the option."""
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise CxrtlError(
            f"{key.replace('_', '-')} {text!r} are not numbers; give three like 0.7,0.15,0.15"
        ) from None


def config_from_dict(d: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Overlay the keys of ``d`` (CLI or YAML spelling) on ``base``; unknown keys are an error."""
    values = (base or TrainConfig()).to_dict()
    for raw_key, value in d.items():
        key = str(raw_key).replace("-", "_")
        if key not in _FIELDS:
            raise CxrtlError(f"unknown config key {raw_key!r}; valid keys: {', '.join(_FIELDS)}")
        values[key] = _coerce(key, value)
    return TrainConfig(**values)


def load_config(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """Read a YAML config (same keys as the CLI long options) into a TrainConfig."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CxrtlError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CxrtlError(f"cannot read config file {path}: {exc}") from None
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise CxrtlError(f"config file {path} is not valid YAML{at}; fix its syntax") from None
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise CxrtlError(f"config file {path} must be a mapping of option: value, not {type(d).__name__}")
    return config_from_dict(d, base)
