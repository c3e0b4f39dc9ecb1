"""The paper's model (Table I): a timm backbone minus classifier, then Linear(n,64), Mish, Linear(64,k)."""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CxrtlError
from .fsutil import read_safetensors_header

log = logging.getLogger(__name__)

HIDDEN = 64
WEIGHTS_ENV = "CXRTL_IMAGENET_WEIGHTS"


class CxrModel(nn.Module):
    """Backbone features -> MLP head -> logits; carries its class names and input channels."""

    def __init__(
        self,
        backbone: nn.Module,
        classes: Sequence[str],
        in_chans: int,
        backbone_name: str,
        hidden: int = HIDDEN,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = make_head(backbone.num_features, len(classes), hidden)  # type: ignore[arg-type]  # timm: int
        self.classes = list(classes)
        self.in_chans = int(in_chans)
        self.backbone_name = backbone_name
        self.backbone_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        # The head runs in fp32 even under autocast: bf16 logits (8 mantissa bits) tie in AUC and threshold
        # choice and skew a fitted temperature, and .float() afterwards cannot bring the bits back.
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.head(features.float())

    def freeze_backbone(self) -> CxrModel:
        """Feature-extractor scheme: no gradients AND no BatchNorm statistics updates in the backbone."""
        self.backbone_frozen = True
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()
        return self

    def train(self, mode: bool = True) -> CxrModel:
        # A frozen backbone stays in eval mode so its BatchNorm running statistics never move
        # (the authors' "extractor" runs left them training).
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self


def make_head(n_features: int, num_classes: int, hidden: int = HIDDEN) -> nn.Sequential:
    """The paper's head: Linear(n, 64) -> Mish -> Linear(64, k)."""
    return nn.Sequential(nn.Linear(n_features, hidden), nn.Mish(), nn.Linear(hidden, num_classes))


def check_backbone(name: str) -> None:
    """Raise a one-line error for a name timm does not know, suggesting close ones."""
    import timm

    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models() for valid names"
        raise CxrtlError(f"unknown backbone {name!r}; {hint}")


def _imagenet_file(pretrained_file: str | os.PathLike | None) -> Path | None:
    """The local ImageNet weights file from the argument or the environment, checked to be safetensors."""
    source = "--pretrained-file"
    if not pretrained_file:
        pretrained_file, source = os.environ.get(WEIGHTS_ENV) or None, WEIGHTS_ENV
    if not pretrained_file:
        return None
    path = Path(pretrained_file).expanduser()
    if not path.is_file():
        raise CxrtlError(
            f"pretrained weights file {path} (from {source}) does not exist; give the path of "
            "the backbone's model.safetensors"
        )
    read_safetensors_header(path, what="pretrained weights file")
    return path


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One short TCP connect to the Hub: offline, fail in seconds rather than after a minute of retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def imagenet_weights_offline(name: str) -> Path | None:
    """When the Hub cannot be reached: the backbone's weights from the local Hub cache, or a one-line error.

    Returns None when the Hub is reachable, so timm fetches the weights (or reads its cache) itself. With
    HF_HUB_OFFLINE set the Hub is not tried at all (huggingface_hub reads that variable only once, at import).
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on") and _hub_reachable():
        return None
    import timm.models

    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None)
    if repo:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo, getattr(cfg, "hf_hub_filename", None) or "model.safetensors")
        if isinstance(cached, str):
            return Path(cached)
    raise CxrtlError(
        f"cannot get ImageNet weights for {name}: the Hugging Face Hub is unreachable "
        f"(offline?) and they are not in its local cache; download {repo or name}'s "
        f"model.safetensors and pass --pretrained-file PATH or set {WEIGHTS_ENV}, "
        "or use --init none"
    )


def build_backbone(name: str, in_chans: int, pretrained: bool = False, file: Path | None = None) -> nn.Module:
    """The timm backbone without classifier; ``pretrained``: ImageNet weights from ``file`` or the Hub."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": in_chans}
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    if file is None:
        file = imagenet_weights_offline(name)
    if file is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(file)}
    try:
        backbone = timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        if file is not None:
            raise CxrtlError(
                f"pretrained weights file {file} does not fit backbone {name} "
                f"({str(exc).splitlines()[0][:200]}); give the weights of {name}"
            ) from None
        raise CxrtlError(
            f"cannot get ImageNet weights for {name} from the Hugging Face Hub (offline?); "
            f"download its model.safetensors and pass --pretrained-file PATH or set "
            f"{WEIGHTS_ENV}, or use --init none"
        ) from None
    if file is not None:
        _check_all_loaded(backbone, file, name)
    return backbone


