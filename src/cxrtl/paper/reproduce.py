"""``cxrtl reproduce``: the paper's three experiments, end to end, into one directory and one report.

The flow is plain: check every input before any training, write the splits once, then for each planned
run (``cxrtl.paper.experiments``) train it unless it already finished, evaluate it on its test split, and
finally write ``results.json``, ``report.md`` and ``report.html``. A second call with the same arguments
skips finished runs and resumes an interrupted one, so an interrupted reproduction picks up where it stopped.

Layout of ``OUT``::

    reproduction.json        what this reproduction is (profile, data, protocol): guards against mixing
    splits/covid.csv         the COVID split every COVID run shares
    splits/pneumonia.csv     the pneumonia split (protocol, subsampling and overlap exclusion applied)
    runs/<name>/             one `cxrtl train` run dir each, plus test/ from `cxrtl evaluate`
    segmenter/               the lung U-Net trained on splits/covid.csv, plus test/ (``cxrtl.paper.segmenter``)
    pneumonia_masks/         its masks for the pneumonia split (splits/pneumonia_masked.csv): Exp. 3's CAM check
    results.json  report.md  report.html
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from ..data.records import DatasetIndex, Record
from ..errors import CxrtlError
from ..fsutil import ensure_dir, read_json, write_json
from ..provenance import provenance
from ..results import Metrics, ReproductionResults
from .experiments import (
    COMPARISONS,
    COVID_BEST,
    Profile,
    RunPlan,
    covid_best_candidates,
    get_profile,
    parse_experiments,
    plan_runs,
)
from .seeds import configurations, run_name, seed_list

log = logging.getLogger(__name__)

MANIFEST = "reproduction.json"
PROTOCOLS = ("paper", "patient", "official")
POSITIVE = {"covid": "COVID", "pneumonia": "PNEUMONIA"}
SYNTH_MARKER = ".cxrtl-synth.json"  # written by `cxrtl data synth` beside the two dataset folders


@dataclass
class ReproduceOptions:
    """Everything `cxrtl reproduce` takes; the first block identifies a reproduction, the rest is runtime."""

    covid: str
    pneumonia: str | None
    out: str
    profile: str = "quick"
    experiments: str | None = None
    split_protocol: str = "paper"
    exclude_overlap: bool = False
    seed: int = 2022
    seeds: int = 1  # training seeds per configuration: seed, seed + 1, ... (the split stays fixed)
    precision: str = "fp32"  # numerics of the test evaluations (training keeps its own: bf16 on CUDA)
    conformal: float | None = 0.1  # alpha of the conformal sets fitted for every run (None: none)
    backbone: str | None = None  # default: the profile's (densenet121)
    epochs: int | None = None
    image_size: int | None = None
    batch_size: int | None = None
    max_per_class: int | None = None
    allow_random_init: bool = False
    pretrained_file: str | None = None
    segmenter_epochs: int | None = None  # the lung U-Net on the COVID split; default: the profile's (0: none)
    pneumonia_masks: str | None = (
        None  # lung masks for the pneumonia set (default: the segmenter writes them)
    )
    external: str | None = None  # an external COVID set (folder or manifest) for the best COVID model
    external_class_map: str | None = None  # its labels -> the COVID classes (inline or YAML)
    device: str = "auto"
    workers: int = 0
    cache_dir: str | None = None
    progress: bool = True


# ------------------------------------------------------------------------------------------ checks
def _load(root: str, want_kind: str, flag: str) -> DatasetIndex:
    from ..data import load_dataset

    index = load_dataset(root)
    if index.kind != want_kind:
        expect = {
            "covid": "the COVID-19 Radiography Database (COVID-19_Radiography_Dataset/)",
            "pneumonia": "the Kermany chest_xray/ set",
        }[want_kind]
        raise CxrtlError(
            f"{flag} {root} holds a {index.layout} dataset, not {expect}; check which root "
            f"goes to --covid and which to --pneumonia"
        )
    return index


def _is_synthetic(index: DatasetIndex) -> bool:
    return any((p / SYNTH_MARKER).is_file() for p in (index.root, index.root.parent))


def _imagenet_available(backbone: str, pretrained_file: str | None) -> str | None:
    """None when ImageNet weights can be had (hub or local file), else the one-line reason."""
    from ..model import new_model

    try:
        new_model(backbone, ["a", "b"], 3, init="imagenet", pretrained_file=pretrained_file)
    except CxrtlError as exc:
        return str(exc)
    return None


def _identity(opts: ReproduceOptions, prof: Profile, covid: DatasetIndex, pneu: DatasetIndex | None) -> dict:
    """What makes two reproductions the same: a directory never mixes runs of different ones."""

    def fingerprint(index):
        if index is None:
            return None
        counts = {c: sum(r.label == c for r in index.records) for c in index.classes}
        return {"layout": index.layout, "classes": index.classes, "counts": counts}

    return {
        "format": "cxrtl-reproduction",
        "profile": prof.name,
        "seed": opts.seed,
        "split_protocol": opts.split_protocol,
        "exclude_overlap": opts.exclude_overlap,
        "backbone": opts.backbone or prof.backbone,
        "epochs": opts.epochs or prof.epochs,
        "image_size": opts.image_size or prof.image_size,
        "batch_size": opts.batch_size or prof.batch_size,
        "max_per_class": opts.max_per_class if opts.max_per_class is not None else prof.max_per_class,
        "covid": fingerprint(covid),
        "pneumonia": fingerprint(pneu),
    }


def _check_out(out: Path, identity: dict) -> None:
    """Refuse an out dir holding another reproduction's runs, or unrelated files."""
    manifest = out / MANIFEST
    if manifest.is_file():
        old = read_json(manifest, "reproduction manifest")
        old_id = {k: old.get(k) for k in identity}
        if old_id.get("pneumonia") is None:  # a reproduction without Exp. 3 may be extended by it
            for key in ("pneumonia", "split_protocol", "exclude_overlap"):
                old_id[key] = identity[key]
        diff = [k for k in identity if old_id.get(k) != identity[k]]
        if diff:
            raise CxrtlError(
                f"{out} holds a different reproduction ({', '.join(diff)} differ); "
                "choose another --out, or repeat that reproduction's options"
            )
    elif out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise CxrtlError(f"{out} is not empty and holds no {MANIFEST}; choose an empty or new --out")


