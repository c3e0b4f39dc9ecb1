"""`cxrtl reproduce`: the paper's three experiments in one command."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from ..paper.experiments import PROFILES
from . import options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="run the paper's experiments 1-3 and write one report",
        description="Train and evaluate the paper's experiments (1: raw vs masked x 1 vs 3 "
        "channels; 2: four losses; 3: five pneumonia transfer schemes), then write "
        "results.json, report.md and report.html into --out. Finished runs in --out "
        "are skipped, so an interrupted reproduction continues where it stopped.",
    )
    p.add_argument("--covid", required=True, metavar="ROOT", help="COVID-19 Radiography Database root")
    p.add_argument("--pneumonia", metavar="ROOT", help="Kermany chest_xray root (needed by experiment 3)")
    p.add_argument("--out", required=True, metavar="DIR", help="reproduction directory")
    p.add_argument(
        "--profile",
        default="paper",
        choices=list(PROFILES),
        help="paper: 224 px, 30 epochs, full data (GPU); quick: small images, few epochs, subsampled "
        "(2-core CPU) [paper]",
    )
    p.add_argument("--experiments", default="1,2,3", help="comma-separated subset of 1,2,3 [1,2,3]")
    p.add_argument(
        "--split-protocol",
        default="paper",
        choices=["paper", "patient", "official"],
        help="pneumonia split: the paper's image-level 7:2:1 re-split, a patient-grouped re-split, "
        "or Kermany's own folders [paper]",
    )
    p.add_argument(
        "--exclude-overlap",
        action="store_true",
        help="drop pneumonia test images whose content also appears in the COVID training data",
    )
    p.add_argument(
        "--allow-random-init",
        action="store_true",
        help="when ImageNet weights cannot be had, start those runs from random weights "
        "(the report's first line says so)",
    )
    p.add_argument(
        "--pretrained-file",
        metavar="PATH",
        help="local ImageNet weights (model.safetensors) for the backbone; or set CXRTL_IMAGENET_WEIGHTS",
    )
    p.add_argument("--backbone", help="timm backbone instead of the profile's densenet121")
    p.add_argument("--epochs", type=int, help="override the profile's epochs")
    p.add_argument("--image-size", type=int, help="override the profile's image size")
    p.add_argument("--batch-size", type=int, help="override the profile's batch size (lr = batch / 1.6e4)")
    p.add_argument("--max-per-class", type=int, help="override the profile's per-class subsampling (0: all)")
    p.add_argument(
        "--segmenter-epochs",
        type=int,
        metavar="N",
        help="train a 64 px lung U-Net for N epochs on the COVID split and report its Dice "
        "(0: none) [quick: 5, paper: 0]",
    )
    p.add_argument(
        "--pneumonia-masks",
        metavar="MASK_DIR",
        help="lung masks for the pneumonia set (`cxrtl data masks`) for Exp. 3's Grad-CAM lung check "
        "[default: the segmenter's, written to OUT/pneumonia_masks]",
    )
    p.add_argument(
        "--external",
        metavar="ROOT|MANIFEST",
        help="an external COVID set: evaluate the best COVID model on it and compare with its test split",
    )
    p.add_argument(
        "--external-class-map",
        metavar="MAP",
        help='map the external labels onto the COVID classes, inline "COVID-19=COVID,No Finding=Normal" or YAML',
    )
    p.add_argument("--seed", type=int, default=2022, help="seed for splits and training [2022]")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="train each configuration with N seeds (--seed, --seed + 1, ...) on the same split; tables "
        "show mean ± sd; with N >= 2 each comparison bootstraps over seeds and test images, beside the "
        "test of the seed-averaged ensembles [1]",
    )
    options.add_precision(
        p,
        ("fp32", "bf16", "auto"),
        "numerics of the test evaluations: fp32 as the paper's numbers are; training keeps bf16 "
        "autocast on CUDA (default fp32)",
        default="fp32",
    )
    p.add_argument(
        "--conformal",
        type=float,
        default=0.1,
        metavar="ALPHA",
        help="alpha of the conformal prediction sets fitted on each run's validation split [0.1]",
    )
    options.add_device(p)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers [0]")
    p.add_argument("--cache-dir", help="image cache (default: $CXRTL_CACHE_DIR or ~/.cache/cxrtl)")
    options.add_progress(p)
    p.add_argument(
        "--track",
        choices=["mlflow"],
        help="log the reproduction to MLflow, one parent run with a child per training run "
        "($MLFLOW_TRACKING_URI, else OUT/mlruns); needs cxrtl[mlflow]",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..paper.reproduce import ReproduceOptions, reproduce
    from ..tracking import check_tracker, track_reproduction

    check_tracker(args.track)

    opts = ReproduceOptions(
        covid=args.covid,
        pneumonia=args.pneumonia,
        out=args.out,
        profile=args.profile,
        experiments=args.experiments,
        split_protocol=args.split_protocol,
        exclude_overlap=args.exclude_overlap,
        seed=args.seed,
        seeds=args.seeds,
        precision=args.precision,
        conformal=args.conformal,
        backbone=args.backbone,
        epochs=args.epochs,
        image_size=args.image_size,
        batch_size=args.batch_size,
        max_per_class=args.max_per_class,
        allow_random_init=args.allow_random_init,
        pretrained_file=args.pretrained_file,
        segmenter_epochs=args.segmenter_epochs,
        pneumonia_masks=args.pneumonia_masks,
        external=args.external,
        external_class_map=args.external_class_map,
        device=args.device,
        workers=args.workers,
        cache_dir=args.cache_dir,
        progress=args.progress,
    )
    result = reproduce(opts)
    for r in result["runs"]:
        print(f"{r['name']:32s} test accuracy {r['test']['accuracy']:.4f}  best epoch {r['best_epoch']}")
    for line in best_lines(result["configurations"]):
        print(line)
    seg = result.get("segmenter") or {}
    if "test" in seg:
        d = seg["test"]["dice"]
        print(f"lung segmenter: test Dice {d['mean']:.4f} [{d['ci_low']:.4f}, {d['ci_high']:.4f}]")
    ext = result.get("external") or {}
    if "accuracy" in ext:
        print(f"external validation of {ext['run']}: accuracy {ext['accuracy']:.4f} on {ext['n']} images")
    print(f"report: {result['report']['html']}")
    if args.track and (uri := track_reproduction(args.out, dict(result), args.track)):  # None: warned
        print(f"tracked in {uri}")
    return 0


def best_lines(configurations: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per dataset, the configuration with the best mean validation accuracy and its test accuracy.

    Chosen on validation, never on test: the test figure is reported, not maximised.
    """
    lines = []
    for dataset in ("covid", "pneumonia"):
        pool = [c for c in configurations if c["dataset"] == dataset and c.get("best_val_acc")]
        if not pool:
            continue
        best = max(pool, key=lambda c: (c["best_val_acc"]["mean"], -pool.index(c)))
        acc, n = best["accuracy"], len(best["seeds"])
        sd = f" ± {acc['sd']:.4f} over {n} seeds" if acc.get("sd") is not None else ""
        lines.append(
            f"best {dataset} configuration by validation accuracy: {best['name']} "
            f"(val {best['best_val_acc']['mean']:.4f}); its test accuracy {acc['mean']:.4f}{sd}"
        )
    return lines
