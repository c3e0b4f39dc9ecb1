"""``cxrtl segment train``: a lung U-Net on a dataset's image/mask pairs, in a run directory like ``train``'s.

Reused from the classifier's trainer: the seeded split (:mod:`cxrtl.data.splits`), the run directory
checks and files (:mod:`cxrtl.training.run_dir`), the resumable state file (:mod:`cxrtl.training.resume`),
the seeded loaders (:func:`cxrtl.training.engine.make_loader`), bf16/channels_last numerics
(:func:`cxrtl.device.resolve_numerics`) and the per-batch normalisation. Only the epoch body differs:
the loss is Dice + BCE and the best epoch is the one with the highest validation Dice.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.preprocess import Preprocess, normalize_batch
from ..device import Numerics, resolve_device, resolve_numerics, seed_everything
from ..errors import CxrtlError
from ..fsutil import ensure_dir, write_csv, write_text
from ..training import resume as resume_state
from ..training.run_dir import check_out_dir, check_writable, clear_run, run_status, write_summary
from .model import DECODER_CHANNELS, DEFAULT_ENCODER, build_segmenter, save_segmenter

log = logging.getLogger(__name__)
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "val_iou", "lr", "seconds")
RESUME_OPTIONS = ("data", "device", "workers", "progress")


@dataclass
class SegmentConfig:
    """Everything one segmenter run needs; field names are the CLI long options."""

    data: str | None = None
    out: str | None = None
    split: str | None = None  # a split CSV (e.g. a classifier run's), so its test images stay unseen
    encoder: str = DEFAULT_ENCODER
    init: str = "imagenet"  # imagenet | none (encoder weights)
    channels: int = 1
    image_size: int = 256
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    milestones: list[int] = field(default_factory=lambda: [12, 17])
    gamma: float = 0.1
    seed: int = 2022
    ratios: list[float] | None = None
    group_by: str | None = None
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    workers: int = 0
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> SegmentConfig:
        if self.init not in ("imagenet", "none"):
            raise CxrtlError(f"invalid init {self.init!r}; expected imagenet | none")
        if self.channels not in (1, 3):
            raise CxrtlError(f"invalid channels {self.channels!r}; expected 1 or 3")
        for key, low in (("image_size", 32), ("epochs", 1), ("batch_size", 2), ("workers", 0)):
            if getattr(self, key) < low:
                raise CxrtlError(f"invalid {key.replace('_', '-')} {getattr(self, key)!r}; expected >= {low}")
        if self.image_size % 32:
            raise CxrtlError(f"invalid image-size {self.image_size}; a U-Net needs a multiple of 32")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise CxrtlError(f"invalid lr {self.lr!r}; expected a positive number")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Parts:
    model: torch.nn.Module
    loaders: dict
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    pp: Preprocess
    device: torch.device
    numerics: Numerics


def train_segmenter(cfg: SegmentConfig, resume: bool = False) -> dict:
    """Train a lung segmenter into ``cfg.out`` -> the summary dict also written as summary.json.

    With ``resume``, ``cfg.out`` is an interrupted run: its saved config is used, except for
    :data:`RESUME_OPTIONS`, and training continues after its last completed epoch.
    """
    cfg = dataclasses.replace(cfg)
    if not cfg.out:
        raise CxrtlError("no output directory; pass --out SEG_RUN")
    run_dir = Path(cfg.out).expanduser()
    payload = None
    if resume:
        cfg, payload = _load_resume(run_dir, cfg)
    else:
        check_out_dir(run_dir, cfg.overwrite)
    cfg.validate()
    if not cfg.data:
        raise CxrtlError("no dataset; pass --data ROOT (the COVID-19 Radiography Database has masks)")
    device = resolve_device(cfg.device)
    index, split = _split(cfg, run_dir if payload is not None else None)
    parts = _set_up(cfg, index, split, device)
    state = resume_state.FitState(history=[])
    if payload is not None:
        state = resume_state.restore_state(payload, parts.model, parts.optimizer, parts.scheduler)
    else:
        _start_run(run_dir, cfg, split)
    meta = _meta(cfg, index, run_dir)
    log.info(
        "%s: U-Net %s, split %s, on %s", run_dir, cfg.encoder, {k: len(v) for k, v in split.items()}, device
    )
    try:
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            row = _epoch(parts, cfg, epoch)
            improved = state.record(row, row["seconds"], score="val_dice")
            log.info(
                "epoch %d/%d: train loss %.4f | val loss %.4f dice %.4f iou %.4f | %.1fs%s",
                epoch, cfg.epochs, row["train_loss"], row["val_loss"], row["val_dice"], row["val_iou"],
                row["seconds"], " (best)" if improved else "",
            )  # fmt: skip
            _write_epoch(run_dir, parts, state, cfg, meta, improved)
    except KeyboardInterrupt:
        log.warning("interrupted; continue with `cxrtl segment train --resume %s`", run_dir)
        raise
    summary = {
        "run_dir": str(run_dir.resolve()),
        "finished": True,
        "kind": "segmenter",
        "best_epoch": state.best_epoch,
        "best_val_dice": state.best_val_acc,
        "epochs_completed": state.epoch,
        "seconds": round(state.seconds, 3),
        "best_checkpoint": str((run_dir / "best.safetensors").resolve()),
        "encoder": cfg.encoder,
        "split_sizes": {k: len(v) for k, v in split.items()},
        "device": str(device),
        "config": cfg.to_dict(),
    }
    write_summary(run_dir, summary)
    return summary


def _load_resume(run_dir: Path, overrides: SegmentConfig) -> tuple[SegmentConfig, tuple]:
    """(saved config with runtime overrides, state payload) of an interrupted segmenter run."""
    status = run_status(run_dir)
    if status == "finished":
        raise CxrtlError(f"{run_dir} holds a finished run; nothing to resume (train into another --out)")
    if not (run_dir / resume_state.STATE_FILE).is_file():
        raise CxrtlError(
            f"{run_dir} has no completed epoch to resume ({resume_state.STATE_FILE} missing); "
            "start it again with --overwrite"
        )
    check_writable(run_dir)
    tensors, saved = resume_state.read_state(run_dir / resume_state.STATE_FILE)
    if saved.get("kind") != "segmenter":
        raise CxrtlError(f"{run_dir} is a classifier run; resume it with `cxrtl train --resume {run_dir}`")
    cfg = SegmentConfig(**saved["config"])
    for key in RESUME_OPTIONS:
        if key != "data" or overrides.data:
            setattr(cfg, key, getattr(overrides, key))
    cfg.out = str(run_dir)
    if saved["epoch"] >= cfg.epochs:
        raise CxrtlError(f"{run_dir} already completed all {cfg.epochs} epochs; nothing to resume")
    return cfg, (tensors, saved)


def _split(cfg: SegmentConfig, resumed_run: Path | None):
    """(index, split): the run's own split.csv on resume, else --split, else a new seeded split."""
    from ..data.sources import load_dataset
    from ..data.splits import make_split, read_split_csv
    from .data import require_masks

    assert cfg.data is not None
    index = load_dataset(cfg.data)
    require_masks(index, index.records)
    split_csv = resumed_run / "split.csv" if resumed_run is not None else cfg.split
    if split_csv:
        split = read_split_csv(split_csv, index)
    else:
        split = make_split(index, ratios=cfg.ratios, seed=cfg.seed, group_by=cfg.group_by)
    if not split["train"] or not split["val"]:
        raise CxrtlError(
            f"the split has {len(split['train'])} training and {len(split['val'])} validation images; "
            "both must be non-empty (use more data or other --ratios)"
        )
    return index, split


