"""The trainer (paper §IV): NAdam + MultiStepLR, best-validation checkpoint, history, resume, DDP.

Reads top to bottom: ``run_training`` (config -> data, model, run dir) -> ``fit`` (the epoch loop) ->
``train_one_epoch`` / ``evaluate_loader`` (one pass over a loader).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from . import distributed as ddp
from ..device import Numerics, resolve_device, resolve_numerics, seed_everything
from ..checkpoint import create_model, save_checkpoint, unwrap
from ..config import DEFAULT_BACKBONE, TrainConfig
from ..data.preprocess import Preprocess, normalize_batch
from ..errors import CxrtlError
from ..fsutil import ensure_dir, json_safe, write_csv, write_json, write_safetensors, write_text
from .losses import create_loss
from ..model import CxrModel, set_scheme

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
STATE_FILE = "state.safetensors"
STATE_FORMAT = "cxrtl-train-state"
# Files a run writes; --overwrite removes exactly these (never anything else in the directory).
RUN_FILES = ("config.yaml", "split.csv", "history.csv", "summary.json", STATE_FILE, "best.safetensors",
             "best.json", "best.calibration.json", "last.safetensors", "last.json", "last.calibration.json")


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    # Each epoch's random stream depends only on (seed, epoch, rank): a resumed run replays it exactly.
    return (seed * 1_000_003 + epoch * 10_007 + rank) % 2**63


# ----------------------------------------------------------------------------- one pass over a loader
def _batches(loader, desc: str | None, show: bool):
    if not show:
        return loader, None
    from tqdm.auto import tqdm

    bar = tqdm(loader, desc=desc, leave=True, dynamic_ncols=True, unit="batch")
    return bar, bar


def train_one_epoch(model: torch.nn.Module, loader, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    pp: Preprocess, device: torch.device, numerics: Numerics = Numerics(),
                    desc: str | None = None, progress: bool = False) -> tuple[float, float, int]:
    """One training pass -> (mean training loss per image, accuracy, images seen), summed over processes."""
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
        optimizer.step()
        # Sums weighted by batch size: a smaller last batch counts for what it holds (the authors'
        # printout averaged per-batch accuracies instead).
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if bar is not None and (step % 10 == 0 or step == len(loader)):
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
    total_loss, total_correct, total_seen = ddp.all_reduce_sum([loss_sum.item(), correct.item(), seen], device)
    if total_seen == 0:
        return float("nan"), float("nan"), 0
    return total_loss / total_seen, total_correct / total_seen, int(total_seen)


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


def evaluate_loader(model: torch.nn.Module, loader, pp: Preprocess, device: torch.device,
                    numerics: Numerics = Numerics()) -> tuple[float, float, int]:
    """-> (plain unweighted CE per image, accuracy, images), summed over processes: val/test never weight."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for logits, y in _logits_pass(model, loader, pp, device, numerics):
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    total_loss, total_correct, total_seen = ddp.all_reduce_sum([loss_sum.item(), correct.item(), seen], device)
    if total_seen == 0:
        return float("nan"), float("nan"), 0
    return total_loss / total_seen, total_correct / total_seen, int(total_seen)


