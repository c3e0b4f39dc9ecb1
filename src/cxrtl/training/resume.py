"""The resume point of a training run: its state file, and loading an interrupted run to continue it."""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..checkpoint import unwrap
from ..config import TrainConfig, config_from_dict, load_config
from ..errors import CxrtlError
from ..fsutil import json_safe, write_safetensors
from .run_dir import STATE_FILE, check_writable, run_status

log = logging.getLogger(__name__)

STATE_FORMAT = "cxrtl-train-state"
# Options that may change when resuming: where and how the run executes, not what it computes.
RESUME_OPTIONS = ("data", "device", "workers", "progress", "tensorboard", "compile", "cache_dir")
RESTART = "restart"  # resume of a run killed before its first completed epoch: start it over, same config


@dataclass
class FitState:
    """What the loop carries from epoch to epoch (and what a resume restores)."""

    epoch: int = 0
    history: list = field(default_factory=list)
    best_epoch: int = 0
    best_val_acc: float = -1.0
    best_val_loss: float = float("nan")
    seconds: float = 0.0

    def record(self, row: dict, seconds: float, score: str = "val_acc", by_loss: bool = False) -> bool:
        """Add an epoch's history row -> whether it is the new best epoch.

        The best epoch has the highest ``row[score]`` (validation accuracy for a classifier, Dice for a
        segmenter; kept in ``best_val_acc``), or with ``by_loss`` the lowest validation loss. Both are strict,
        so a tie keeps the earlier epoch, and a NaN loss never stays best.
        """
        self.history.append(row)
        self.epoch, self.seconds = row["epoch"], self.seconds + seconds
        if by_loss:
            best = self.best_val_loss
            improved = self.best_epoch == 0 or math.isnan(best) or row["val_loss"] < best
        else:
            improved = row[score] > self.best_val_acc
        if improved:
            self.best_epoch, self.best_val_acc, self.best_val_loss = row["epoch"], row[score], row["val_loss"]
        return improved

    def to_info(self, cfg: TrainConfig, classes: list[str]) -> dict:
        """The JSON part of the state file (keys in the order runs have always been written)."""
        return {
            "epoch": self.epoch,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_val_acc": self.best_val_acc,
            "best_val_loss": self.best_val_loss,
            "seconds": self.seconds,
            "config": cfg.to_dict(),
            "classes": list(classes),
        }

    @classmethod
    def from_info(cls, saved: dict) -> FitState:
        # JSON has no NaN: a run whose best val loss was NaN saved null.
        best_loss = saved["best_val_loss"] if saved["best_val_loss"] is not None else float("nan")
        return cls(
            saved["epoch"],
            saved["history"],
            saved["best_epoch"],
            saved["best_val_acc"],
            best_loss,
            saved["seconds"],
        )


# ----------------------------------------------------------------------------- optimizer, scheduler, RNG
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
    if "milestones" in sd:  # MultiStepLR's Counter has int keys; JSON keys are strings
        sd["milestones"] = {str(k): v for k, v in sd["milestones"].items()}
    return sd


def _scheduler_from_json(sd: dict) -> dict:
    sd = dict(sd)
    if "milestones" in sd:
        sd["milestones"] = Counter({int(k): v for k, v in sd["milestones"].items()})
    return sd


def _restore_rng(tensors: dict, info: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    py = info["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = info["rng"]["numpy"]
    np.random.set_state((npst[0], np.asarray(npst[1], dtype=np.uint32), *npst[2:]))


# ----------------------------------------------------------------------------- the state file
def write_state(path: Path, model, optimizer, scheduler, info: dict) -> None:
    """The resume point (model, optimizer, scheduler, RNG, history, best) in one atomic safetensors file."""
    tensors = {
        f"model.{k}": v.detach().to("cpu").contiguous().clone() for k, v in unwrap(model).state_dict().items()
    }
    opt_tensors, opt_info = _optimizer_to_safe(optimizer)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    np_state = cast(tuple, np.random.get_state())  # legacy (default) MT19937 state: a tuple
    payload = {
        **info,
        "optimizer": opt_info,
        "scheduler": _scheduler_to_json(scheduler),
        "rng": {
            "python": json_safe(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        },
    }
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
        raise CxrtlError(
            f"training state {path} is damaged ({exc}); start the run again with --overwrite"
        ) from None


def restore_state(payload: tuple[dict, dict], model, optimizer, scheduler) -> FitState:
    """Load a read state into the placed model, the optimizer, scheduler and RNGs -> the loop's state."""
    tensors, saved = payload
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer.load_state_dict(_optimizer_from_safe(tensors, saved["optimizer"]))
    match_parameter_layout(optimizer)
    scheduler.load_state_dict(_scheduler_from_json(saved["scheduler"]))
    _restore_rng(tensors, saved)
    return FitState.from_info(saved)


def match_parameter_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (exp_avg, exp_avg_sq) its parameter's strides.

    The state file stores tensors contiguous (NCHW); restored as they are, they no longer match their
    channels_last parameters and the foreach/fused NAdam kernels fall back to slow per-tensor launches.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    optimizer.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


# ----------------------------------------------------------------------------- --resume RUN_DIR
def load_resume(run_dir: Path, overrides: TrainConfig):
    """(saved config with runtime overrides, (tensors, state) | RESTART) for ``--resume RUN_DIR``."""

    status = run_status(run_dir)
    if status == "finished":
        raise CxrtlError(
            f"{run_dir} holds a finished run; nothing to resume (train a new run with another --out)"
        )
    has_state = (run_dir / STATE_FILE).is_file()
    can_restart = (run_dir / "config.yaml").is_file() and (run_dir / "split.csv").is_file()
    if status != "unfinished" or not (has_state or can_restart):
        raise CxrtlError(
            f"{run_dir} is not an unfinished cxrtl run (no {STATE_FILE} or config.yaml); --resume "
            "takes the --out of an interrupted cxrtl train"
        )
    check_writable(run_dir)
    payload: tuple[dict[str, torch.Tensor], dict] | str
    if has_state:
        tensors, saved = read_state(run_dir / STATE_FILE)
        cfg, payload = config_from_dict(saved["config"]), (tensors, saved)
    else:
        log.warning(
            "%s stopped before its first epoch completed; starting it again from its config.yaml and "
            "split.csv",
            run_dir,
        )
        cfg, payload = load_config(run_dir / "config.yaml"), RESTART
    for key in RESUME_OPTIONS:
        # The data root may move, but a resume that names none keeps the saved one.
        if key != "data" or overrides.data:
            setattr(cfg, key, getattr(overrides, key))
    cfg.out = str(run_dir)
    if isinstance(payload, tuple) and payload[1]["epoch"] >= cfg.epochs:  # i.e. has_state
        raise CxrtlError(f"{run_dir} already completed all {cfg.epochs} epochs; nothing to resume")
    return cfg, payload