def _set_up(cfg: SegmentConfig, index, split, device: torch.device) -> _Parts:
    from ..training import distributed as ddp
    from ..training.engine import make_loader
    from .data import PairDataset, load_pairs
    from .losses import DiceBCELoss

    seed_everything(cfg.seed)
    model = build_segmenter(cfg.encoder, cfg.channels, cfg.init == "imagenet")
    numerics = resolve_numerics(device, cfg.precision, cfg.channels_last)
    model.to(device)
    if numerics.memory_format == torch.channels_last:
        model.to(memory_format=torch.channels_last)
    info = ddp.env_info()
    loaders = {}
    for name in ("train", "val"):
        images, masks, _ = load_pairs(index, split[name], cfg.image_size, cfg.progress)
        ds = PairDataset(images, masks, flip=False)
        loaders[name] = make_loader(
            ds, cfg.batch_size, train=name == "train", seed=cfg.seed, info=info, workers=cfg.workers
        )
    optimizer = torch.optim.NAdam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.milestones), cfg.gamma)
    pp = Preprocess("raw", cfg.channels, cfg.image_size)
    return _Parts(model, loaders, DiceBCELoss().to(device), optimizer, scheduler, pp, device, numerics)


def _start_run(run_dir: Path, cfg: SegmentConfig, split) -> None:
    import yaml

    from ..data.splits import write_split_csv

    ensure_dir(run_dir)
    if cfg.overwrite:
        clear_run(run_dir)
    write_split_csv(run_dir / "split.csv", split)
    cfg.split = str((run_dir / "split.csv").resolve())
    write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _meta(cfg: SegmentConfig, index, run_dir: Path) -> dict:
    """What predict needs (encoder, sizes, channels) and what hygiene checks need (data root, split)."""
    return {
        "kind": "segmenter",
        "encoder": cfg.encoder,
        "in_chans": cfg.channels,
        "decoder_channels": list(DECODER_CHANNELS),
        "image_size": cfg.image_size,
        "preprocess": Preprocess("raw", cfg.channels, cfg.image_size).to_dict(),
        "data_root": str(index.root),
        "split_csv": str((run_dir / "split.csv").resolve()),
        "config": cfg.to_dict(),
    }