def predict_logits(model: torch.nn.Module, dataset_or_loader, pp: Preprocess, device: str | torch.device = "cpu",
                   batch_size: int = 64, numerics: Numerics | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Logits (np.float32 [N, k]) and labels (np.int64 [N], -1 when the data has none), in data order."""
    device = resolve_device(device) if isinstance(device, str) else device
    numerics = numerics or resolve_numerics(device, "auto", None)
    loader = dataset_or_loader if isinstance(dataset_or_loader, DataLoader) else \
        DataLoader(dataset_or_loader, batch_size=batch_size, shuffle=False, num_workers=0)
    model = model.to(device)
    if numerics.memory_format == torch.channels_last:
        model = model.to(memory_format=torch.channels_last)
    outs, labels = [], []
    for logits, y in _logits_pass(model, loader, pp, device, numerics):
        outs.append(logits.cpu())
        labels.append(y.cpu())
    k = len(getattr(unwrap(model), "classes", [])) or 0
    if not outs:
        return np.zeros((0, k), np.float32), np.zeros((0,), np.int64)
    return torch.cat(outs).numpy().astype(np.float32), torch.cat(labels).numpy().astype(np.int64)


# ----------------------------------------------------------------------------- loaders
def make_loader(dataset, batch_size: int, *, train: bool, seed: int, info: ddp.DistInfo, workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """Training: seeded shuffle per epoch (DistributedSampler, also in one process); eval: in-order shards."""
    if train:
        sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                     seed=seed, drop_last=False)
        # A last batch of one image breaks BatchNorm on 1x1 feature maps: drop that one image per epoch.
        drop_last = len(sampler) % batch_size == 1 and len(sampler) > 1
    else:
        sampler = ddp.ShardSampler(len(dataset), info.rank, info.world_size)
        drop_last = False
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=workers > 0)


# ----------------------------------------------------------------------------- resume state
def _optimizer_to_safe(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (safetensors) and plain values (JSON), never pickled."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_safe(tensors: dict[str, torch.Tensor], info: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in info["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in info["param_groups"]]
    return {"state": state, "param_groups": groups}


def _scheduler_to_json(scheduler) -> dict:
    sd = dict(scheduler.state_dict())
    sd["milestones"] = {str(k): v for k, v in sd["milestones"].items()}
    return sd


def _scheduler_from_json(sd: dict) -> dict:
    sd = dict(sd)
    sd["milestones"] = Counter({int(k): v for k, v in sd["milestones"].items()})
    return sd


def write_state(path: Path, model, optimizer, scheduler, info: dict) -> None:
    """The resume point (model, optimizer, scheduler, RNG, history, best) in one atomic safetensors file."""
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous().clone()
               for k, v in unwrap(model).state_dict().items()}
    opt_tensors, opt_info = _optimizer_to_safe(optimizer)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    np_state = np.random.get_state()
    payload = {**info, "optimizer": opt_info, "scheduler": _scheduler_to_json(scheduler),
               "rng": {"python": json_safe(random.getstate()),
                       "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}}
    write_safetensors(path, tensors, {"format": STATE_FORMAT, "state": json.dumps(json_safe(payload))})


def read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a resume state written by :func:`write_state` (safetensors + JSON only)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..checkpoint import read_safetensors_header

    header = read_safetensors_header(path, what="training state")
    meta = header.get("__metadata__") or {}
    if meta.get("format") != STATE_FORMAT:
        raise CxrtlError(f"{path} is not a cxrtl training state; resume a directory written by cxrtl train")
    try:
        return load_file(str(path)), json.loads(meta["state"])
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise CxrtlError(f"training state {path} is damaged ({exc}); start the run again with --overwrite") from None


def _restore_rng(tensors: dict, info: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    py = info["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = info["rng"]["numpy"]
    np.random.set_state((npst[0], np.asarray(npst[1], dtype=np.uint32), *npst[2:]))


# ----------------------------------------------------------------------------- the epoch loop
@dataclass
class FitState:
    """What the loop carries from epoch to epoch (and what a resume restores)."""

    epoch: int = 0
    history: list | None = None
    best_epoch: int = 0
    best_val_acc: float = -1.0
    best_val_loss: float = float("nan")
    seconds: float = 0.0


def _history_rows(history: list[dict]) -> list[list]:
    return [[h[c] for c in HISTORY_COLUMNS] for h in history]


def _open_tensorboard(run_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed; metrics go to history.csv only (pip install tensorboard)")
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def fit(model: CxrModel, datasets: dict, cfg: TrainConfig, run_dir: Path | None, meta: dict | None = None,
        resume: tuple[dict, dict] | None = None, info: ddp.DistInfo | None = None,
        device: torch.device | None = None) -> dict:
    """Train ``model`` on datasets["train"], keep the best epoch by datasets["val"] accuracy -> summary dict.

    Only rank 0 writes ``run_dir`` (history.csv, best/last checkpoints, state). ``run_dir`` None writes nothing.
    """
    info = info or ddp.env_info()
    device = device or resolve_device(cfg.device)
    numerics = resolve_numerics(device, cfg.precision, cfg.channels_last)
    pp = Preprocess(cfg.input, cfg.channels, cfg.image_size)
    classes = list(model.classes)
    train_ds, val_ds = datasets["train"], datasets["val"]
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise CxrtlError(f"the split has {len(train_ds)} training and {len(val_ds)} validation images; "
                         "both must be non-empty (use more data or other --ratios)")
    train_labels = getattr(train_ds, "labels", None)
    if train_labels is None:
        train_labels = [int(train_ds[i][1]) for i in range(len(train_ds))]
    loss_fn = create_loss(cfg.loss, train_labels, classes, cfg.focal_gamma, cfg.focal_alpha).to(device)
    weights = getattr(loss_fn, "weight", None)
    weights = getattr(loss_fn, "alpha", None) if weights is None else weights
    log.info("loss %s%s", cfg.loss, "" if weights is None else f", class weights {weights.tolist()}")

    model.to(device)
    if numerics.memory_format == torch.channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    params = [p for p in model.parameters() if p.requires_grad]
    lr = cfg.resolved_lr(info.world_size)
    optimizer = torch.optim.NAdam(params, lr=lr, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    state = FitState(history=[])
    if resume is not None:
        tensors, saved = resume
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer.load_state_dict(_optimizer_from_safe(tensors, saved["optimizer"]))
        scheduler.load_state_dict(_scheduler_from_json(saved["scheduler"]))
        _restore_rng(tensors, saved)
        state = FitState(saved["epoch"], saved["history"], saved["best_epoch"], saved["best_val_acc"],
                         saved["best_val_loss"] if saved["best_val_loss"] is not None else float("nan"),
                         saved["seconds"])

    net: torch.nn.Module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # Evaluation bypasses DDP (shards may differ in batch count, and DDP forwards are collective).
    eval_net: torch.nn.Module = model
    if cfg.compile:
        net = torch.compile(net)
        eval_net = torch.compile(model) if info.enabled else net

    pin = device.type == "cuda"
    train_loader = make_loader(train_ds, cfg.batch_size, train=True, seed=cfg.seed, info=info,
                               workers=cfg.workers, pin_memory=pin)
    val_loader = make_loader(val_ds, cfg.batch_size, train=False, seed=cfg.seed, info=info,
                             workers=cfg.workers, pin_memory=pin)
    writes = run_dir is not None and info.is_main
    show = cfg.progress and info.is_main
    tb = _open_tensorboard(run_dir, cfg.tensorboard) if writes else None
    meta = dict(meta or {})
    meta.setdefault("preprocess", pp.to_dict())
    meta.setdefault("image_size", cfg.image_size)
    meta.setdefault("config", cfg.to_dict())
    try:
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            torch.manual_seed(_epoch_seed(cfg.seed, epoch, info.rank))
            train_loader.sampler.set_epoch(epoch)
            lr_now = optimizer.param_groups[0]["lr"]
            t0 = time.perf_counter()
            tr_loss, tr_acc, _ = train_one_epoch(net, train_loader, loss_fn, optimizer, pp, device, numerics,
                                                 desc=f"epoch {epoch}/{cfg.epochs}", progress=show)
            ddp.broadcast_buffers(model)
            va_loss, va_acc, _ = evaluate_loader(eval_net, val_loader, pp, device, numerics)
            scheduler.step()
            seconds = time.perf_counter() - t0
            if not math.isfinite(tr_loss):
                raise CxrtlError(f"training loss became {tr_loss} at epoch {epoch}; lower --lr")
            row = {"epoch": epoch, "train_loss": tr_loss, "train_acc": tr_acc, "val_loss": va_loss,
                   "val_acc": va_acc, "lr": lr_now, "seconds": round(seconds, 3)}
            state.history.append(row)
            state.epoch, state.seconds = epoch, state.seconds + seconds
            improved = va_acc > state.best_val_acc  # strict: a tie keeps the earlier epoch
            if improved:
                state.best_epoch, state.best_val_acc, state.best_val_loss = epoch, va_acc, va_loss
            log.info("epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | lr %.3g | %.1fs%s",
                     epoch, cfg.epochs, tr_loss, tr_acc, va_loss, va_acc, lr_now, seconds,
                     " (best)" if improved else "")
            if writes:
                _write_epoch(run_dir, model, optimizer, scheduler, state, row, improved, meta, cfg)
            if tb is not None:
                for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
                    tb.add_scalar(key.replace("_", "/", 1) if key != "lr" else "lr", row[key], epoch)
                tb.flush()
    finally:
        if tb is not None:
            tb.close()
    return {"best_epoch": state.best_epoch, "best_val_acc": state.best_val_acc,
            "best_val_loss": state.best_val_loss, "epochs_completed": state.epoch, "epochs": cfg.epochs,
            "seconds": round(state.seconds, 3), "history": state.history}


def _write_epoch(run_dir: Path, model, optimizer, scheduler, state: FitState, row: dict, improved: bool,
                 meta: dict, cfg: TrainConfig) -> None:
    """history.csv, last (and best) checkpoint, then the resume state: the state file is the commit point."""
    write_csv(run_dir / "history.csv", HISTORY_COLUMNS, _history_rows(state.history))
    ck_meta = {**meta, "epoch": row["epoch"],
               "metrics": {k: row[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}}
    save_checkpoint(run_dir / "last", model, ck_meta)
    if improved:
        save_checkpoint(run_dir / "best", model, ck_meta)
    write_state(run_dir / STATE_FILE, model, optimizer, scheduler,
                {"epoch": state.epoch, "history": state.history, "best_epoch": state.best_epoch,
                 "best_val_acc": state.best_val_acc, "best_val_loss": state.best_val_loss,
                 "seconds": state.seconds, "config": cfg.to_dict(), "classes": list(model.classes)})


# ----------------------------------------------------------------------------- run directories
def run_status(run_dir: Path) -> str:
    """'absent' | 'empty' | 'finished' | 'unfinished' (a cxrtl run) | 'foreign' (other files)."""
    if not run_dir.exists():
        return "absent"
    if not run_dir.is_dir():
        return "foreign"
    names = {p.name for p in run_dir.iterdir()}
    if not names:
        return "empty"
    if "summary.json" in names:
        try:
            if json.loads((run_dir / "summary.json").read_text()).get("finished"):
                return "finished"
        except (OSError, ValueError, AttributeError):
            pass
    if names & {"config.yaml", STATE_FILE, "history.csv", "best.safetensors"}:
        return "unfinished"
    return "foreign"


def _check_writable(path: Path) -> None:
    """Fail early, before anything is written, when ``path`` cannot be created or written."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise CxrtlError(f"output directory {path} cannot be written ({probe} is not a writable directory); "
                         "choose a writable location with --out")