# ------------------------------------------------------------------------------------------ splits
def _subsample(records: list[Record], max_per_class: int | None, seed: int) -> list[Record]:
    """At most ``max_per_class`` records of each (class, official folder), chosen with ``seed``."""
    if not max_per_class:
        return records
    groups: dict[tuple, list[Record]] = {}
    for r in records:
        groups.setdefault((r.label, r.source_split), []).append(r)
    per_class: dict[str, int] = {}
    for (label, _), recs in groups.items():
        per_class[label] = per_class.get(label, 0) + len(recs)
    rng = np.random.default_rng(seed)
    keep: set[str] = set()
    for key in sorted(groups, key=lambda k: (k[0], k[1] or "")):
        recs = sorted(groups[key], key=lambda r: r.path)
        n = (
            max(1, round(max_per_class * len(recs) / per_class[key[0]]))
            if per_class[key[0]] > max_per_class
            else len(recs)
        )
        keep.update(recs[i].path for i in rng.choice(len(recs), size=min(n, len(recs)), replace=False))
    return [r for r in records if r.path in keep]


def _make_split(index: DatasetIndex, protocol: str, max_per_class: int | None, seed: int) -> dict:
    from ..data import make_split

    sub = DatasetIndex(
        index.root, index.layout, index.classes, _subsample(index.records, max_per_class, seed)
    )
    return make_split(
        sub, seed=seed, group_by="patient" if protocol == "patient" else None, official=protocol == "official"
    )


