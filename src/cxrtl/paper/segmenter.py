"""The reproduction's lung segmenter: a small U-Net trained on the reproduction's own COVID split.

Training on ``splits/covid.csv`` (its train part; validation picks the epoch) means no image of any
classifier's test split ever trains the segmenter, so its masks can be used downstream without leaking the
test set. Its test Dice and IoU (with 95% intervals) and the best/median/worst overlays go into the report.

Layout: ``OUT/segmenter/`` is a `cxrtl segment train` run dir, ``OUT/segmenter/test/`` its evaluation.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import CxrtlError
from ..fsutil import read_json

log = logging.getLogger(__name__)

SEG_DIR = "segmenter"


def segmenter_init(encoder: str, allow_random_init: bool, no_weights: str | None) -> str:
    """``imagenet`` when the encoder's ImageNet weights can be had, else ``none`` (with --allow-random-init).

    ``no_weights`` (the classifiers' ImageNet weights are unavailable) skips the download attempt.
    """
    from ..segmentation.model import build_segmenter

    reason = no_weights
    if reason is None:
        try:
            build_segmenter(encoder, 1, pretrained=True)
            return "imagenet"
        except CxrtlError as exc:
            reason = str(exc)
    if not allow_random_init:
        raise CxrtlError(
            f"the lung segmenter: {reason.rstrip('.')}; pass --allow-random-init, or --segmenter-epochs 0"
        )
    return "none"


def skip_reason(covid) -> str | None:
    """Why no segmenter can be trained on this COVID dataset (no masks), or None."""
    from ..segmentation.data import require_masks

    try:
        require_masks(covid, covid.records)
    except CxrtlError as exc:
        return str(exc)
    return None


def run_segmenter(
    root: str,
    split_csv: Path,
    out: Path,
    *,
    epochs: int,
    image_size: int,
    init: str,
    seed: int,
    device: str,
    progress: bool,
) -> dict:
    """Train (or resume, or skip) the segmenter on ``split_csv`` and evaluate it -> the results entry."""
    from ..segmentation.evaluate import evaluate_segmenter
    from ..segmentation.train import SegmentConfig, train_segmenter
    from ..training.resume import STATE_FILE
    from ..training.run_dir import run_status

    run_dir = out / SEG_DIR
    status = run_status(run_dir)
    metrics_file = run_dir / "test" / "metrics.json"
    if status == "finished" and metrics_file.is_file():
        log.info("segmenter: already complete, skipped")
        return _entry(run_dir, read_json(run_dir / "summary.json", "run summary"), read_json(metrics_file))
    cfg = SegmentConfig(
        data=root,
        out=str(run_dir),
        split=str(split_csv),
        init=init,
        image_size=image_size,
        epochs=epochs,
        milestones=[],
        seed=seed,
        device=device,
        progress=progress,
    )
    if status == "unfinished" and (run_dir / STATE_FILE).is_file():
        log.info("segmenter: resuming an interrupted run")
        summary = train_segmenter(cfg, resume=True)
    elif status == "finished":
        summary = read_json(run_dir / "summary.json", "run summary")
    else:
        cfg.overwrite = status == "unfinished"
        log.info("segmenter: training a %d px U-Net for %d epochs (init %s)", image_size, epochs, init)
        summary = train_segmenter(cfg)
    metrics = evaluate_segmenter(
        run_dir, root, run_dir / "test", split_csv=split_csv, device=device, progress=progress
    )
    return _entry(run_dir, summary, metrics)


def _entry(run_dir: Path, summary: dict, metrics: dict) -> dict:
    cfg = summary.get("config", {})
    return {
        "run_dir": str(run_dir),
        "encoder": summary.get("encoder"),
        "init": cfg.get("init"),
        "random_init": cfg.get("init") == "none",
        "image_size": cfg.get("image_size"),
        "epochs": cfg.get("epochs"),
        "best_epoch": summary.get("best_epoch"),
        "best_val_dice": summary.get("best_val_dice"),
        "seconds": summary.get("seconds"),
        "figure": str(run_dir / "test" / "overlays.png"),
        "test": metrics,
    }


MASKED_SPLIT = "pneumonia_masked.csv"  # splits/: the pneumonia split with each image's lung mask
MASK_DIR = "pneumonia_masks"


def pneumonia_masks(
    pneu, split_csv: Path, out: Path, *, seg_run: str | None, given: str | None, device: str, progress: bool
) -> dict | None:
    """Lung masks for the pneumonia split, so Exp. 3's evaluation can measure Grad-CAM inside the lungs.

    ``given`` (``--pneumonia-masks``) is a user's mask folder; otherwise the reproduction's segmenter
    (``seg_run``, trained on the COVID split only, so it never saw a Kermany image) writes the split's masks
    into ``OUT/pneumonia_masks/``, never into the dataset. Returns None when neither exists, else
    ``{"source", "dir", "split", "written"}``; the split with ``mask_path`` is ``splits/pneumonia_masked.csv``.
    Written once: a later call reuses the CSV and only fills masks that are missing.
    """
    from ..data import read_split_csv, write_split_csv
    from ..segmentation.masks import attach_masks, mask_file, write_dataset_masks

    if given is None and seg_run is None:
        return None
    split = read_split_csv(split_csv, pneu)
    folder = Path(given) if given is not None else out / MASK_DIR
    written = 0
    if given is None and seg_run is not None:
        missing = {r.path for recs in split.values() for r in recs if not mask_file(folder, r).is_file()}
        if missing:
            log.info("pneumonia masks: segmenting %d images with %s", len(missing), seg_run)
            written, failures = write_dataset_masks(
                pneu.root, seg_run, folder, device, only=missing, progress=progress
            )
            for path, why in failures:
                log.warning("no mask for %s: %s", path, why)
    masked = attach_masks(pneu, split, folder)
    target = split_csv.parent / MASKED_SPLIT
    write_split_csv(target, masked)
    return {
        "source": "given" if given is not None else "segmenter",
        "dir": str(folder.resolve()),
        "split": str(target),
        "written": written,
    }