def check_out_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to train into a directory holding a run (unless --overwrite) or unrelated files."""
    status = run_status(run_dir)
    if status in ("finished", "unfinished") and not overwrite:
        hint = "pass --overwrite to replace it" if status == "finished" else \
            f"continue it with `cxrtl train --resume {run_dir}` or pass --overwrite to replace it"
        raise CxrtlError(f"{run_dir} already holds {'an unfinished' if status == 'unfinished' else 'a finished'} "
                         f"run; {hint}")
    if status == "foreign":
        raise CxrtlError(f"output directory {run_dir} exists and is not an empty directory or a cxrtl run; "
                         "choose a new or empty directory for --out")
    _check_writable(run_dir)


def _clear_run(run_dir: Path) -> None:
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)


def _prepare(cfg: TrainConfig, info: ddp.DistInfo, device: torch.device, split_csv: str | None):
    """prepare_data on rank 0 first (it builds the shared cache), then on the other ranks."""
    from ..data import prepare_data

    pp = Preprocess(cfg.input, cfg.channels, cfg.image_size)
    kwargs = {"split_csv": split_csv, "seed": cfg.seed, "ratios": cfg.ratios, "group_by": cfg.group_by,
                  "official": cfg.official, "cache_dir": cfg.cache_dir, "progress": cfg.progress and info.is_main}
    prepared, error = None, None
    if info.is_main:
        try:
            prepared = prepare_data(cfg.data, pp, **kwargs)
        except CxrtlError as exc:
            error = exc
    if not ddp.broadcast_flag(error is None, device):
        if error is not None:
            raise error
        raise CxrtlError("rank 0 could not prepare the data; see its error")
    if prepared is None:
        prepared = prepare_data(cfg.data, pp, **kwargs)
    return pp, prepared


def _check_classes(model_classes: list[str], data_classes: list[str], what: str) -> None:
    if list(model_classes) != list(data_classes):
        raise CxrtlError(f"{what} has classes {list(model_classes)} but the data has {list(data_classes)}; "
                         "use matching data, or start a new run (--init PATH for a transfer)")


def run_training(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train one run end to end (data -> model -> RUN_DIR) and return its summary dict.

    With ``resume`` True, ``cfg.out`` names an unfinished run; its saved config is used, except for the
    runtime options device, workers, progress, tensorboard, compile, cache_dir and data (the root may move).
    """
    cfg = dataclasses.replace(cfg)  # resolved values (backbone, lr, split) never leak into the caller's object
    if not cfg.out:
        raise CxrtlError("no output directory; pass --out RUN_DIR")
    run_dir = Path(cfg.out).expanduser()
    resume_payload = None
    if resume:
        cfg, resume_payload = _load_resume(run_dir, cfg)
    cfg.validate()
    if not cfg.data:
        raise CxrtlError("no dataset; pass --data ROOT")
    device = resolve_device(cfg.device)
    info = ddp.setup(device.type)
    if not info.is_main:  # rank 0 reports; the others only warn
        logging.getLogger("cxrtl").setLevel(logging.WARNING)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    try:
        return _run(cfg, run_dir, resume_payload, info, device)
    finally:
        ddp.teardown()


