"""One training run end to end: config -> data -> model -> the run directory (``cxrtl train``)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import cast

import torch

from ..config import DEFAULT_BACKBONE, TrainConfig
from ..data.preprocess import Preprocess
from ..device import resolve_device, seed_everything
from ..errors import CxrtlError
from ..model import CxrModel, set_scheme
from ..provenance import provenance
from ..results import RunSummary
from ..transfer import create_model
from . import distributed as ddp
from . import resume as resume_state
from .engine import fit
from .run_dir import check_out_dir, start_run, write_summary

log = logging.getLogger(__name__)


def train(cfg: TrainConfig, resume: bool = False) -> RunSummary:
    """Train one run end to end (data -> model -> RUN_DIR = ``cfg.out``).

    Returns the summary dict that is also written as RUN_DIR/summary.json: best epoch and its validation
    accuracy and loss, epochs completed, seconds, best checkpoint path, classes, backbone, split sizes,
    world size, device and the resolved config.

    With ``resume`` True, ``cfg.out`` names an unfinished run; its saved config is used, except for the
    runtime options in :data:`~.resume.RESUME_OPTIONS` (the data root may move).
    """
    cfg = dataclasses.replace(cfg)  # resolved values (backbone, lr, split) never leak into the caller's cfg
    if not cfg.out:
        raise CxrtlError("no output directory; pass --out RUN_DIR")
    run_dir = Path(cfg.out).expanduser()
    resume_payload = None
    if resume:
        cfg, resume_payload = resume_state.load_resume(run_dir, cfg)
    cfg.validate()
    if not cfg.data:
        raise CxrtlError("no dataset; pass --data ROOT")
    cfg = absolute_paths(cfg)
    info, device = ddp.start(resolve_device(cfg.device))
    try:
        return cast(RunSummary, _run(cfg, run_dir, resume_payload, info, device))
    finally:
        ddp.teardown()


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """The config with its file paths absolute, so the run's config.yaml names the same files from any folder."""

    def absolute(value: str | None) -> str | None:
        return str(Path(value).expanduser().resolve()) if value else value

    init = (
        cfg.init
        if cfg.init in ("imagenet", "none") or not Path(cfg.init).expanduser().exists()
        else absolute(cfg.init)
    )
    return dataclasses.replace(
        cfg,
        data=absolute(cfg.data),
        split=absolute(cfg.split),
        cache_dir=absolute(cfg.cache_dir),
        pretrained_file=absolute(cfg.pretrained_file),
        init=init or cfg.init,
    )


INHERITED = ("input", "channels", "image_size")  # a transfer takes these from its source unless given


def inherit_input_settings(
    cfg: TrainConfig, explicit: set[str] | frozenset[str] = frozenset()
) -> TrainConfig:
    """A transfer (``init`` = a checkpoint) takes input, channels and image size from its source checkpoint.

    Keys in ``explicit`` (given on the command line or in the YAML) are kept; where they differ from the
    source's, one warning says so. Other inits are returned unchanged.
    """
    if cfg.init in ("imagenet", "none"):
        return cfg
    from ..checkpoint import read_meta

    source = read_meta(cfg.init).get("preprocess") or {}
    cfg = dataclasses.replace(cfg)
    taken, differ = [], []
    for key in INHERITED:
        if key not in source:
            continue
        if key not in explicit:
            setattr(cfg, key, source[key])
            taken.append(f"{key.replace('_', '-')} {source[key]}")
        elif getattr(cfg, key) != source[key]:
            differ.append(f"--{key.replace('_', '-')} {getattr(cfg, key)} (source: {source[key]})")
    if taken:
        log.info("transfer from %s: %s, as its source was trained", cfg.init, ", ".join(taken))
    if differ:
        log.warning(
            "transfer from %s with other input settings than its source: %s", cfg.init, ", ".join(differ)
        )
    return cfg


def _prepare(cfg: TrainConfig, info: ddp.DistInfo, device: torch.device, split_csv: str | None):
    """-> (preprocess, prepared data); each node's first process prepares first: it builds the cache its node reads."""
    from ..data import prepare_data

    pp = Preprocess(cfg.input, cfg.channels, cfg.image_size)
    kwargs = {
        "split_csv": split_csv,
        "seed": cfg.seed,
        "ratios": cfg.ratios,
        "group_by": cfg.group_by,
        "official": cfg.official,
        "cache_dir": cfg.cache_dir,
        "progress": cfg.progress and info.is_main,
    }
    prepared = ddp.node_first(lambda: prepare_data(cfg.data, pp, **kwargs), info, device, "prepare the data")
    return pp, prepared


def _warn_patient_leak(split) -> None:
    """Warn once when patients straddle the splits: their images in val/test inflate every number."""
    from ..integrity.leakage import straddling_patients

    leaked = straddling_patients(split)
    if leaked:
        log.warning(
            "%d patient(s) have images in more than one split (e.g. %s): validation and test accuracy will be "
            "inflated; split with --group-by patient (see `cxrtl data check ROOT --split SPLIT.csv`)",
            len(leaked),
            leaked[0]["patient"],
        )