def _epoch(p: _Parts, cfg: SegmentConfig, epoch: int) -> dict:
    """One training pass and one validation pass -> the history row."""
    from ..training.engine import _batches, _epoch_seed

    torch.manual_seed(_epoch_seed(cfg.seed, epoch, 0))
    p.loaders["train"].sampler.set_epoch(epoch)
    lr_now = p.optimizer.param_groups[0]["lr"]
    t0 = time.perf_counter()
    p.model.train()
    loss_sum, seen = 0.0, 0
    it, bar = _batches(p.loaders["train"], f"epoch {epoch}/{cfg.epochs}", cfg.progress)
    for images, masks in it:
        x = normalize_batch(images, p.pp, p.device, p.numerics.memory_format)
        y = masks.to(p.device)
        p.optimizer.zero_grad(set_to_none=True)
        with p.numerics.autocast(p.device):
            logits = p.model(x)
        loss = p.loss_fn(logits.float(), y)
        loss.backward()
        p.optimizer.step()
        loss_sum += float(loss.detach()) * len(y)
        seen += len(y)
        if bar is not None:
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
    if not math.isfinite(loss_sum):
        raise CxrtlError(f"training loss became {loss_sum} at epoch {epoch}; lower --lr")
    val_loss, dice, iou = _validate(p)
    p.scheduler.step()
    return {
        "epoch": epoch,
        "train_loss": loss_sum / max(seen, 1),
        "val_loss": val_loss,
        "val_dice": dice,
        "val_iou": iou,
        "lr": lr_now,
        "seconds": round(time.perf_counter() - t0, 3),
    }


@torch.inference_mode()
def _validate(p: _Parts) -> tuple[float, float, float]:
    """(mean loss, mean per-image Dice, mean per-image IoU) on the validation split at threshold 0.5."""
    p.model.eval()
    loss_sum, dices, ious = 0.0, [], []
    for images, masks in p.loaders["val"]:
        x = normalize_batch(images, p.pp, p.device, p.numerics.memory_format)
        y = masks.to(p.device)
        with p.numerics.autocast(p.device):
            logits = p.model(x).float()
        loss_sum += float(p.loss_fn(logits, y)) * len(y)
        pred, true = (logits > 0).flatten(1), (y > 0.5).flatten(1)
        inter = (pred & true).sum(1).double()
        total = (pred.sum(1) + true.sum(1)).double()
        union = total - inter
        dices.append(torch.where(total > 0, 2 * inter / total.clamp(min=1), 1.0).cpu())
        ious.append(torch.where(union > 0, inter / union.clamp(min=1), 1.0).cpu())
    d, i = torch.cat(dices), torch.cat(ious)
    return loss_sum / max(len(d), 1), float(d.mean()), float(i.mean())


def _write_epoch(run_dir: Path, p: _Parts, state, cfg: SegmentConfig, meta: dict, improved: bool) -> None:
    """history.csv, last (and best) checkpoint, then the state file: the epoch's commit point."""
    row = state.history[-1]
    write_csv(
        run_dir / "history.csv", HISTORY_COLUMNS, [[h[c] for c in HISTORY_COLUMNS] for h in state.history]
    )
    ck_meta = {**meta, "epoch": row["epoch"], "metrics": {k: row[k] for k in HISTORY_COLUMNS[1:5]}}
    save_segmenter(run_dir / "last", p.model, ck_meta)
    if improved:
        save_segmenter(run_dir / "best", p.model, ck_meta)
    info = {
        "kind": "segmenter",
        "epoch": state.epoch,
        "history": state.history,
        "best_epoch": state.best_epoch,
        "best_val_acc": state.best_val_acc,  # the best validation Dice
        "best_val_loss": state.best_val_loss,
        "seconds": state.seconds,
        "config": cfg.to_dict(),
    }
    resume_state.write_state(run_dir / resume_state.STATE_FILE, p.model, p.optimizer, p.scheduler, info)
