"""The training loop of the paper (§IV): ``fit`` runs epochs of one pass over a loader, keeping the best."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from ..checkpoint import unwrap
from ..config import TrainConfig
from ..data.preprocess import Preprocess, normalize_batch
from ..device import Numerics, resolve_device, resolve_numerics
from ..errors import CxrtlError
from ..model import CxrModel
from . import distributed as ddp
from . import resume as resume_state
from .losses import training_loss
from .optim import Warmup, create_optimizer, create_scheduler, resolve_warmup
from .resume import STATE_FILE, FitState
from .run_dir import write_epoch_files

log = logging.getLogger(__name__)
FP32 = Numerics()  # plain fp32, NCHW: the default of every pass (Numerics is frozen, so sharing it is safe)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    # Each epoch's random stream depends only on (seed, epoch, rank): a resumed run replays it exactly on
    # CPU. On CUDA it replays the same batches and augmentation draws, but cuDNN's autotuned kernels and
    # atomics make the arithmetic, and so the history, differ in the last bits.
    return (seed * 1_000_003 + epoch * 10_007 + rank) % 2**63


# ----------------------------------------------------------------------------- one pass over a loader
def _batches(loader, desc: str | None, show: bool):
    if not show:
        return loader, None
    from tqdm.auto import tqdm

    bar = tqdm(loader, desc=desc, leave=True, dynamic_ncols=True, unit="batch")
    return bar, bar


def train_one_epoch(
    model: torch.nn.Module,
    loader,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    pp: Preprocess,
    device: torch.device,
    numerics: Numerics = FP32,
    desc: str | None = None,
    progress: bool = False,
    *,
    warmup: Warmup | None = None,
    first_step: int = 0,
) -> tuple[float, float, int]:
    """One training pass -> (mean training loss per image, accuracy, images seen), summed over processes.

    ``warmup`` scales the learning rate of the optimizer steps numbered from ``first_step`` (0-based over
    the whole run), leaving the scheduler's own learning rate as it was.
    """
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    it, bar = _batches(loader, desc, progress)
    for step, (images, labels) in enumerate(it, 1):
        x = normalize_batch(images, pp, device, numerics.memory_format)
        y = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)  # before the forward: last step's grads are freed first
        with numerics.autocast(device):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
        _step(optimizer, warmup.factor(first_step + step - 1) if warmup is not None else 1.0)
        # Sums weighted by batch size: a smaller last batch counts for what it holds (the authors'
        # printout averaged per-batch accuracies instead).
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if bar is not None and (step % 10 == 0 or step == len(loader)):
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
    total_loss, total_correct, total_seen = ddp.all_reduce_sum(
        [loss_sum.item(), correct.item(), seen], device
    )
    if total_seen == 0:
        return float("nan"), float("nan"), 0
    return total_loss / total_seen, total_correct / total_seen, int(total_seen)


def _step(optimizer: torch.optim.Optimizer, scale: float) -> None:
    """``optimizer.step()`` at ``scale`` times each group's learning rate (warm-up), then put it back."""
    if scale >= 1.0:
        optimizer.step()
        return
    lrs = [group["lr"] for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr * scale
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr


@torch.inference_mode()
def _logits_pass(model, loader, pp: Preprocess, device: torch.device, numerics: Numerics):
    """Yield (float32 logits, labels) per batch in eval mode."""
    model.eval()
    for batch in loader:
        images, labels = (batch[0], batch[1]) if isinstance(batch, (list, tuple)) else (batch, None)
        x = normalize_batch(images, pp, device, numerics.memory_format)
        with numerics.autocast(device):
            logits = model(x)
        if labels is None:
            labels = torch.full((len(images),), -1, dtype=torch.int64)
        yield logits.float(), labels.to(device, non_blocking=True)


def evaluate_loader(
    model: torch.nn.Module, loader, pp: Preprocess, device: torch.device, numerics: Numerics = FP32
) -> tuple[float, float, int]:
    """-> (plain unweighted CE per image, accuracy, images), summed over processes: val/test never weight."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for logits, y in _logits_pass(model, loader, pp, device, numerics):
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    total_loss, total_correct, total_seen = ddp.all_reduce_sum(
        [loss_sum.item(), correct.item(), seen], device
    )
    if total_seen == 0:
        return float("nan"), float("nan"), 0
    return total_loss / total_seen, total_correct / total_seen, int(total_seen)


def predict_logits(
    model: torch.nn.Module,
    dataset_or_loader,
    pp: Preprocess,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    numerics: Numerics | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (np.float32 [N, k]) and labels (np.int64 [N], -1 when the data has none), in data order.

    The caller's model is left where it was, in its memory format and train/eval mode: when it must move,
    a copy runs.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    numerics = numerics or resolve_numerics(device, "auto", None)
    loader = (
        dataset_or_loader
        if isinstance(dataset_or_loader, DataLoader)
        else DataLoader(dataset_or_loader, batch_size=batch_size, shuffle=False, num_workers=0)
    )
    was_training = model.training
    net = _placed(model, device, numerics.memory_format)
    outs, labels = [], []
    try:
        for logits, y in _logits_pass(net, loader, pp, device, numerics):
            outs.append(logits.cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    k = len(getattr(unwrap(model), "classes", [])) or 0
    if not outs:
        return np.zeros((0, k), np.float32), np.zeros((0,), np.int64)
    return torch.cat(outs).numpy().astype(np.float32), torch.cat(labels).numpy().astype(np.int64)


def _placed(model: torch.nn.Module, device: torch.device, memory_format) -> torch.nn.Module:
    """``model`` when already on ``device`` in ``memory_format``, else a copy placed there."""
    params = list(model.parameters())
    here = all(p.device == device for p in params) and all(
        p.dim() != 4 or p.is_contiguous(memory_format=memory_format) for p in params
    )
    return model if here else copy.deepcopy(model).to(device).to(memory_format=memory_format)


# ----------------------------------------------------------------------------- loaders
def make_loader(
    dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int,
    info: ddp.DistInfo,
    workers: int = 0,
    pin_memory: bool = False,
    full_batches: bool = False,
) -> DataLoader:
    """Training: seeded shuffle per epoch (DistributedSampler, also in one process); eval: in-order shards.

    ``full_batches`` (training under ``--compile``): drop each epoch's short last batch, whose other shape
    would cost a second compiled graph; the shuffle changes which images miss out from epoch to epoch.
    """
    sampler: Sampler
    if train:
        sampler = ddp.train_sampler(dataset, info, seed)
        # A last batch of one image breaks BatchNorm on 1x1 feature maps: drop that one image per epoch.
        drop_last = len(sampler) % batch_size == 1 and len(sampler) > 1
        drop_last = drop_last or (full_batches and len(sampler) >= batch_size)
    else:
        sampler = ddp.eval_sampler(dataset, info)
        drop_last = False
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
    )


# ----------------------------------------------------------------------------- the epoch loop
@dataclass
class _Parts:
    """What every epoch uses, built once by :func:`fit`."""

    model: CxrModel
    net: torch.nn.Module  # the module trained: DDP-wrapped and/or compiled as asked
    eval_net: torch.nn.Module
    train_loader: DataLoader
    val_loader: DataLoader
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    pp: Preprocess
    device: torch.device
    numerics: Numerics
    warmup: Warmup


def fit(
    model: CxrModel,
    datasets: dict,
    cfg: TrainConfig,
    run_dir: Path | None,
    meta: dict | None = None,
    resume: tuple[dict, dict] | None = None,
    info: ddp.DistInfo | None = None,
    device: torch.device | None = None,
    *,
    loss_fn: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
) -> dict:
    """Train ``model`` on datasets["train"], keep the best epoch by ``cfg.select_by`` on datasets["val"].

    ``loss_fn``, ``optimizer`` and ``scheduler`` default to the paper's, built from ``cfg``
    (:func:`~.losses.training_loss`, :func:`~.optim.create_optimizer`, :func:`~.optim.create_scheduler`).
    ``resume`` is a state read by :func:`~.resume.read_state`. Only rank 0 writes ``run_dir`` (history.csv,
    best/last checkpoints, state); ``run_dir`` None writes nothing.
    """
    info = info or ddp.env_info()
    device = device or resolve_device(cfg.device)
    parts, state = _set_up(model, datasets, cfg, info, device, resume, loss_fn, optimizer, scheduler)
    writes = run_dir is not None and info.is_main
    show = cfg.progress and info.is_main
    tb = _open_tensorboard(run_dir, cfg.tensorboard) if writes and run_dir is not None else None
    meta = dict(meta or {})
    meta.setdefault("preprocess", parts.pp.to_dict())
    meta.setdefault("image_size", cfg.image_size)
    meta.setdefault("config", cfg.to_dict())
    try:
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            row, seconds, val_seconds = _train_epoch(parts, cfg, epoch, info.rank, show)
            improved = state.record(row, seconds, by_loss=cfg.select_by == "val_loss")
            log.info(
                "epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | lr %.3g | %.1fs (val %.1fs)%s",
                epoch,
                cfg.epochs,
                row["train_loss"],
                row["train_acc"],
                row["val_loss"],
                row["val_acc"],
                row["lr"],
                seconds,
                val_seconds,
                " (best)" if improved else "",
            )
            if writes:
                assert run_dir is not None  # writes implies a run_dir
                write_epoch_files(run_dir, model, state.history, improved, meta)
                # The state file is the commit point: written last, it makes the epoch resumable.
                resume_state.write_state(
                    run_dir / STATE_FILE,
                    model,
                    parts.optimizer,
                    parts.scheduler,
                    state.to_info(cfg, model.classes),
                )
            if tb is not None:
                _log_tensorboard(tb, row)
    finally:
        if tb is not None:
            tb.close()
    return {
        "best_epoch": state.best_epoch,
        "best_val_acc": state.best_val_acc,
        "best_val_loss": state.best_val_loss,
        "epochs_completed": state.epoch,
        "epochs": cfg.epochs,
        "seconds": round(state.seconds, 3),
        "history": state.history,
    }


def _set_up(
    model: CxrModel,
    datasets: dict,
    cfg: TrainConfig,
    info: ddp.DistInfo,
    device: torch.device,
    resume,
    loss_fn,
    optimizer,
    scheduler,
) -> tuple[_Parts, FitState]:
    """Check the splits, place the model, build what is not given, restore a resume -> (parts, state)."""
    train_ds, val_ds = datasets["train"], datasets["val"]
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise CxrtlError(
            f"the split has {len(train_ds)} training and {len(val_ds)} validation images; "
            "both must be non-empty (use more data or other --ratios)"
        )
    numerics = resolve_numerics(device, cfg.precision, cfg.channels_last)
    if loss_fn is None:
        loss_fn = training_loss(cfg, train_ds, list(model.classes))
    if isinstance(loss_fn, torch.nn.Module):  # class weights live in buffers
        loss_fn = loss_fn.to(device)
    model.to(device)
    if numerics.memory_format == torch.channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if optimizer is None:
        optimizer = create_optimizer(cfg, model.parameters(), info.world_size)
    if scheduler is None:
        scheduler = create_scheduler(cfg, optimizer)
    state = FitState(history=[])
    if resume is not None:
        state = resume_state.restore_state(resume, model, optimizer, scheduler)
    net, eval_net = ddp.wrap_model(model, info, device, cfg.compile)
    pin = device.type == "cuda"
    train_loader = make_loader(
        train_ds,
        cfg.batch_size,
        train=True,
        seed=cfg.seed,
        info=info,
        workers=cfg.workers,
        pin_memory=pin,
        full_batches=cfg.compile,
    )
    warmup = resolve_warmup(cfg, info.world_size, len(train_loader))
    if warmup.steps:
        log.info("learning rate warm-up over the first %d steps (--warmup-steps)", warmup.steps)
    val_loader = make_loader(
        val_ds, cfg.batch_size, train=False, seed=cfg.seed, info=info, workers=cfg.workers, pin_memory=pin
    )
    parts = _Parts(
        model,
        net,
        eval_net,
        train_loader,
        val_loader,
        loss_fn,
        optimizer,
        scheduler,
        Preprocess(cfg.input, cfg.channels, cfg.image_size),
        device,
        numerics,
        warmup,
    )
    return parts, state


def _train_epoch(p: _Parts, cfg: TrainConfig, epoch: int, rank: int, show: bool) -> tuple[dict, float, float]:
    """Train one epoch, evaluate on the validation split, step the schedule -> (history row, seconds, of
    which validation seconds)."""
    torch.manual_seed(_epoch_seed(cfg.seed, epoch, rank))
    p.train_loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]  # a DistributedSampler
    lr_now = p.optimizer.param_groups[0]["lr"]
    t0 = time.perf_counter()
    tr_loss, tr_acc, _ = train_one_epoch(
        p.net,
        p.train_loader,
        p.loss_fn,
        p.optimizer,
        p.pp,
        p.device,
        p.numerics,
        desc=f"epoch {epoch}/{cfg.epochs}",
        progress=show,
        warmup=p.warmup,
        first_step=(epoch - 1) * len(p.train_loader),
    )
    ddp.broadcast_buffers(p.model)
    t_val = time.perf_counter()
    va_loss, va_acc, _ = evaluate_loader(p.eval_net, p.val_loader, p.pp, p.device, p.numerics)
    p.scheduler.step()
    seconds = time.perf_counter() - t0
    if not math.isfinite(tr_loss):
        raise CxrtlError(f"training loss became {tr_loss} at epoch {epoch}; lower --lr")
    row = {
        "epoch": epoch,
        "train_loss": tr_loss,
        "train_acc": tr_acc,
        "val_loss": va_loss,
        "val_acc": va_acc,
        "lr": lr_now,
        "seconds": round(seconds, 3),
    }
    return row, seconds, time.perf_counter() - t_val


def _open_tensorboard(run_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed; metrics go to history.csv only (pip install tensorboard)")
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _log_tensorboard(tb, row: dict) -> None:
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        tb.add_scalar(key.replace("_", "/", 1) if key != "lr" else "lr", row[key], row["epoch"])
    tb.flush()