def _check_all_loaded(backbone: nn.Module, file: Path, name: str) -> None:
    """timm loads non-strictly once the classifier is dropped: check every backbone tensor came from file."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as fh:
        keys = {k.removeprefix("module.") for k in fh.keys()}  # noqa: SIM118 (safe_open is not iterable)
    classifier = getattr(backbone, "pretrained_cfg", {}).get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    own = set(backbone.state_dict())
    missing = sorted(own - keys)
    extra = sorted(k for k in keys - own if not any(k.startswith(c + ".") for c in classifier))
    if missing or extra:
        example = (missing or extra)[0]
        raise CxrtlError(
            f"pretrained weights file {file} does not fit backbone {name} ({len(missing)} "
            f"tensors missing, {len(extra)} unexpected, e.g. {example}); "
            f"give the weights of {name}"
        )


def check_classes(classes: Sequence[str], in_chans: int) -> list[str]:
    """Class names as strings; a one-line error for fewer than two classes or in_chans other than 1 or 3."""
    classes = [str(c) for c in classes]
    if len(classes) < 2:
        raise CxrtlError(f"need at least two classes, got {classes}")
    if in_chans not in (1, 3):
        raise CxrtlError(f"in_chans must be 1 or 3, not {in_chans}")
    return classes


def new_model(
    backbone: str | None = "densenet121",
    classes: Sequence[str] = ("0", "1"),
    in_chans: int = 3,
    init: str = "imagenet",
    keep_hidden: bool = False,
    pretrained_file: str | os.PathLike | None = None,
) -> CxrModel:
    """Build the model from ImageNet weights or random weights.

    A transfer from a checkpoint (``init`` a path) is :func:`cxrtl.transfer.create_model` (the public
    ``cxrtl.create_model``), which takes the same arguments: this module knows nothing of checkpoint files.

    Args:
        backbone: timm model name (None: densenet121).
        classes: class names in label-index order.
        in_chans: 1 or 3; with 1 the pretrained first conv is adapted by timm (RGB filters summed).
        init: "imagenet" or "none".
        keep_hidden: only for a transfer; refused here.
        pretrained_file: local ImageNet weights (safetensors); default env CXRTL_IMAGENET_WEIGHTS.
    """
    classes = check_classes(classes, in_chans)
    if init not in ("imagenet", "none"):
        raise CxrtlError(
            f"cxrtl.model.new_model builds from 'imagenet' or 'none', not {init!r}; "
            "a checkpoint init is a transfer: use cxrtl.create_model"
        )
    if keep_hidden:
        raise CxrtlError("keep-hidden needs --init PATH of a cxrtl checkpoint")
    name = backbone or "densenet121"
    check_backbone(name)
    file = _imagenet_file(pretrained_file) if init == "imagenet" else None
    model = CxrModel(build_backbone(name, in_chans, init == "imagenet", file), classes, in_chans, name)
    log.debug("created %s (%s init, %d channels) for classes %s", name, init, in_chans, classes)
    return model


def set_scheme(model: CxrModel, scheme: str) -> CxrModel:
    """finetune: everything trains; extractor: only the head trains, the backbone is frozen incl. BN stats."""
    if scheme == "extractor":
        return model.freeze_backbone()
    if scheme != "finetune":
        raise CxrtlError(f"unknown scheme {scheme!r}; expected finetune or extractor")
    return model