def _exclude_overlap(
    covid: DatasetIndex, covid_split: dict, pneu: DatasetIndex, pneu_split: dict, cache_dir, progress: bool
) -> list[str]:
    """Drop pneumonia test images whose content is in the COVID model's training or validation data."""
    from ..integrity.duplicates import overlap_with

    seen = [str(covid.abspath(r.path)) for name in ("train", "val") for r in covid_split[name]]
    test = {str(pneu.abspath(r.path)): r for r in pneu_split["test"]}
    dropped = overlap_with(seen, list(test), cache_dir=cache_dir, progress=progress)
    pneu_split["test"] = [r for p, r in test.items() if p not in dropped]
    return sorted(test[p].path for p in dropped)


def _write_splits(opts, covid, pneu, out: Path, max_per_class) -> dict:
    from ..data import read_split_csv, write_split_csv

    paths = {"covid": out / "splits" / "covid.csv", "pneumonia": out / "splits" / "pneumonia.csv"}
    notes: dict = {}
    if paths["covid"].is_file():  # written by an earlier, interrupted call: reuse, never remake
        covid_split = read_split_csv(paths["covid"], covid)
    else:
        covid_split = _make_split(covid, "paper", max_per_class, opts.seed)
        write_split_csv(paths["covid"], covid_split)
    if pneu is not None:
        overlap_file = out / "splits" / "pneumonia_overlap_dropped.json"
        if paths["pneumonia"].is_file():
            read_split_csv(paths["pneumonia"], pneu)
        else:
            pneu_split = _make_split(pneu, opts.split_protocol, max_per_class, opts.seed)
            if opts.exclude_overlap:
                dropped = _exclude_overlap(
                    covid, covid_split, pneu, pneu_split, opts.cache_dir, opts.progress
                )
                write_json(overlap_file, {"dropped": dropped})
            write_split_csv(paths["pneumonia"], pneu_split)
        if opts.exclude_overlap:
            notes["overlap_dropped"] = read_json(overlap_file, "overlap record")["dropped"]
    notes["paths"] = {k: str(v) for k, v in paths.items() if v.is_file()}
    return notes


