"""Checkpoints: weights in safetensors, a JSON beside them saying how to use them; never unpickled.

``<stem>.safetensors`` also embeds the same metadata in its header, so the weights file alone is enough;
the JSON records the weights' SHA-256, so a weights file swapped or edited after saving is refused.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, cast

import torch

from .data.preprocess import Preprocess
from .errors import CxrtlError
from .fsutil import json_safe, read_json, read_safetensors_header, sha256_file, write_json, write_safetensors
from .model import CxrModel, build_backbone, check_backbone
from .model_ref import resolve_model

log = logging.getLogger(__name__)

FORMAT = "cxrtl-checkpoint"
VERSION = 1


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Path of the weights of a MODEL (run dir, bundle, .safetensors/.json, hf://): see :mod:`cxrtl.model_ref`."""
    return resolve_model(path).require_weights()


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of the weights of the bare CxrModel (unwrapping DDP / torch.compile)."""
    model = unwrap(model)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The CxrModel inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]  # torch.compile wraps a Module
        else:
            return model


def save_checkpoint(path_stem: str | os.PathLike, model: torch.nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``<stem>.safetensors`` then ``<stem>.json`` atomically; returns the .safetensors path."""
    stem = Path(path_stem)
    if stem.suffix in (".safetensors", ".json"):
        stem = stem.with_suffix("")
    core = cast(CxrModel, unwrap(model))
    full = {
        "format": FORMAT,
        "version": VERSION,
        "backbone": core.backbone_name,
        "classes": list(core.classes),
        "in_chans": core.in_chans,
        "hidden": core.head[0].out_features,
        **meta,
    }
    full["format"], full["version"] = FORMAT, VERSION
    weights = stem.parent / (stem.name + ".safetensors")
    full = json_safe(full)
    embedded = json.dumps(full, sort_keys=True)
    write_safetensors(weights, _state_dict(core), {"format": FORMAT, "cxrtl_meta": embedded})
    full["weights_sha256"] = sha256_file(weights)
    write_json(stem.parent / (stem.name + ".json"), full)
    return weights


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a checkpoint (run dir, .json or .safetensors), checked to be a cxrtl checkpoint."""
    weights = resolve_checkpoint(path)
    header = read_safetensors_header(weights)
    embedded = header.get("__metadata__") or {}
    if embedded.get("format") != FORMAT or "cxrtl_meta" not in embedded:
        raise CxrtlError(
            f"{weights} is a safetensors file but not a cxrtl checkpoint (no cxrtl metadata); "
            "use a file written by cxrtl train"
        )
    try:
        meta = json.loads(embedded["cxrtl_meta"])
    except json.JSONDecodeError:
        raise CxrtlError(f"{weights} has corrupt cxrtl metadata; use a file written by cxrtl train") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CxrtlError(
            f"{weights} is not a cxrtl checkpoint (its metadata names another format); "
            "use a file written by cxrtl train"
        )
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= VERSION:
        raise CxrtlError(
            f"{weights} is a cxrtl checkpoint of version {version!r}, but this cxrtl reads "
            f"versions 1..{VERSION}; upgrade cxrtl or use a checkpoint it wrote"
        )
    sidecar = weights.with_suffix(".json")
    if sidecar.is_file():
        side = read_json(sidecar, "checkpoint metadata")
        want = side.get("weights_sha256") if isinstance(side, dict) else None
        if want and want != sha256_file(weights):
            raise CxrtlError(
                f"{weights} does not match the SHA-256 recorded in {sidecar.name} (changed "
                "after saving); restore the original files or retrain"
            )
        if want:
            meta["weights_sha256"] = want  # binds the decision record to these weights
    for key in ("backbone", "classes", "in_chans"):
        if key not in meta:
            raise CxrtlError(f"{weights} metadata lacks {key!r}; use a file written by cxrtl train")
    return meta


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Load a cxrtl checkpoint -> (CxrModel in eval mode, meta dict); never unpickles anything."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = resolve_checkpoint(path)
    meta = read_meta(weights)
    check_backbone(meta["backbone"])
    try:
        # Read to host memory: the model is built on the CPU, so loading to a GPU here would copy the
        # weights GPU -> CPU in load_state_dict and back again in .to(map_location). Now: one upload.
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CxrtlError(
            f"checkpoint {weights} is damaged ({str(exc).splitlines()[0][:160]}); restore it or retrain"
        ) from None
    net = build_backbone(meta["backbone"], int(meta["in_chans"]))
    model = CxrModel(
        net, meta["classes"], int(meta["in_chans"]), meta["backbone"], hidden=int(meta.get("hidden", 64))
    )
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CxrtlError(
            f"checkpoint {weights} does not fit its declared model {meta['backbone']} "
            f"({str(exc).splitlines()[0][:160]}); it is damaged or was edited"
        ) from None
    model.to(map_location).eval()
    return model, meta


def checkpoint_preprocess(model: CxrModel, meta: dict[str, Any], weights: Path) -> Preprocess:
    """The preprocessing a loaded checkpoint was trained with, checked against its model's input channels."""
    pp = Preprocess.from_dict(meta.get("preprocess") or {"channels": model.in_chans})
    if pp.channels != model.in_chans:
        raise CxrtlError(
            f"checkpoint {weights} declares {pp.channels}-channel preprocessing for a "
            f"{model.in_chans}-channel model; it is damaged or was edited"
        )
    return pp