def _check_classes(model_classes: list[str], data_classes: list[str], what: str) -> None:
    if list(model_classes) != list(data_classes):
        raise CxrtlError(
            f"{what} has classes {list(model_classes)} but the data has {list(data_classes)}; "
            "use matching data, or start a new run (--init PATH for a transfer)"
        )


def _build_model(cfg: TrainConfig, classes: list[str], resume_payload, run_dir: Path) -> CxrModel:
    """The model to train: a fresh one (ImageNet, random or transferred), or an empty one a resume fills."""
    seed_everything(cfg.seed)
    transfer = cfg.init not in ("imagenet", "none")
    backbone = cfg.backbone or (None if transfer else DEFAULT_BACKBONE)
    if resume_payload is not None:
        _check_classes(resume_payload[1]["classes"], classes, f"the run in {run_dir}")
        model = create_model(backbone or DEFAULT_BACKBONE, classes, cfg.channels, init="none")
    else:
        model = create_model(
            backbone,
            classes,
            cfg.channels,
            init=cfg.init,
            keep_hidden=cfg.keep_hidden,
            pretrained_file=cfg.pretrained_file,
        )
    set_scheme(model, cfg.scheme)
    return model


def _run(cfg: TrainConfig, run_dir: Path, resume_payload, info: ddp.DistInfo, device: torch.device) -> dict:
    # 1. Validate everything before the run dir is touched: bad input leaves nothing overwritten.
    restart = isinstance(resume_payload, str) and resume_payload == resume_state.RESTART
    if restart:
        resume_payload = None
    elif resume_payload is None:
        check_out_dir(run_dir, cfg.overwrite)
    split_csv = str(run_dir / "split.csv") if (resume_payload is not None or restart) else cfg.split
    if resume_payload is None and cfg.init == "imagenet" and not cfg.pretrained_file:
        from ..model import imagenet_weights_offline

        imagenet_weights_offline(cfg.backbone or DEFAULT_BACKBONE)  # offline: one line now, before any cache
    pp, prepared = _prepare(cfg, info, device, split_csv)
    if info.is_main:
        _warn_patient_leak(prepared.split)
    classes = prepared.classes
    model = _build_model(cfg, classes, resume_payload, run_dir)
    cfg.backbone = model.backbone_name
    if cfg.lr is None:
        cfg.lr = cfg.resolved_lr(info.world_size)

    # 2. Write the run dir (rank 0 only).
    if info.is_main and resume_payload is None:
        start_run(run_dir, cfg, prepared.split, clear=cfg.overwrite or restart, data_root=prepared.index.root)
    ddp.barrier()
    n = {name: len(ds) for name, ds in prepared.datasets.items() if len(ds) or name != "calibration"}
    log.info(
        "%s: %s, classes %s, split %s, %s on %s x%d, lr %.3g",
        run_dir,
        model.backbone_name,
        classes,
        n,
        cfg.scheme,
        device,
        info.world_size,
        cfg.lr,
    )
    meta = {
        "preprocess": pp.to_dict(),
        "image_size": cfg.image_size,
        "init": cfg.init,
        "scheme": cfg.scheme,
        "config": cfg.to_dict(),
        "provenance": provenance(device),
    }
    try:
        result = fit(
            model, prepared.datasets, cfg, run_dir, meta=meta, resume=resume_payload, info=info, device=device
        )
    except KeyboardInterrupt:
        if info.is_main:
            log.warning("interrupted; continue with `cxrtl train --resume %s`", run_dir)
        raise
    summary = {
        "run_dir": str(run_dir.resolve()),
        "finished": True,
        **{k: v for k, v in result.items() if k != "history"},
        "best_checkpoint": str((run_dir / "best.safetensors").resolve()),
        "classes": classes,
        "backbone": model.backbone_name,
        "split_sizes": n,
        "world_size": info.world_size,
        "device": str(device),
        "config": cfg.to_dict(),
        "provenance": meta["provenance"],
    }
    if info.is_main:
        summary["ood"] = _fit_ood(run_dir, prepared, pp, device)
        write_summary(run_dir, summary)
    ddp.barrier()
    return summary


def _fit_ood(run_dir: Path, prepared, pp: Preprocess, device: torch.device) -> dict | None:
    """Fit the out-of-distribution guard of the best checkpoint and store it in its decision record.

    Features of the training split, threshold at the 99th percentile of validation scores
    (:mod:`cxrtl.evaluation.ood`). A split without validation images gets no guard (said once).
    """
    from ..checkpoint import load_checkpoint
    from ..decisions import read_decisions, write_decisions
    from ..evaluation.ood import fit_for_model

    weights = run_dir / "best.safetensors"
    if not weights.is_file() or not len(prepared.datasets["val"]) or len(prepared.datasets["train"]) < 2:
        log.warning("no out-of-distribution guard: it needs training and validation images")
        return None
    best, meta = load_checkpoint(weights, map_location=device)
    guard = fit_for_model(best, prepared.datasets, pp, device)
    write_decisions(weights, read_decisions(weights, meta).replace(ood=guard))
    return {"layer": guard.layer, "threshold": guard.threshold, "percentile": guard.percentile, "n": guard.n}
