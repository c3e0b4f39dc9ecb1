"""``cxrtl segment evaluate``: Dice and IoU on the test split, with intervals, the worst images and overlays."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import CxrtlError
from ..fsutil import ensure_dir, write_json
from .metrics import dice_iou, mean_interval

log = logging.getLogger(__name__)


def evaluate_segmenter(
    seg_run: str | os.PathLike,
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    split_csv: str | os.PathLike | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Masks predicted for the test split of ``data`` vs its true masks -> metrics.json (+ overlays.png).

    Each mask is predicted and post-processed at the image's own size, as ``segment predict`` writes it,
    and compared with the true mask brought to that size (nearest).
    """
    from tqdm.auto import tqdm

    from ..data.image_io import load_gray
    from ..data.sources import load_dataset
    from ..data.splits import read_split_csv
    from .data import require_masks, resize_mask
    from .predict import Segmenter

    seg = Segmenter.load(seg_run, device)
    index = load_dataset(data)
    csv_path = (
        Path(split_csv) if split_csv else Path(seg.meta.get("split_csv") or Path(seg_run) / "split.csv")
    )
    if not csv_path.is_file():
        raise CxrtlError(f"split {csv_path} not found; pass --split SPLIT.csv naming the test images")
    records = read_split_csv(csv_path, index)["test"]
    if not records:
        raise CxrtlError(f"the split {csv_path} has no test images; evaluate with a split that has some")
    require_masks(index, records)
    rows = []
    for r in tqdm(records, desc="segment", unit="image", disable=not progress):
        gray = load_gray(index.abspath(r.path))
        assert r.mask_path is not None
        true = resize_mask(load_gray(index.abspath(r.mask_path)), gray.shape[:2])
        pred = seg.predict(gray)
        d, i = dice_iou(pred, true)
        rows.append({"path": r.path, "dice": d, "iou": i, "_gray": gray, "_true": true, "_pred": pred})
    out = ensure_dir(out_dir)
    order = sorted(range(len(rows)), key=lambda k: rows[k]["dice"])
    metrics = {
        "segmenter": str(Path(seg_run).resolve()),
        "data": str(index.root),
        "split": str(csv_path.resolve()),
        "n_images": len(rows),
        "dice": mean_interval([r["dice"] for r in rows]),
        "iou": mean_interval([r["iou"] for r in rows]),
        "interval": "95% percentile bootstrap over images (2000 resamples, seed 0)",
        "worst": [{k: rows[k2][k] for k in ("path", "dice", "iou")} for k2 in order[:5]],
        "figure": "overlays.png",
    }
    write_json(out / "metrics.json", metrics)
    picks = {"best": order[-1], "median": order[len(order) // 2], "worst": order[0]}
    save_overlays(out / "overlays.png", {name: rows[k] for name, k in picks.items()})
    return metrics


def save_overlays(path: Path, picks: dict[str, dict]) -> Path:
    """One panel per pick: the radiograph, the true mask's outline (green) and the predicted one (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fsutil import atomic_path

    fig, axes = plt.subplots(1, len(picks), figsize=(4 * len(picks), 4.4))
    for ax, (name, row) in zip(np.atleast_1d(axes), picks.items()):
        ax.imshow(row["_gray"], cmap="gray")
        ax.contour(row["_true"] > 0, levels=[0.5], colors="lime", linewidths=1.2)
        ax.contour(row["_pred"] > 0, levels=[0.5], colors="red", linewidths=1.2)
        ax.set_title(f"{name}: Dice {row['dice']:.3f}\n{Path(row['path']).name}", fontsize=9)
        ax.axis("off")
    fig.suptitle("true lungs (green) vs predicted (red)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))  # room for the title above the panels' own titles
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
