"""The segmenter: a U-Net with a light timm encoder (segmentation-models-pytorch), saved as safetensors + JSON.

A segmenter run directory has the same files as a classifier run (best/last checkpoints, history.csv,
summary.json, state.safetensors) but its checkpoints carry ``format: cxrtl-segmenter``, so neither kind can
be mistaken for the other.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import CxrtlError
from ..fsutil import json_safe, read_json, read_safetensors_header, sha256_file, write_json, write_safetensors

FORMAT = "cxrtl-segmenter"
VERSION = 1
# mobilenetv3_small: ~1.4 M parameters with this decoder, a few times faster on CPU than the classifier.
DEFAULT_ENCODER = "tu-mobilenetv3_small_100"
DECODER_CHANNELS = (64, 32, 16, 8, 8)


def _smp():
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise CxrtlError(
            "lung segmentation needs segmentation-models-pytorch; pip install 'cxrtl[segment]'"
        ) from None
    return smp


def _encoder_name(encoder: str) -> str:
    """smp names timm encoders ``tu-NAME``; a bare timm name gets the prefix."""
    smp = _smp()
    if encoder in smp.encoders.get_encoder_names():
        return encoder
    name = encoder.removeprefix("tu-")
    import timm

    if not timm.is_model(name):
        raise CxrtlError(f"unknown encoder {encoder!r}; give a timm model name such as {DEFAULT_ENCODER}")
    return "tu-" + name


@contextmanager
def _hub_offline(on: bool):
    """huggingface_hub in offline mode for the block (its cache only, no retries), when ``on``."""
    if not on:
        yield
        return
    from huggingface_hub import constants

    saved, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def build_segmenter(
    encoder: str = DEFAULT_ENCODER,
    in_chans: int = 1,
    pretrained: bool = False,
    decoder_channels: tuple[int, ...] = DECODER_CHANNELS,
) -> torch.nn.Module:
    """A U-Net with one output channel (lung logit); ``pretrained``: ImageNet encoder weights (needs the Hub)."""
    smp = _smp()
    name = _encoder_name(encoder)
    kwargs: dict[str, Any] = {
        "encoder_name": name,
        "in_channels": in_chans,
        "classes": 1,
        "decoder_channels": tuple(decoder_channels),
        "encoder_depth": len(decoder_channels),
    }
    offline = False
    if pretrained and name.startswith("tu-"):  # timm encoder: offline, fail in seconds, not after retries
        from ..model import imagenet_weights_offline

        try:
            offline = imagenet_weights_offline(name.removeprefix("tu-")) is not None  # cached: read it there
        except CxrtlError:
            raise CxrtlError(
                f"cannot get ImageNet weights for encoder {name}: the Hugging Face Hub is unreachable "
                "(offline?) and they are not in its local cache; use --init none to train the encoder from "
                "random weights"
            ) from None
    try:
        with _hub_offline(offline):
            return smp.Unet(encoder_weights="imagenet" if pretrained else None, **kwargs)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        if not pretrained:
            raise CxrtlError(f"cannot build a U-Net with encoder {name} ({str(exc)[:160]})") from None
        raise CxrtlError(
            f"cannot get ImageNet weights for encoder {name} (offline?); "
            "use --init none to train the encoder from random weights"
        ) from None


def save_segmenter(stem: Path, model: torch.nn.Module, meta: dict[str, Any]) -> Path:
    """``<stem>.safetensors`` (weights, metadata embedded) then ``<stem>.json``, both atomic."""
    from ..checkpoint import unwrap

    core = unwrap(model)
    full = json_safe({**meta, "format": FORMAT, "version": VERSION})
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in core.state_dict().items()}
    weights = stem.parent / (stem.name + ".safetensors")
    write_safetensors(weights, tensors, {"format": FORMAT, "cxrtl_meta": json.dumps(full, sort_keys=True)})
    write_json(stem.parent / (stem.name + ".json"), {**full, "weights_sha256": sha256_file(weights)})
    return weights


def resolve_segmenter(path: str | os.PathLike) -> Path:
    """SEG_RUN dir -> its best.safetensors; a .json -> its .safetensors; one-line errors otherwise."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "best.safetensors"
    elif p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    if not p.is_file():
        raise CxrtlError(f"segmenter {path} not found (no {p.name}); give a run dir of `cxrtl segment train`")
    return p


def read_segmenter_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a segmenter checkpoint; a classifier checkpoint gets a one-line error naming it."""
    weights = resolve_segmenter(path)
    embedded = read_safetensors_header(weights, what="segmenter").get("__metadata__") or {}
    fmt = embedded.get("format")
    if fmt == "cxrtl-checkpoint":
        raise CxrtlError(
            f"{path} is a classifier run, not a segmenter; give a run dir written by `cxrtl segment train`"
        )
    if fmt != FORMAT or "cxrtl_meta" not in embedded:
        raise CxrtlError(
            f"{weights} is not a cxrtl segmenter; give a run dir written by `cxrtl segment train`"
        )
    meta = json.loads(embedded["cxrtl_meta"])
    sidecar = weights.with_suffix(".json")
    if sidecar.is_file():
        want = (read_json(sidecar, "segmenter metadata") or {}).get("weights_sha256")
        if want and want != sha256_file(weights):
            raise CxrtlError(f"{weights} does not match the SHA-256 in {sidecar.name}; restore it or retrain")
    return meta


def load_segmenter(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """-> (U-Net in eval mode, metadata); never unpickles anything."""
    from safetensors.torch import load_file

    meta = read_segmenter_meta(path)
    model = build_segmenter(meta["encoder"], int(meta["in_chans"]), False, tuple(meta["decoder_channels"]))
    try:
        model.load_state_dict(load_file(str(resolve_segmenter(path))), strict=True)
    except RuntimeError as exc:
        raise CxrtlError(f"segmenter {path} does not fit its declared U-Net ({str(exc)[:160]})") from None
    return model.to(device).eval(), meta


def is_classifier_run(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a cxrtl classifier checkpoint (so it is refused as a segmenter)."""
    try:
        weights = resolve_segmenter(path)
        return (read_safetensors_header(weights).get("__metadata__") or {}).get(
            "format"
        ) == "cxrtl-checkpoint"
    except CxrtlError:
        return False