RESTART = "restart"  # resume of a run killed before its first completed epoch: start it over, same config


def _load_resume(run_dir: Path, overrides: TrainConfig):
    """(saved config with runtime overrides, (tensors, state) | RESTART) for ``--resume RUN_DIR``."""
    from ..config import config_from_dict, load_config

    status = run_status(run_dir)
    if status == "finished":
        raise CxrtlError(f"{run_dir} holds a finished run; nothing to resume (train a new run with another --out)")
    has_state = (run_dir / STATE_FILE).is_file()
    can_restart = (run_dir / "config.yaml").is_file() and (run_dir / "split.csv").is_file()
    if status != "unfinished" or not (has_state or can_restart):
        raise CxrtlError(f"{run_dir} is not an unfinished cxrtl run (no {STATE_FILE} or config.yaml); --resume "
                         "takes the --out of an interrupted cxrtl train")
    _check_writable(run_dir)
    if has_state:
        tensors, saved = read_state(run_dir / STATE_FILE)
        cfg, payload = config_from_dict(saved["config"]), (tensors, saved)
    else:
        log.warning("%s stopped before its first epoch completed; starting it again from its config.yaml and "
                    "split.csv", run_dir)
        cfg, payload = load_config(run_dir / "config.yaml"), RESTART
    for key in ("device", "workers", "progress", "tensorboard", "compile", "cache_dir"):
        setattr(cfg, key, getattr(overrides, key))
    if overrides.data:
        cfg.data = overrides.data
    cfg.out = str(run_dir)
    if has_state and payload[1]["epoch"] >= cfg.epochs:
        raise CxrtlError(f"{run_dir} already completed all {cfg.epochs} epochs; nothing to resume")
    return cfg, payload


