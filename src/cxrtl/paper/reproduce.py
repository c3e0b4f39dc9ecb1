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

The jobs live in their own modules: ``planning`` (checks before any training), ``splits``, ``runs``
(training and evaluating each seed of each configuration, the segmenter), ``comparisons`` and ``report``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ..errors import CxrtlError
from ..fsutil import ensure_dir, write_json
from ..provenance import provenance
from ..results import ReproductionResults
from .comparisons import bootstrap_seed
from .comparisons import comparisons as _comparisons
from .experiments import get_profile, parse_experiments, plan_runs
from .options import MANIFEST, POSITIVE, PROTOCOLS, ReproduceOptions
from .planning import check_inputs, check_out, identity_of, is_synthetic, plan_segmenter
from .runs import lung_masks as _lung_masks
from .runs import run_all, train_segmenter
from .seeds import configurations, seed_list
from .splits import write_splits

if TYPE_CHECKING:
    from ..data.records import DatasetIndex
    from .experiments import Profile

log = logging.getLogger(__name__)

# Names other modules and tests import from here.
_check_out = check_out
_plan_segmenter = plan_segmenter
_write_splits = write_splits
__all__ = ["MANIFEST", "ReproduceOptions", "reproduce"]


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
    from ..evaluation.across_sets import compare_evaluations, write_comparison
    from ..evaluation.evaluate import evaluate

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
    covid, pneu, no_weights = check_inputs(opts, prof, runs)
    _check_external(opts, covid)
    seg_plan = plan_segmenter(opts, prof, covid, no_weights)
    out = Path(opts.out)
    max_per_class = opts.max_per_class if opts.max_per_class is not None else prof.max_per_class
    identity = identity_of(opts, prof, covid, pneu)
    check_out(out, identity)
    ensure_dir(out)
    write_json(out / MANIFEST, {**identity, "experiments": sorted(set(experiments)), "seeds": seeds})

    # 2. Splits, written once and reused by every run and every later call.
    notes = write_splits(opts, covid, pneu, out, max_per_class)
    roots = {"covid": str(covid.root), "pneumonia": str(pneu.root) if pneu else None}
    split_paths = {"covid": out / "splits" / "covid.csv", "pneumonia": out / "splits" / "pneumonia.csv"}

    # 3. The lung segmenter on the COVID split (no classifier's test image trains it), then the runs.
    # A given --pneumonia-masks folder is checked here, before training; else the segmenter writes them.
    lung_masks = _lung_masks(opts, pneu, split_paths, out, None) if opts.pneumonia_masks else None
    segmenter = train_segmenter(seg_plan, opts, prof, str(covid.root), split_paths["covid"], out)
    if lung_masks is None:
        lung_masks = _lung_masks(opts, pneu, split_paths, out, segmenter)
    results, covid_best = run_all(runs, opts, prof, roots, split_paths, out, no_weights)

    # 4. External validation of the best COVID model, then results and report.
    external = _external_validation(opts, prof, results, out)
    run_list = list(results.values())
    boot_seed = bootstrap_seed(opts.seed)
    payload = {
        "runs": run_list,
        "configurations": configurations(run_list, POSITIVE),
        "comparisons": _comparisons(run_list, experiments, prof.comparison_resamples, boot_seed),
        "segmenter": segmenter,
        "pneumonia_masks": lung_masks,
        "external": external,
        "reproduction": {
            **identity,
            "experiments": list(experiments),
            "seeds": seeds,
            "eval_precision": opts.precision,
            "conformal_alpha": opts.conformal,
            "bootstrap": {
                "resamples": prof.comparison_resamples,
                "seed": boot_seed,
                "derived_from_seed": opts.seed,
            },
            "seconds": time.time() - started,
            "covid_best": covid_best,
            "synthetic": is_synthetic(covid) or bool(pneu and is_synthetic(pneu)),
            "imagenet_unavailable": no_weights,
            "splits": notes,
        },
        "provenance": provenance(),
    }
    write_json(out / "results.json", payload)
    paths = write_report(out, payload)
    payload["report"] = {k: str(v) for k, v in paths.items()}
    return cast(ReproductionResults, payload)
