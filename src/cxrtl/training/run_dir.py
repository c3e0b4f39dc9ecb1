"""The run directory: which folder holds a run, and the files a run writes into it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..checkpoint import save_checkpoint
from ..config import TrainConfig
from ..errors import CxrtlError
from ..fsutil import ensure_dir, write_csv, write_json, write_text

STATE_FILE = "state.safetensors"  # the resumable training state (cxrtl.training.resume)

HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
# Files a run writes; --overwrite removes exactly these (never anything else in the directory).
RUN_FILES = (
    "config.yaml",
    "split.csv",
    "history.csv",
    "summary.json",
    "data_fingerprint.json",
    STATE_FILE,
    "best.safetensors",
    "best.json",
    "best.decisions.json",
    "last.safetensors",
    "last.json",
    "last.decisions.json",
    # the decision sidecars of older runs (cxrtl.decisions folds them into *.decisions.json)
    *(
        f"{stem}.{kind}.json"
        for stem in ("best", "last")
        for kind in ("calibration", "operating_point", "conformal")
    ),
)


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


def check_writable(path: Path) -> None:
    """Fail early, before anything is written, when ``path`` cannot be created or written."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise CxrtlError(
            f"output directory {path} cannot be written ({probe} is not a writable directory); "
            "choose a writable location with --out"
        )


def check_out_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to train into a directory holding a run (unless --overwrite) or unrelated files."""
    status = run_status(run_dir)
    if status in ("finished", "unfinished") and not overwrite:
        hint = (
            "pass --overwrite to replace it"
            if status == "finished"
            else f"continue it with `cxrtl train --resume {run_dir}` or pass --overwrite to replace it"
        )
        raise CxrtlError(
            f"{run_dir} already holds {'an unfinished' if status == 'unfinished' else 'a finished'} "
            f"run; {hint}"
        )
    if status == "foreign":
        raise CxrtlError(
            f"output directory {run_dir} exists and is not an empty directory or a cxrtl run; "
            "choose a new or empty directory for --out"
        )
    check_writable(run_dir)


def clear_run(run_dir: Path) -> None:
    """Remove the files of a run (RUN_FILES and its tensorboard folder), nothing else."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)


def start_run(run_dir: Path, cfg: TrainConfig, split, clear: bool, data_root: Path | None = None) -> None:
    """Create the run directory with split.csv and config.yaml (``cfg.split`` then names that split.csv), and
    the content fingerprint of a sample of the training files under ``data_root``."""
    from ..data import write_split_csv

    ensure_dir(run_dir)
    if clear:
        clear_run(run_dir)
    cfg.split = str((run_dir / "split.csv").resolve())
    write_split_csv(run_dir / "split.csv", split)
    write_text(run_dir / "config.yaml", cfg.to_yaml())
    if (
        data_root is not None
    ):  # which dataset this is, by content: evaluate warns when another has the same names
        from ..data.fingerprint import write_fingerprint

        write_fingerprint(run_dir, data_root, [r.path for r in split["train"]])


def write_epoch_files(run_dir: Path, model, history: list[dict], improved: bool, meta: dict) -> None:
    """history.csv, then the last (and, when ``improved``, the best) checkpoint of the epoch just done."""
    row = history[-1]
    write_csv(run_dir / "history.csv", HISTORY_COLUMNS, [[h[c] for c in HISTORY_COLUMNS] for h in history])
    ck_meta = {
        **meta,
        "epoch": row["epoch"],
        "metrics": {k: row[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")},
    }
    save_checkpoint(run_dir / "last", model, ck_meta)
    if improved:
        save_checkpoint(run_dir / "best", model, ck_meta)


def write_summary(run_dir: Path, summary: dict) -> None:
    """summary.json: written last, so its ``finished`` marks the run complete."""
    write_json(run_dir / "summary.json", summary)
