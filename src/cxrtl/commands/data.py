"""``cxrtl data synth|check|split|cache|masks|dedup|manifest``: thin shells over :mod:`cxrtl.data`."""

from __future__ import annotations

import json
import logging
from collections import Counter

from ..errors import CxrtlError
from . import options
from .dedup import add_parser as add_dedup_parser


def register(subparsers) -> None:
    data = subparsers.add_parser(
        "data",
        help="synthesise, check, split and cache datasets",
        description="Dataset tools: synth, check, split, cache.",
    )
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    p = sub.add_parser("synth", help="write deterministic synthetic COVID-19 Radiography + Kermany sets")
    p.add_argument(
        "out", metavar="OUT", help="output folder (gets COVID-19_Radiography_Dataset/ and chest_xray/)"
    )
    p.add_argument(
        "--count", type=int, default=400, help="COVID-like images (default 400); Kermany ~28%% of it"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    options.add_progress(p)
    p.set_defaults(func=run_synth)

    p = sub.add_parser(
        "check",
        help="detect the layout, count classes, list skipped files; exit 1 on leakage",
        description="Detect the layout, count classes and list skipped files. With --split, also look for "
        "leakage (duplicates across splits, patients in more than one split): exit status 1 when any is found.",
    )
    p.add_argument("root", metavar="ROOT", help="dataset folder, a parent of it, or a CSV manifest")
    options.add_format(p, ("text", "json"), "text")
    options.add_split(p, "also check this split (and its leakage)")
    options.add_progress(p)
    p.set_defaults(func=run_check)

    p = sub.add_parser(
        "split",
        help="write a seeded, stratified train/val/test split CSV (optionally with a calibration subset)",
        description="Write a seeded split CSV, stratified by class. A calibration subset (four --ratios, or "
        "--calibration-fraction) is where `cxrtl evaluate --calibrate/--positive/--conformal` fit their "
        "settings, apart from the validation images that choose the checkpoint.",
    )
    p.add_argument("root", metavar="ROOT", help="dataset folder, a parent of it, or a CSV manifest")
    p.add_argument("--out", required=True, metavar="SPLIT.csv", help="CSV to write")
    p.add_argument(
        "--ratios",
        nargs="+",
        metavar="A,B,C[,D]",
        help="train,val,test ratios, e.g. 0.7,0.2,0.1 (default 0.7,0.15,0.15 COVID; 0.7,0.2,0.1 otherwise), "
        "or train,val,calibration,test, e.g. 0.7,0.1,0.05,0.15",
    )
    p.add_argument(
        "--calibration-fraction",
        type=float,
        metavar="F",
        help="move this share of each class's training images (whole patients with --group-by) to a "
        "calibration subset; validation and test stay as they were (e.g. 0.1)",
    )
    p.add_argument("--seed", type=int, default=2022, help="random seed (default 2022, the authors')")
    p.add_argument("--group-by", choices=("patient",), help="keep all images of a patient in one split")
    p.add_argument("--official", action="store_true", help="use Kermany's own train/val/test folders")
    p.add_argument("--masks", metavar="MASK_DIR", help="fill mask_path from `cxrtl data masks` output")
    p.set_defaults(func=run_split)
    _register_masks(sub)

    p = sub.add_parser("cache", help="decode, mask, resize and crop once into the uint8 cache")
    p.add_argument("root", metavar="ROOT", help="dataset folder, a parent of it, or a CSV manifest")
    options.add_split(p, "cache the images of this split (default: all)")
    p.add_argument("--input", choices=("raw", "masked"), default="raw", help="raw or lung-masked (eq. 9)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1 or 3 (pseudo-RGB)")
    p.add_argument("--image-size", type=int, default=224, help="crop size (default 224)")
    p.add_argument("--cache-dir", help="cache folder (default $CXRTL_CACHE_DIR or ~/.cache/cxrtl)")
    options.add_progress(p)
    p.set_defaults(func=run_cache)

    add_dedup_parser(sub)
    _register_manifest(sub)


def run_synth(args) -> int:
    from ..data.sources import load_dataset
    from ..data.synthetic import synthesize

    covid, kermany = synthesize(args.out, count=args.count, seed=args.seed, progress=args.progress)
    for root in (covid, kermany):
        index = load_dataset(root)
        counts = Counter(r.label for r in index.records)
        print(f"{root}: {len(index.records)} images ({', '.join(f'{c} {counts[c]}' for c in index.classes)})")
    return 0


def summarize(index) -> dict:
    """The `data check` report of an index (JSON-ready)."""
    counts = Counter(r.label for r in index.records)
    patients = {r.patient_id for r in index.records if r.patient_id}
    per_split = None
    if any(r.source_split for r in index.records):
        per_split = {
            s: dict(sorted(Counter(r.label for r in index.records if r.source_split == s).items()))
            for s in ("train", "val", "test")
        }
    return {
        "root": str(index.root),
        "layout": index.layout,
        "classes": list(index.classes),
        "counts": {c: counts.get(c, 0) for c in index.classes},
        "total": len(index.records),
        "with_mask": sum(1 for r in index.records if r.mask_path),
        "missing_masks": len(index.missing_masks),
        "patients": len(patients) if patients else None,
        "official_split": per_split,
        "skipped": [{"path": s.path, "reason": s.reason} for s in index.skipped],
    }


def run_check(args) -> int:
    from ..data.sources import load_dataset
    from ..data.splits import read_split_csv

    index = load_dataset(args.root)
    report = summarize(index)
    if args.split:
        split = read_split_csv(args.split, index)
        report["split"] = {
            name: dict(sorted(Counter(r.label for r in recs).items())) for name, recs in split.items()
        }
        from ..integrity.leakage import check_split

        report["leakage"] = check_split(index, split, progress=args.progress)
    leaks = "leakage" in report and not report["leakage"]["ok"]
    if args.format == "json":
        from ..fsutil import json_safe

        print(json.dumps(json_safe(report), indent=2, default=str))
        return 1 if leaks else 0
    _print_check(report)
    return 1 if leaks else 0


def _print_check(report: dict) -> None:
    """The text form of `data check`'s report."""
    print(
        f"{report['root']}: {report['layout']} layout, {report['total']} images in "
        f"{len(report['classes'])} classes"
    )
    width = max(len(c) for c in report["classes"])
    for c in report["classes"]:
        print(f"  {c:<{width}}  {report['counts'][c]}")
    if report["with_mask"] or report["missing_masks"]:
        print(f"lung masks: {report['with_mask']} ({report['missing_masks']} missing)")
    if report["patients"] is not None:
        print(f"patients: {report['patients']}")
    if report["official_split"]:
        print(
            "official folders: "
            + "; ".join(
                f"{s} " + ", ".join(f"{c} {n}" for c, n in d.items())
                for s, d in report["official_split"].items()
            )
        )
    if "split" in report:
        sizes = {s: sum(d.values()) for s, d in report["split"].items()}
        print("split: " + "; ".join(f"{s} {n}" for s, n in sizes.items() if n or s != "calibration"))
    if "leakage" in report:
        from ..integrity.leakage import leakage_lines

        print("\n".join(leakage_lines(report["leakage"])))
    if report["skipped"]:
        reasons = Counter(
            s["reason"].split(" of ")[0] if s["reason"].startswith("duplicate") else s["reason"]
            for s in report["skipped"]
        )
        print(
            f"skipped {len(report['skipped'])} file(s): "
            + ", ".join(f"{r} {n}" for r, n in reasons.most_common())
        )
        for s in report["skipped"][:10]:
            print(f"  {s['path']}: {s['reason']}")
        if len(report["skipped"]) > 10:
            print(f"  ... and {len(report['skipped']) - 10} more (see --format json)")


def run_split(args) -> int:
    from ..data.sources import load_dataset
    from ..data.splits import make_split, parse_ratios, write_split_csv

    ratios = parse_ratios(",".join(args.ratios)) if args.ratios else None
    if args.official and (ratios is not None or args.group_by):
        raise CxrtlError("--official uses Kermany's own folders; drop --ratios/--group-by")
    index = load_dataset(args.root)
    split = make_split(
        index,
        ratios=ratios,
        seed=args.seed,
        group_by=args.group_by,
        official=args.official,
        calibration_fraction=args.calibration_fraction,
    )
    if args.masks:
        split = _with_masks(index, split, args.masks)
    path = write_split_csv(args.out, split)
    print(f"wrote {path}")
    for name, recs in split.items():
        if name == "calibration" and not recs:
            continue
        counts = Counter(r.label for r in recs)
        print(f"  {name:<11} {len(recs):>6}  " + ", ".join(f"{c} {counts.get(c, 0)}" for c in index.classes))
    return 0


def run_cache(args) -> int:
    from ..data.cache import build_cache, check_masks
    from ..data.preprocess import Preprocess
    from ..data.sources import load_dataset
    from ..data.splits import read_split_csv

    if args.image_size < 8:
        raise CxrtlError(f"--image-size {args.image_size} is too small; use at least 8")
    pp = Preprocess(input=args.input, channels=args.channels, image_size=args.image_size)
    index = load_dataset(args.root)
    records = index.records
    if args.split:
        records = [r for recs in read_split_csv(args.split, index).values() for r in recs]
    if pp.input == "masked":
        check_masks(index, records)
    cache_log = logging.getLogger("cxrtl.data.cache")
    level = cache_log.level
    # The summary below says "built/reused cache ..." once; the library's INFO line would say it twice.
    if not getattr(args, "verbose", False):
        cache_log.setLevel(logging.WARNING)
    try:
        cache = build_cache(index, records, pp, cache_dir=args.cache_dir, progress=args.progress)
    finally:
        cache_log.setLevel(level)
    state = "built" if cache.built else "reused"
    print(
        f"{state} cache {cache.dir}: {len(cache)} images, {pp.input}, {pp.image_size}x{pp.image_size} uint8"
    )
    if cache.converted:
        modes = Counter(cache.converted.values())
        print("converted to 8-bit grey: " + ", ".join(f"{m} {n}" for m, n in modes.most_common()))
    if cache.failed:
        print(f"could not decode {len(cache.failed)} image(s); they are excluded from training:")
        for path, reason in sorted(cache.failed.items())[:10]:
            print(f"  {path}: {reason}")
    return 0


# ----------------------------------------------------------------------------- masks from a segmenter
def _register_masks(sub) -> None:
    p = sub.add_parser("masks", help="predict lung masks for a whole dataset into a separate folder")
    p.add_argument("root", metavar="ROOT", help="dataset folder (e.g. Kermany's chest_xray)")
    p.add_argument("--segmenter", required=True, metavar="SEG_RUN", help="run dir of `cxrtl segment train`")
    p.add_argument("--out", required=True, metavar="MASK_DIR", help="folder for the masks (outside ROOT)")
    options.add_device(p)
    options.add_progress(p)
    p.set_defaults(func=run_masks)


def run_masks(args) -> int:
    from ..segmentation.masks import write_dataset_masks

    written, failed = write_dataset_masks(
        args.root, args.segmenter, args.out, args.device, progress=args.progress
    )
    for path, why in failed:
        print(f"failed: {path}: {why}")
    print(
        f"wrote {written} mask(s) to {args.out}; use them with `cxrtl data split {args.root} --masks {args.out}`"
    )
    return 1 if failed else 0


def _with_masks(index, split, mask_dir):
    from ..segmentation.masks import attach_masks

    return attach_masks(index, split, mask_dir)


def _register_manifest(sub) -> None:
    p = sub.add_parser(
        "manifest",
        help="a manifest (path,label[,patient_id]) from a collection's metadata table (CSV or .xlsx)",
        description="Build a cxrtl manifest from the metadata table a public collection ships (e.g. the "
        "covid-chestxray-dataset's metadata.csv: patientid, finding, view, modality, filename). Rows whose "
        "image is missing are counted, not fatal. Labels keep their source names; map them onto a model's "
        "classes with `cxrtl evaluate --class-map`.",
    )
    p.add_argument("table", metavar="TABLE", help="the metadata table: .csv, .tsv or .xlsx")
    p.add_argument("--images", required=True, metavar="DIR", help="the folder the table's file names are in")
    p.add_argument(
        "--path-column", required=True, metavar="C", help="column of image file names (e.g. filename)"
    )
    p.add_argument("--label-column", required=True, metavar="C", help="column of labels (e.g. finding)")
    p.add_argument("--patient-column", metavar="C", help="column of patient ids (e.g. patientid)")
    p.add_argument(
        "--where",
        action="append",
        metavar="COLUMN=V[,V...]",
        help="keep only rows whose COLUMN is one of the values, e.g. view=PA,AP (repeatable)",
    )
    p.add_argument("--out", required=True, metavar="MANIFEST.csv", help="manifest CSV to write")
    options.add_format(p, ("text", "json"), "text")
    p.set_defaults(func=run_manifest)


def run_manifest(args) -> int:
    from ..data.manifest import build_manifest

    report = build_manifest(
        args.table,
        args.images,
        args.out,
        path_column=args.path_column,
        label_column=args.label_column,
        patient_column=args.patient_column,
        where=args.where,
    )
    if args.format == "json":
        print(json.dumps(report, indent=2))
        return 0
    labels = ", ".join(f"{k} {v}" for k, v in report["labels"].items())
    print(f"wrote {report['out']}: {report['written']} of {report['rows']} rows ({labels})")
    for key, what in (
        ("filtered_out", "left out by --where"),
        ("missing_files", "name a file that is not there"),
        ("no_label", "have no file name or label"),
        ("duplicates", "repeat an image already listed"),
    ):
        if report[key]:
            print(f"  {report[key]} row(s) {what}")
    return 0
