"""`cxrtl data dedup`: exact and near-duplicate images within a dataset, across splits or across datasets."""

from __future__ import annotations

import json

from ..data.splits import write_split_csv
from ..errors import CxrtlError
from ..fsutil import write_json
from ..integrity.dedup import dedup_dataset
from ..integrity.duplicates import DEFAULT_THRESHOLD
from . import options


def add_parser(data_subparsers) -> None:
    """Register ``cxrtl data dedup`` on the ``data`` command's subparsers."""
    p = data_subparsers.add_parser(
        "dedup",
        help="find exact and near-duplicate images (within a dataset, across splits or datasets)",
        description="Find exact duplicates (same decoded pixels) and near duplicates (pHash within a Hamming "
        "threshold) within ROOT, across the splits of --split, or between ROOT and ROOT2.",
    )
    p.add_argument("root", metavar="ROOT", help="dataset root")
    p.add_argument("root2", metavar="ROOT2", nargs="?", help="second dataset root (cross-dataset duplicates)")
    options.add_split(p, "split CSV of the last root: report cross-split leakage")
    options.add_format(p, ("text", "json"), "text")
    p.add_argument("--out", metavar="REPORT.json", help="also write the JSON report here")
    p.add_argument(
        "--drop",
        metavar="OUT.csv",
        help="write a cleaned split CSV (needs --split): leaking "
        "val/test images removed, one image kept per duplicate group",
    )
    p.add_argument(
        "--threshold",
        type=int,
        default=DEFAULT_THRESHOLD,
        help=f"near-duplicate Hamming distance on the 64-bit pHash (default {DEFAULT_THRESHOLD})",
    )
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count, max 4)")
    p.add_argument(
        "--cache-dir", default=None, help="hash cache (default $CXRTL_CACHE_DIR or ~/.cache/cxrtl)"
    )
    options.add_progress(p)
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    """``cxrtl data dedup``: a thin wrapper over :func:`dedup_dataset`."""

    if args.drop and not args.split:
        raise CxrtlError("--drop needs --split SPLIT.csv (the split to clean)")
    if args.workers is not None and args.workers < 1:
        raise CxrtlError("--workers must be at least 1")
    roots = [args.root] + ([args.root2] if args.root2 else [])
    report, cleaned = dedup_dataset(
        roots,
        split_csv=args.split,
        threshold=args.threshold,
        cache_dir=args.cache_dir,
        progress=args.progress,
        workers=args.workers,
    )
    if args.drop:
        assert cleaned is not None  # --drop needs --split (checked above), and a split gives a cleaned one
        write_split_csv(args.drop, cleaned)
    if args.out:
        write_json(args.out, report)
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        s = report["summary"]
        print(
            f"{s['images']} images hashed ({report['scope']}, threshold {report['threshold']}): "
            f"{s['exact_pairs']} exact pairs, {s['near_pairs']} near pairs, {s['groups']} groups, "
            f"{s['unreadable']} unreadable"
        )
        for a, b in report["exact"][:20]:
            print(f"  exact  {a}  {b}")
        for a, b, d in report["near"][:20]:
            print(f"  near   {a}  {b}  (distance {d})")
        more = (
            len(report["exact"])
            + len(report["near"])
            - min(20, len(report["exact"]))
            - min(20, len(report["near"]))
        )
        if more > 0:
            print(f"  ... {more} more (use --format json)")
        if "cross_split_counts" in report:
            print(
                "cross-split pairs: "
                + (", ".join(f"{k} {v}" for k, v in sorted(report["cross_split_counts"].items())) or "none")
            )
        if args.drop:
            print(f"wrote {args.drop}: {len(report['dropped'])} images dropped")
    return 0
