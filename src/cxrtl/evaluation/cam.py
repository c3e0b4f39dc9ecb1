"""Grad-CAM on the backbone's last feature map, overlays, and the share of saliency inside the lungs.

A model that looks outside the lungs (text markers, borders, shoulders) is learning shortcuts
(DeGrave et al. 2021); the CAM-energy fraction inside the lung mask makes that measurable. Its chance
level is the lung mask's share of the image (a CAM spread evenly lands there in that proportion), so the
two are reported side by side. A feature map under 4x4 cells gives CAMs too coarse to say much; cxrtl warns.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import CxrtlError

log = logging.getLogger(__name__)

COARSE_MAP = 4  # below this many feature-map cells a side, a CAM is too coarse to locate much


def feature_map_size(model, pp, device="cpu", warn: bool = True) -> tuple[int, int]:
    """(h, w) of the backbone's last feature map at the checkpoint's input size; warns when under 4x4.

    ``warn=False`` for callers that report the coarse map themselves (``evaluate`` puts it in metrics.json).
    """
    import torch

    from ..data.preprocess import normalize_batch

    probe = torch.zeros(1, 1, pp.image_size, pp.image_size, dtype=torch.uint8)
    model.eval()
    with torch.no_grad():
        feats = model.backbone.forward_features(normalize_batch(probe, pp, device))
    h, w = (int(feats.shape[-2]), int(feats.shape[-1])) if feats.dim() == 4 else (1, 1)
    if warn and min(h, w) < COARSE_MAP:
        log.warning(
            "the feature map is only %dx%d at %d px: each Grad-CAM cell covers a large part of the image, "
            "so the lung share is coarse; train at a larger --image-size for finer maps",
            h,
            w,
            pp.image_size,
        )
    return h, w


def mask_share(mask_u8: np.ndarray) -> float:
    """Share of the (model-input) image inside the lung mask: the chance level of :func:`lung_fraction`."""
    return float((np.asarray(mask_u8) >= 128).mean())


def cam_to_original(cam: np.ndarray, original_shape: tuple[int, int], pp) -> np.ndarray:
    """A CAM of the model's centre crop placed back on the original image (zero outside the crop).

    Inverts the geometry of :func:`~cxrtl.data.image_io.prepare_image`: resize of the shorter side to
    ``pp.resize_size``, then a centre crop of ``pp.image_size``.
    """
    from PIL import Image

    h, w = original_shape[:2]
    size, crop = pp.resize_size, pp.image_size
    rw, rh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    left, top = round((rw - crop) / 2.0), round((rh - crop) / 2.0)
    canvas = np.zeros((rh, rw), dtype=np.float32)
    canvas[max(top, 0) : top + crop, max(left, 0) : left + crop] = np.asarray(cam, dtype=np.float32)[
        max(-top, 0) : rh - top, max(-left, 0) : rw - left
    ]
    full = Image.fromarray(canvas, mode="F").resize((w, h), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(full, dtype=np.float32), 0.0, 1.0)


def grad_cam(model, x, class_index: int | Sequence[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """Grad-CAM maps for a normalised batch ``x`` [B, C, S, S] -> (cams float32 [B, S, S] in [0, 1], classes).

    The backbone's last feature map A (``forward_features``) is the layer; weights are the spatial mean of
    d logit_c / d A (Selvaraju et al. 2017); ``class_index`` None means each image's predicted class.
    """
    import torch
    import torch.nn.functional as F

    model.eval()
    backbone = model.backbone
    with torch.no_grad():
        feats = backbone.forward_features(x)
    if feats.dim() != 4:
        raise CxrtlError(
            f"Grad-CAM needs a convolutional backbone with a spatial feature map; "
            f"{getattr(model, 'backbone_name', 'this backbone')} gives shape {tuple(feats.shape)}"
        )
    if feats.shape[-2] * feats.shape[-1] < 4:  # a 1x1 map upsamples to a flat CAM: no "where" at all
        raise CxrtlError(
            f"Grad-CAM needs a feature map of at least 2x2, but "
            f"{getattr(model, 'backbone_name', 'this backbone')} gives "
            f"{feats.shape[-2]}x{feats.shape[-1]} at {x.shape[-1]} px; use a model trained at a "
            "larger --image-size (64 px or more for densenet121)"
        )
    feats = feats.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model.head(backbone.forward_head(feats))
        if class_index is None:
            targets = logits.argmax(dim=1)
        elif isinstance(class_index, int):
            targets = torch.full((logits.shape[0],), int(class_index), dtype=torch.long, device=logits.device)
        else:
            targets = torch.as_tensor(list(class_index), dtype=torch.long, device=logits.device)
        # Images in a batch are independent in eval mode, so one backward gives every image's gradient.
        score = logits.gather(1, targets.view(-1, 1)).sum()
        (grads,) = torch.autograd.grad(score, feats)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * feats.detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    heat = (cam / peak).float().cpu().numpy()
    return heat, [int(t) for t in targets.tolist()]


def lung_fraction(cam: np.ndarray, mask_u8: np.ndarray) -> float | None:
    """Share of CAM energy inside the lung mask: sum(cam * [mask]) / sum(cam); None if the CAM is empty."""
    cam = np.asarray(cam, dtype=np.float64)
    mask = np.asarray(mask_u8)
    if mask.shape != cam.shape:
        raise CxrtlError(f"lung mask shape {mask.shape} does not match the CAM {cam.shape}")
    total = float(cam.sum())
    if not np.isfinite(total) or total <= 0:
        return None
    return float(cam[mask >= 128].sum() / total)


def mask_for_input(mask, image_shape: tuple[int, int], pp) -> np.ndarray:
    """A mask (path or array) brought to the model input's geometry, exactly like its image."""
    from ..data.image_io import load_gray, prepare_mask

    arr = mask if isinstance(mask, np.ndarray) else load_gray(mask)
    return prepare_mask(arr, image_shape, pp)