# ------------------------------------------------------------------------------------------ runs
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
                ", ".join(f"{k}={v}" for k, v in run.to_config().items() if k not in ("name", "depends_on")),
            )
            summary = run_training(cfg)
        metrics = _evaluate(run_dir, roots[run.dataset], run.dataset, opts, prof, split_paths.get("masked"))
    history = _history_seconds(run_dir / "history.csv")
    config = {
        **summary.get("config", {}),
        **{k: v for k, v in run.to_config().items() if k != "name"},
        "init_source": init,
        "random_init": random_init,
    }
    return {
        "name": name,
        "configuration": run.name,
        "seed": seed,
        "experiment": list(run.experiments),
        "dataset": run.dataset,
        "pretraining": run.pretraining,
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


def _check_inputs(opts: ReproduceOptions, prof, runs: list[RunPlan]) -> tuple:
    """The COVID and pneumonia indexes and why ImageNet weights are missing (or None); refuses bad input."""
    need_pneumonia = any(r.dataset == "pneumonia" for r in runs)
    if opts.pneumonia_masks and not need_pneumonia:
        raise CxrtlError("--pneumonia-masks is for experiment 3; add 3 to --experiments, or drop it")
    if need_pneumonia and not opts.pneumonia:
        raise CxrtlError(
            "experiment 3 needs the pneumonia dataset; pass --pneumonia ROOT or --experiments 1,2"
        )
    covid = _load(opts.covid, "covid", "--covid")
    pneu = _load(opts.pneumonia, "pneumonia", "--pneumonia") if need_pneumonia and opts.pneumonia else None
    if any(r.input == "masked" for r in runs):
        from ..data.dataset import check_masks

        try:
            check_masks(covid)
        except CxrtlError as exc:
            raise CxrtlError(
                f"experiment 1 compares masked inputs: {exc}; or run --experiments 2,3"
            ) from None
    backbone = opts.backbone or prof.backbone
    from ..model import check_backbone

    check_backbone(backbone)
    no_weights = None
    if any(r.init in ("imagenet", COVID_BEST) for r in runs):
        no_weights = _imagenet_available(backbone, opts.pretrained_file)
        if no_weights and not opts.allow_random_init:
            raise CxrtlError(
                f"{no_weights.rstrip('.')}; or pass --allow-random-init to run from random weights "
                "(the report will say so)"
            )
    return covid, pneu, no_weights


def _run_all(
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


def _comparisons(runs: list[dict], experiments: tuple[int, ...], n_boot: int) -> list[dict]:
    """The paper's paired comparisons (``COMPARISONS``) among the configurations this reproduction ran."""
    from ..evaluation.compare import compare

    files: dict[str, list[Path]] = {}
    for r in runs:
        files.setdefault(r["configuration"], []).append(Path(r["run_dir"]) / "test" / "predictions.csv")
    out = []
    for exp, a, b in COMPARISONS:
        wanted = exp in experiments or (exp == 2 and 3 in experiments)
        if wanted and a in files and b in files:
            out.append({"experiment": exp, **compare(files[a], files[b], a, b, n_boot=n_boot)})
    return out


# ------------------------------------------------------------------------------------------ segmenter
def _plan_segmenter(opts: ReproduceOptions, prof: Profile, covid: DatasetIndex, no_weights) -> dict | None:
    """None (no segmenter), {"skipped": why} (no masks), or {"epochs", "init"}; checked before training."""
    from .segmenter import segmenter_init, skip_reason

    epochs = opts.segmenter_epochs if opts.segmenter_epochs is not None else prof.segmenter_epochs
    if epochs < 0:
        raise CxrtlError(f"invalid --segmenter-epochs {epochs}; expected 0 (no segmenter) or more")
    if not epochs:
        return None
    why = skip_reason(covid)
    if why:
        log.warning("no lung segmenter: %s", why)
        return {"skipped": why}
    from ..segmentation.model import DEFAULT_ENCODER

    return {"epochs": epochs, "init": segmenter_init(DEFAULT_ENCODER, opts.allow_random_init, no_weights)}


def _segmenter(plan: dict | None, opts: ReproduceOptions, prof: Profile, root: str, split_csv: Path, out):
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


def _lung_masks(opts: ReproduceOptions, pneu, split_paths: dict, out: Path, segmenter) -> dict | None:
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


# ------------------------------------------------------------------------------------------ entry point
def _check_external(opts: ReproduceOptions, covid: DatasetIndex) -> None:
    """Refuse a bad --external or --external-class-map before any training."""
    if opts.external_class_map and not opts.external:
        raise CxrtlError("--external-class-map maps the labels of --external ROOT|MANIFEST; give that too")
    if not opts.external:
        return
    from ..data import load_dataset
    from ..evaluation.external import parse_class_map

    load_dataset(opts.external)  # exists and has images
    if opts.external_class_map:
        parse_class_map(opts.external_class_map, covid.classes)


def _external_validation(opts: ReproduceOptions, prof: Profile, results: dict, out: Path) -> dict | None:
    """The best COVID run (by validation accuracy) evaluated on ``--external`` and compared with its test."""
    if not opts.external:
        return None
    from ..data import load_dataset
    from ..evaluation.evaluate import evaluate
    from ..evaluation.external import compare_evaluations, write_comparison

    covid_runs = [r for r in results.values() if r["dataset"] == "covid"]
    note = None
    if not any(r.mask_path for r in load_dataset(opts.external).records):
        raw = [r for r in covid_runs if r["config"].get("input", "raw") == "raw"]
        if len(raw) < len(covid_runs):
            note = "masked-input models need lung masks, which the external set lacks: best raw-input model"
        covid_runs = raw
    if not covid_runs:
        return {"skipped": "no COVID run that can score the external set was trained (experiments 1 or 2)"}
    best = max(covid_runs, key=lambda r: (r.get("best_val_acc") or 0.0, -covid_runs.index(r)))
    run_dir = Path(best["run_dir"])
    target = out / "external" / best["name"]
    try:
        m = evaluate(
            run_dir,
            opts.external,
            out=target,
            class_map=opts.external_class_map,
            allow_overlap=True,  # a finished reproduction is not thrown away: the report says it in bold
            device=opts.device,
            cache_dir=opts.cache_dir,
            progress=opts.progress,
            n_boot=prof.n_boot,
            precision=opts.precision,
        )
    except CxrtlError as exc:  # the runs are done; say why there is no external section rather than fail
        log.warning("no external validation: %s", exc)
        return {"skipped": str(exc)}
    comparison = compare_evaluations([run_dir / "test", target], n_boot=prof.n_boot)
    write_comparison(comparison, out / "external" / "comparison")
    return {
        "run": best["name"],
        "choice": note or "best COVID model by validation accuracy",
        "data": str(opts.external),
        "n": m["n"],
        "accuracy": m["accuracy"],
        "accuracy_ci": m["accuracy_ci"],
        "external": m.get("external"),
        "comparison": {k: v for k, v in comparison.items() if not k.startswith("_")},
        "folder": str(target),
    }


def reproduce(opts: ReproduceOptions) -> ReproductionResults:
    """Run the planned experiments into ``opts.out`` and write results.json, report.md and report.html."""
    from .report import write_report

    started = time.time()
    experiments = parse_experiments(opts.experiments)
    prof = get_profile(opts.profile)
    seeds = seed_list(opts.seed, opts.seeds)
    if opts.conformal is not None:
        from ..evaluation.conformal import check_alpha

        check_alpha(opts.conformal)
    if opts.split_protocol not in PROTOCOLS:
        raise CxrtlError(
            f"unknown --split-protocol {opts.split_protocol!r}; choose one of {', '.join(PROTOCOLS)}"
        )
    runs = plan_runs(experiments)

    # 1. Every check before any training: datasets of the right kind, masks, weights, the out dir.
    covid, pneu, no_weights = _check_inputs(opts, prof, runs)
    _check_external(opts, covid)
    seg_plan = _plan_segmenter(opts, prof, covid, no_weights)
    out = Path(opts.out)
    max_per_class = opts.max_per_class if opts.max_per_class is not None else prof.max_per_class
    identity = _identity(opts, prof, covid, pneu)
    _check_out(out, identity)
    ensure_dir(out)
    write_json(out / MANIFEST, {**identity, "experiments": sorted(set(experiments)), "seeds": seeds})

    # 2. Splits, written once and reused by every run and every later call.
    notes = _write_splits(opts, covid, pneu, out, max_per_class)
    roots = {"covid": str(covid.root), "pneumonia": str(pneu.root) if pneu else None}
    split_paths = {"covid": out / "splits" / "covid.csv", "pneumonia": out / "splits" / "pneumonia.csv"}

    # 3. The lung segmenter on the COVID split (no classifier's test image trains it), then the runs.
    # A given --pneumonia-masks folder is checked here, before training; else the segmenter writes them.
    lung_masks = _lung_masks(opts, pneu, split_paths, out, None) if opts.pneumonia_masks else None
    segmenter = _segmenter(seg_plan, opts, prof, str(covid.root), split_paths["covid"], out)
    if lung_masks is None:
        lung_masks = _lung_masks(opts, pneu, split_paths, out, segmenter)
    results, covid_best = _run_all(runs, opts, prof, roots, split_paths, out, no_weights)

    # 4. External validation of the best COVID model, then results and report.
    external = _external_validation(opts, prof, results, out)
    run_list = list(results.values())
    payload = {
        "runs": run_list,
        "configurations": configurations(run_list, POSITIVE),
        "comparisons": _comparisons(run_list, experiments, prof.n_boot),
        "segmenter": segmenter,
        "pneumonia_masks": lung_masks,
        "external": external,
        "reproduction": {
            **identity,
            "experiments": list(experiments),
            "seeds": seeds,
            "eval_precision": opts.precision,
            "conformal_alpha": opts.conformal,
            "seconds": time.time() - started,
            "covid_best": covid_best,
            "synthetic": _is_synthetic(covid) or bool(pneu and _is_synthetic(pneu)),
            "imagenet_unavailable": no_weights,
            "splits": notes,
        },
        "provenance": provenance(),
    }
    write_json(out / "results.json", payload)
    paths = write_report(out, payload)
    payload["report"] = {k: str(v) for k, v in paths.items()}
    return cast(ReproductionResults, payload)
