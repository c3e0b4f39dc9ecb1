"""``cxrtl evaluate MODEL --data ROOT --out DIR``: predictions, metrics with intervals, figures."""

from __future__ import annotations

import argparse

from . import options


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a run or checkpoint on a dataset subset: metrics, intervals, figures",
        description="Evaluate a run directory (its split.csv and best checkpoint) or a checkpoint on a subset "
        "of a dataset. Writes predictions.csv, metrics.json, report.md and ROC / confusion / "
        "reliability (and training-curve) figures as PNG and SVG.",
    )
    options.add_model(p)
    options.add_data(p, help="dataset root (default: the one in the run's config, for a run or checkpoint)")
    options.add_split(
        p,
        "split CSV (default: the run's split.csv, else the split remade with the checkpoint's training settings)",
    )
    p.add_argument(
        "--subset",
        default="test",
        choices=("test", "val", "calibration", "train", "all"),
        help="which part of the split to score; 'all' scores every image (default: test)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="fit a temperature on the calibration subset (the validation subset when the split has none) "
        "and store it in the model's decision record",
    )
    p.add_argument(
        "--positive", metavar="CLASS", help="positive class for an operating point (e.g. COVID, PNEUMONIA)"
    )
    p.add_argument(
        "--target-sensitivity",
        type=float,
        default=0.95,
        metavar="S",
        help="sensitivity the operating point must reach on the calibration (else validation) subset "
        "(default 0.95)",
    )
    p.add_argument(
        "--conformal",
        type=float,
        metavar="ALPHA",
        help="fit split-conformal (LAC) prediction sets on the calibration (else validation) subset with "
        "coverage 1 - ALPHA (e.g. 0.1), store the threshold in the model's decision record for predict, "
        "report them on --subset; the coverage is marginal (over all images, not per class)",
    )
    p.add_argument(
        "--conformal-by-class",
        action="store_true",
        help="with --conformal: class-conditional (Mondrian) sets, one threshold per class, so each class "
        "gets coverage 1 - ALPHA; needs at least max(20, 1/ALPHA - 1) fitting images of every class",
    )
    options.add_precision(
        p,
        ("fp32", "bf16", "auto"),
        "numerics of the evaluation passes; fp32 on every device by default, as the paper's numbers "
        "are (auto: bf16 autocast on CUDA)",
        default="fp32",
    )
    options.add_device(p)
    p.add_argument("--batch-size", type=int, default=64, help="inference batch size (default 64)")
    p.add_argument(
        "--cam-in-lungs",
        action="store_true",
        help="also report the share of Grad-CAM inside the lung masks, per class",
    )
    p.add_argument(
        "--cache-dir", metavar="DIR", help="image cache (default env CXRTL_CACHE_DIR or ~/.cache/cxrtl)"
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for F1/AUC intervals (0: none; default 1000)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    ext = p.add_argument_group("external validation")
    ext.add_argument(
        "--class-map",
        metavar="MAP",
        help="score an external set (folder or manifest in --data): map its labels onto the model's classes, "
        'inline "COVID-19=COVID,No finding=Normal" or a YAML file; unmapped labels are dropped and counted',
    )
    ext.add_argument(
        "--allow-overlap",
        action="store_true",
        help="evaluate an external set even when it shares images with the run's training data (reported)",
    )
    ood = p.add_argument_group("out-of-distribution guard")
    ood.add_argument(
        "--ood-data",
        metavar="DIR",
        help="a folder of images that are not chest radiographs: report the guard's AUROC and true-flag rate",
    )
    ood.add_argument(
        "--fit-ood",
        action="store_true",
        help="fit the guard again on the split's training images (threshold on validation) and store it",
    )
    ood.add_argument(
        "--ood-percentile",
        type=float,
        metavar="P",
        help="with --fit-ood: threshold at this percentile of validation scores (default 99)",
    )
    ood.add_argument(
        "--ood-layer",
        choices=("hidden", "pooled"),
        help="with --fit-ood: the head's 64-d hidden layer (default) or the backbone's pooled features",
    )
    options.add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import CxrtlError
    from ..evaluation.evaluate import evaluate
    from ..formatting import fmt_pct

    if args.batch_size < 1:
        raise CxrtlError(f"--batch-size must be at least 1, not {args.batch_size}")
    if args.bootstrap < 0:
        raise CxrtlError(f"--bootstrap must be 0 or more, not {args.bootstrap}")
    if not 0 < args.target_sensitivity <= 1:
        raise CxrtlError(f"--target-sensitivity must be in (0, 1], not {args.target_sensitivity}")
    from ..model_ref import local_path

    m = evaluate(
        local_path(args.model),  # hf://OWNER/NAME -> the downloaded (or cached) bundle folder
        args.data,
        split_csv=args.split,
        subset=args.subset,
        out=args.out,
        calibrate=args.calibrate,
        positive=args.positive,
        target_sensitivity=args.target_sensitivity,
        device=args.device,
        batch_size=args.batch_size,
        cam_in_lungs=args.cam_in_lungs,
        cache_dir=args.cache_dir,
        progress=args.progress,
        seed=args.seed,
        n_boot=args.bootstrap,
        figures=not args.no_figures,
        precision=args.precision,
        conformal=args.conformal,
        conformal_by_class=args.conformal_by_class,
        class_map=args.class_map,
        allow_overlap=args.allow_overlap,
        fit_ood=args.fit_ood,
        ood_percentile=args.ood_percentile,
        ood_layer=args.ood_layer,
        ood_data=args.ood_data,
    )
    print(
        f"{m['source']['subset']}: n={m['n']}  accuracy {fmt_pct(m['accuracy'], m['accuracy_ci'], 2)}  "
        f"loss {m['loss']:.4f}  weighted F1 {fmt_pct(m['weighted']['f1'], m['weighted'].get('f1_ci'), 2)}  "
        f"ECE {m['ece']:.4f}"
    )
    for c in m["classes"]:
        e = m["per_class"][c]
        print(
            f"  {c}: precision {_pct(e['precision'], e['precision_ci'])}  "
            f"recall {_pct(e['recall'], e['recall_ci'])}  F1 {_pct(e['f1'])}  support {e['support']}"
        )
    if m.get("calibrated"):
        print(
            f"temperature {m['calibrated']['temperature']:.4f}: loss {m['calibrated']['loss']:.4f}, "
            f"ECE {m['calibrated']['ece']:.4f}"
        )
        if m["calibrated"]["ece"] > m["ece"]:
            print(f"  temperature scaling made the ECE on {args.subset} worse ({m['ece']:.4f} before)")
    op = m.get("operating_point")
    if op:
        te = op["test"]
        print(
            f"{op['positive']} at threshold {op['threshold']:.4f}: sensitivity "
            f"{fmt_pct(te['sensitivity'], te['sensitivity_ci'])}, specificity "
            f"{fmt_pct(te['specificity'], te['specificity_ci'])} (threshold saved in the decision record)"
        )
        if op.get("warning"):
            print(f"  caution: {op['warning']}")
    cp = m.get("conformal")
    if cp:
        print(
            f"conformal sets (LAC, alpha {cp['alpha']:g}): coverage {fmt_pct(cp['coverage'])} "
            f"(target {fmt_pct(1 - cp['alpha'])}), mean set size {cp['mean_set_size']:.2f}, "
            f"single-class sets {fmt_pct(cp['singleton_fraction'])}, empty sets "
            f"{fmt_pct(cp['empty_fraction'])}; "
            + ("per-class thresholds" if cp.get("class_thresholds") else f"threshold {cp['threshold']:.4f}")
            + f" saved in the decision record (fitted on {cp['fitted_on']})"
        )
    if m.get("cam_in_lungs", {}).get("skipped"):
        print(f"Grad-CAM inside lungs: not computed ({m['cam_in_lungs']['skipped']})")
    elif m.get("cam_in_lungs"):
        cam = m["cam_in_lungs"]["overall"]
        chance = (
            "" if cam.get("mask_share") is None else f" (lungs cover {cam['mask_share']:.3f} of the image)"
        )
        ci = f" [{cam['ci'][0]:.3f}, {cam['ci'][1]:.3f}]" if cam.get("ci") else ""
        print(
            f"Grad-CAM inside lungs (CAM of the predicted class): {cam['mean']:.3f}{ci}{chance} (n={cam['n']})"
            if cam["mean"] is not None
            else "Grad-CAM inside lungs: no masks"
        )
        if m["cam_in_lungs"].get("warning"):
            print(f"  caution: {m['cam_in_lungs']['warning']}")
    _print_external(m)
    _print_ood(m)
    print(f"wrote {args.out}/predictions.csv, metrics.json, report.md")
    return 0


def _pct(value, ci=None) -> str:
    """A percentage with its interval, or "n/a" where the metric is undefined (an empty denominator)."""
    from ..formatting import fmt_pct

    return "n/a" if value is None else fmt_pct(value, ci)


def _print_external(m) -> None:
    ext = m.get("external")
    if not ext:
        return
    if ext.get("dropped_per_label"):
        print(
            "dropped (label not in the class map): "
            + ", ".join(f"{k} {v}" for k, v in ext["dropped_per_label"].items())
        )
    if ext.get("note"):
        print(f"note: {ext['note']}")
    check = ext.get("overlap") or {}
    if check.get("checked") and check["overlap"]:
        print(f"caution: {check['overlap']} image(s) duplicate training images (--allow-overlap)")
    elif not check.get("checked"):
        print(f"overlap with training not checked: {check.get('reason')}")


def _print_ood(m) -> None:
    from ..formatting import fmt_pct

    o = m.get("ood")
    if not o:
        return
    external = "flag_rate" in o
    rate, ci = (
        (o["flag_rate"], o["flag_rate_ci"]) if external else (o["false_flag_rate"], o["false_flag_rate_ci"])
    )
    line = (
        f"OOD guard ({o['layer']}, threshold {o['threshold']:.4g}): flags {o['flagged']} of {o['n']} "
        f"{'of the external set' if external else 'here'} ({fmt_pct(rate, ci)}; "
        f"~{fmt_pct(o['expected_false_flag_rate'])} of in-distribution images by design)"
    )
    print(line)
    d = o.get("ood_data")
    if d:
        auroc = "n/a" if d["auroc"] is None else f"{d['auroc']:.3f}"
        print(
            f"  --ood-data: AUROC {auroc}, flags {d['flagged']} of {d['n']} "
            f"({fmt_pct(d['true_flag_rate'], d['true_flag_rate_ci'])})"
        )
