"""Running a reproduction's plan: train (or resume, or skip) each seed of each configuration, evaluate it
on its test split, and train the lung segmenter and write the pneumonia split's masks.

Each run's entry in ``results.json`` is built here (:func:`run_all`); Exp. 3's COVID init is the best
Exp. 2 configuration by mean validation accuracy, never by test accuracy.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import CxrtlError
from ..fsutil import read_json
from ..results import Metrics
from .experiments import COVID_BEST, Profile, RunPlan, covid_best_candidates
from .options import POSITIVE, ReproduceOptions
from .rows import RANDOM_NOT_IMAGENET
from .seeds import run_name, seed_list

log = logging.getLogger(__name__)


def _train_config(
    run: RunPlan,
    opts: ReproduceOptions,
    prof: Profile,
    root: str,
    split_csv: Path,
    run_dir: Path,
    init: str,
    backbone: str | None,
    seed: int,
):
    from ..config import TrainConfig

    epochs = opts.epochs or prof.epochs
    milestones = [m for m in prof.milestones if m < epochs]
    return TrainConfig(
        data=root,
        out=str(run_dir),
        split=str(split_csv),
        backbone=backbone,
        init=init,
        pretrained_file=opts.pretrained_file if init == "imagenet" else None,
        keep_hidden=run.keep_hidden,
        scheme=run.scheme,
        loss=run.loss,
        focal_gamma=run.focal_gamma,
        focal_alpha=run.focal_alpha,
        channels=run.channels,
        input=run.input,
        image_size=opts.image_size or prof.image_size,
        epochs=epochs,
        batch_size=opts.batch_size or prof.batch_size,
        milestones=milestones,
        seed=seed,
        device=opts.device,
        workers=opts.workers,
        cache_dir=opts.cache_dir,
        progress=opts.progress,
    )


def _val_count(split_csv: Path) -> int:
    import csv

    with open(split_csv, newline="") as fh:
        return sum(row.get("split") == "val" for row in csv.DictReader(fh))


def _conformal_alpha(run_dir: Path, opts: ReproduceOptions) -> float | None:
    """The conformal alpha for this run, or None (with a log line) when its validation split is too small."""
    from ..evaluation.conformal import needed_calibration

    if opts.conformal is None:
        return None
    n, need = _val_count(run_dir / "split.csv"), needed_calibration(opts.conformal)
    if n < need:
        log.warning("%s: no conformal sets (%d validation images, %d needed)", run_dir.name, n, need)
        return None
    return opts.conformal


def _evaluate(
    run_dir: Path, root: str, dataset: str, opts: ReproduceOptions, prof: Profile, masked_split: Path | None
) -> Metrics:
    """Test metrics of one run; Grad-CAM inside the lungs wherever masks exist (COVID DB's own, or the
    pneumonia split's predicted or given ones in ``masked_split``)."""
    from ..evaluation.evaluate import evaluate

    use_masks = dataset == "pneumonia" and masked_split is not None
    return evaluate(
        run_dir,
        root,
        split_csv=masked_split if use_masks else run_dir / "split.csv",
        subset="test",
        out=run_dir / "test",
        positive=POSITIVE[dataset],
        target_sensitivity=0.95,
        device=opts.device,
        cam_in_lungs=dataset == "covid" or use_masks,
        cache_dir=opts.cache_dir,
        progress=opts.progress,
        n_boot=prof.n_boot,
        precision=opts.precision,
        conformal=_conformal_alpha(run_dir, opts),
    )


def as_ran(run: RunPlan, random_init: bool) -> dict:
    """The plan's settings as the run really trained: a run meant to start from ImageNet that started from
    random weights (offline, ``--allow-random-init``) says ``init=none`` and pretraining "random (ImageNet
    unavailable)", as the report names it, and keeps what was planned in ``planned_init``."""
    d = {k: v for k, v in run.to_config().items() if k not in ("name", "depends_on")}
    if random_init and run.init != "none":
        d["planned_init"] = run.init
        if run.init == "imagenet":
            d["init"] = "none"
        d["pretraining"] = run.pretraining.replace("ImageNet", RANDOM_NOT_IMAGENET)
    return d


def _run_one(
    run: RunPlan, opts, prof, roots, split_paths, out: Path, init: str, random_init: bool, seed: int
) -> dict:
    """Train (or resume, or skip) one seed of one configuration and evaluate it; return its results entry."""
    from ..training.resume import STATE_FILE
    from ..training.run_dir import run_status
    from ..training.train import train as run_training

    name = run_name(run.name, seed, opts.seed)
    run_dir = out / "runs" / name
    status = run_status(run_dir)
    metrics_file = run_dir / "test" / "metrics.json"
    if status == "finished" and metrics_file.is_file():
        log.info("%s: already complete, skipped", name)
        summary = read_json(run_dir / "summary.json", "run summary")
        metrics = read_json(metrics_file, "metrics")
    else:
        backbone = None if init not in ("imagenet", "none") else (opts.backbone or prof.backbone)
        cfg = _train_config(
            run, opts, prof, roots[run.dataset], split_paths[run.dataset], run_dir, init, backbone, seed
        )
        if status == "unfinished" and (run_dir / STATE_FILE).is_file():
            log.info("%s: resuming an interrupted run", name)
            summary = run_training(cfg, resume=True)
        elif status == "finished":
            summary = read_json(run_dir / "summary.json", "run summary")
        else:
            cfg.overwrite = status == "unfinished"  # a run killed before its first epoch: start again
            log.info(
                "%s: training (%s)",
                name,
                ", ".join(f"{k}={v}" for k, v in as_ran(run, random_init).items()),
            )
            summary = run_training(cfg)
        metrics = _evaluate(run_dir, roots[run.dataset], run.dataset, opts, prof, split_paths.get("masked"))
    history = _history_seconds(run_dir / "history.csv")
    config = {
        **summary.get("config", {}),
        **{k: v for k, v in run.to_config().items() if k != "name"},
        **as_ran(run, random_init),
        "init_source": init,
        "random_init": random_init,
    }
    return {
        "name": name,
        "configuration": run.name,
        "seed": seed,
        "experiment": list(run.experiments),
        "dataset": run.dataset,
        "pretraining": config["pretraining"],
        "protocol": opts.split_protocol if run.dataset == "pneumonia" else None,
        "config": config,
        "best_epoch": summary.get("best_epoch"),
        "best_val_acc": summary.get("best_val_acc"),
        "seconds": history,
        "run_dir": str(run_dir),
        "precision": {"train": _train_precision(summary), "eval": metrics["source"].get("precision", "fp32")},
        "test": metrics,
    }


def _train_precision(summary: dict) -> str:
    """The numerics a run trained in: its --precision, with auto resolved by the device it ran on."""
    precision = (summary.get("config") or {}).get("precision", "auto")
    if precision != "auto":
        return precision
    return "bf16" if str(summary.get("device", "cpu")).startswith("cuda") else "fp32"


def _history_seconds(path: Path) -> float | None:
    """Training wall time of a run: the sum of its epochs' seconds in history.csv (None when unreadable)."""
    from ..evaluation.figures import read_history  # the one reader of history.csv

    try:
        seconds = read_history(path).get("seconds")
    except CxrtlError:
        return None
    return float(np.nansum(seconds)) if seconds else None


def _pick_covid_best(by_config: dict[str, list[dict]], runs: list[RunPlan]) -> str:
    """The Exp. 2 configuration with the highest mean validation accuracy over its seeds (ties: the
    earlier one). Never the test set."""
    candidates = [r.name for r in covid_best_candidates(runs) if by_config.get(r.name)]
    if not candidates:
        raise CxrtlError("Exp. 3 needs the Exp. 2 COVID runs, but none finished")

    def mean_val(name: str) -> float:
        return float(np.mean([e.get("best_val_acc") or 0.0 for e in by_config[name]]))

    return max(candidates, key=lambda n: (mean_val(n), -candidates.index(n)))


def run_all(
    runs: list[RunPlan],
    opts: ReproduceOptions,
    prof,
    roots: dict,
    split_paths: dict,
    out: Path,
    no_weights: str | None,
) -> tuple[dict[str, dict], str | None]:
    """Every run's result by name (configurations in plan order, each over its seeds), and the COVID
    configuration Exp. 3 started from (or None).

    Exp. 3's COVID init is the best Exp. 2 configuration by mean validation accuracy; seed i of an Exp. 3
    run starts from seed i of that configuration.
    """
    results: dict[str, dict] = {}
    by_config: dict[str, list[dict]] = {}
    covid_best = None
    seeds = seed_list(opts.seed, opts.seeds)
    for i, run in enumerate(runs, 1):
        for j, seed in enumerate(seeds):
            if run.init == COVID_BEST:
                covid_best = covid_best or _pick_covid_best(by_config, runs)
                source = by_config[covid_best][j]
                init = str(Path(source["run_dir"]) / "best.safetensors")
                random_init = bool(source["config"].get("random_init"))
            elif run.init == "imagenet" and no_weights:
                init, random_init = "none", True
            else:
                init, random_init = run.init, run.init == "none"
            meant = (
                run.init != "none" and random_init
            )  # meant to start from ImageNet, starts from random weights
            log.info(
                "run %d/%d: %s (seed %d)%s",
                i,
                len(runs),
                run.name,
                seed,
                " (random init: ImageNet unavailable)" if meant else "",
            )
            entry = _run_one(run, opts, prof, roots, split_paths, out, init, random_init, seed)
            results[entry["name"]] = entry
            by_config.setdefault(run.name, []).append(entry)
    return results, covid_best


def train_segmenter(
    plan: dict | None, opts: ReproduceOptions, prof: Profile, root: str, split_csv: Path, out
):
    """Train and evaluate the planned segmenter on the reproduction's COVID split -> its results entry."""
    from .segmenter import run_segmenter

    if plan is None or "skipped" in plan:
        return plan
    return run_segmenter(
        root,
        split_csv,
        out,
        epochs=plan["epochs"],
        image_size=prof.segmenter_size,
        init=plan["init"],
        seed=opts.seed,
        device=opts.device,
        progress=opts.progress,
    )


def lung_masks(opts: ReproduceOptions, pneu, split_paths: dict, out: Path, segmenter) -> dict | None:
    """Masks for the pneumonia split (given, or from the segmenter); sets ``split_paths["masked"]``."""
    from .segmenter import pneumonia_masks

    if pneu is None:
        return None
    seg_run = (segmenter or {}).get("run_dir")
    info = pneumonia_masks(
        pneu,
        split_paths["pneumonia"],
        out,
        seg_run=seg_run,
        given=opts.pneumonia_masks,
        device=opts.device,
        progress=opts.progress,
    )
    if info is not None:
        split_paths["masked"] = Path(info["split"])
    return info