def _run(cfg: TrainConfig, run_dir: Path, resume_payload, info: ddp.DistInfo, device: torch.device) -> dict:
    from ..data import write_split_csv

    # 1. Validate everything before the run dir is touched: bad input leaves nothing overwritten.
    restart = isinstance(resume_payload, str) and resume_payload == RESTART
    if restart:
        resume_payload = None
    elif resume_payload is None:
        check_out_dir(run_dir, cfg.overwrite)
    split_csv = str(run_dir / "split.csv") if (resume_payload is not None or restart) else cfg.split
    pp, prepared = _prepare(cfg, info, device, split_csv)
    classes = prepared.classes
    seed_everything(cfg.seed)
    transfer = cfg.init not in ("imagenet", "none")
    backbone = cfg.backbone or (None if transfer else DEFAULT_BACKBONE)
    if resume_payload is not None:
        _check_classes(resume_payload[1]["classes"], classes, f"the run in {run_dir}")
        model = create_model(backbone or DEFAULT_BACKBONE, classes, cfg.channels, init="none")
    else:
        model = create_model(backbone, classes, cfg.channels, init=cfg.init, keep_hidden=cfg.keep_hidden,
                             pretrained_file=cfg.pretrained_file)
    set_scheme(model, cfg.scheme)
    cfg.backbone = model.backbone_name
    if cfg.lr is None:
        cfg.lr = cfg.resolved_lr(info.world_size)

    # 2. Write the run dir (rank 0 only).
    if info.is_main and resume_payload is None:
        ensure_dir(run_dir)
        if cfg.overwrite or restart:
            _clear_run(run_dir)
        cfg.split = str((run_dir / "split.csv").resolve())
        write_split_csv(run_dir / "split.csv", prepared.split)
        write_text(run_dir / "config.yaml", cfg.to_yaml())
    ddp.barrier()
    n = {name: len(ds) for name, ds in prepared.datasets.items()}
    log.info("%s: %s, classes %s, split %s, %s on %s x%d, lr %.3g", run_dir, model.backbone_name, classes, n,
             cfg.scheme, device, info.world_size, cfg.lr)
    meta = {"preprocess": pp.to_dict(), "image_size": cfg.image_size, "init": cfg.init, "scheme": cfg.scheme,
            "config": cfg.to_dict()}
    try:
        result = fit(model, prepared.datasets, cfg, run_dir, meta=meta, resume=resume_payload, info=info,
                     device=device)
    except KeyboardInterrupt:
        if info.is_main:
            log.warning("interrupted; continue with `cxrtl train --resume %s`", run_dir)
        raise
    summary = {"run_dir": str(run_dir.resolve()), "finished": True, **{k: v for k, v in result.items()
                                                                         if k != "history"},
               "best_checkpoint": str((run_dir / "best.safetensors").resolve()), "classes": classes,
               "backbone": model.backbone_name, "split_sizes": n, "world_size": info.world_size,
               "device": str(device), "config": cfg.to_dict()}
    if info.is_main:
        write_json(run_dir / "summary.json", summary)
    ddp.barrier()
    return summary