def overlay(gray_u8: np.ndarray, cam: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """The grey model input with the CAM as a colour map on top -> uint8 RGB ``[S, S, 3]``."""
    import matplotlib

    colours = matplotlib.colormaps[cmap](np.clip(cam, 0.0, 1.0))[..., :3]
    grey = np.repeat((np.asarray(gray_u8, dtype=np.float64) / 255.0)[..., None], 3, axis=2)
    # Weight the colour by the CAM itself so that cold regions keep the radiograph visible.
    a = alpha * np.clip(cam, 0.0, 1.0)[..., None] ** 0.5
    out = (1.0 - a) * grey + a * colours
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def save_overlay(path: str | os.PathLike, gray_u8: np.ndarray, cam: np.ndarray) -> Path:
    """Write the overlay PNG atomically (``cam`` at the size of ``gray_u8``; see :func:`cam_to_original`)."""
    from PIL import Image

    from ..fsutil import write_bytes

    buf = io.BytesIO()
    Image.fromarray(overlay(gray_u8, cam), mode="RGB").save(buf, format="PNG")
    return write_bytes(path, buf.getvalue())


def overlay_name(image_path: str | os.PathLike, used: set[str] | None = None) -> str:
    """``<stem>.cam.png``, with ``-2``, ``-3``... when two inputs share a name."""
    stem = Path(image_path).stem or "image"
    name, n = f"{stem}.cam.png", 1
    while used is not None and name in used:
        n += 1
        name = f"{stem}-{n}.cam.png"
    if used is not None:
        used.add(name)
    return name


def mask_shares(index, records, pp) -> list[float | None]:
    """The lung mask's share of each record's model input (None without a readable mask): the chance level."""
    from ..data.image_io import load_gray, prepare_mask

    out: list[float | None] = []
    for r in records:
        share = None
        if r.mask_path:
            try:
                gray = load_gray(index.abspath(r.path), target_short_side=pp.resize_size)
                share = mask_share(prepare_mask(load_gray(index.abspath(r.mask_path)), gray.shape, pp))
            except CxrtlError as exc:
                log.debug("no lung share for %s: %s", r.path, exc)
        out.append(share)
    return out


def lung_fractions(
    model,
    index,
    records,
    pp,
    device="cpu",
    class_index: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> list[float | None]:
    """CAM-energy fraction inside the lungs per record (None where a record has no mask or cannot be read).

    Args:
        model: a CxrModel; index: the DatasetIndex the records' relative paths belong to.
        pp: the checkpoint's Preprocess; class_index: None = each image's predicted class.
        progress: show a tqdm bar on stderr (a CAM costs a forward and a backward pass per image).
    """
    import torch
    from tqdm import tqdm

    from ..data.image_io import load_gray, prepare_image, prepare_mask
    from ..data.preprocess import normalize_batch

    model.eval()
    probe = torch.zeros(1, 1, pp.image_size, pp.image_size, dtype=torch.uint8)
    grad_cam(
        model, normalize_batch(probe, pp, device)
    )  # a model without a usable map fails before any decoding
    out: list[float | None] = [None] * len(records)
    todo: list[tuple[int, np.ndarray, np.ndarray]] = []
    for i, r in enumerate(records):
        if not r.mask_path:
            continue
        try:
            gray = load_gray(index.abspath(r.path), target_short_side=pp.resize_size)
            mask = load_gray(index.abspath(r.mask_path))
            image = prepare_image(gray, pp, mask if pp.input == "masked" else None)
            todo.append((i, image, prepare_mask(mask, gray.shape, pp)))
        except CxrtlError as exc:
            log.warning("no lung fraction for %s: %s", r.path, exc)
    log.info("Grad-CAM lung fractions for %d of %d images (the others have no mask)", len(todo), len(records))
    for start in tqdm(
        range(0, len(todo), max(1, batch_size)),
        desc="grad-cam",
        unit="batch",
        disable=not progress,
        leave=False,
    ):
        chunk = todo[start : start + batch_size]
        batch = torch.from_numpy(np.stack([c[1] for c in chunk])[:, None])
        cams, _ = grad_cam(model, normalize_batch(batch, pp, device), class_index)
        for (i, _, pmask), cam in zip(chunk, cams):
            out[i] = lung_fraction(cam, pmask)
    return out
