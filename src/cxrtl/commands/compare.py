"""``cxrtl compare EVAL_DIR_A EVAL_DIR_B [...] --out DIR``: one model's evaluations side by side."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="put evaluations of one model on different image sets side by side (internal vs external)",
        description="Compare two or more `cxrtl evaluate --out` folders of the same model, e.g. its own test "
        "split beside an external set: accuracy, macro F1, per-class recall and AUC with intervals, and each "
        "set's difference from the first with an unpaired two-sample bootstrap interval (different images, "
        "so not paired). Writes comparison.json, report.md and one ROC figure (a panel per shared class).",
    )
    p.add_argument(
        "evaluations", nargs="+", metavar="EVAL_DIR", help="evaluation folders; the first is the reference"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument(
        "--allow-different-models",
        action="store_true",
        help="compare evaluations of different models too (their differences then mix model and data)",
    )
    p.add_argument(
        "--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (0: none; default 1000)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--no-figures", action="store_true", help="skip the ROC figure")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import CxrtlError
    from ..evaluation.across_sets import compare_evaluations, write_comparison

    if args.bootstrap < 0:
        raise CxrtlError(f"--bootstrap must be 0 or more, not {args.bootstrap}")
    result = compare_evaluations(
        args.evaluations, args.allow_different_models, n_boot=args.bootstrap, seed=args.seed
    )
    out = write_comparison(result, args.out, figures=not args.no_figures)
    names = [e["name"] for e in result["evaluations"]]
    for row in result["metrics"]:
        values = "  ".join(f"{n} {_fmt(v['value'])}" for n, v in zip(names, row["values"]))
        diffs = "  ".join(
            f"diff {_fmt(d['difference'], signed=True)}"
            + (f" [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" if d["ci"] else "")
            for d in row["differences"]
        )
        print(f"{row['metric']}: {values}  {diffs}")
    print(f"wrote {out}/comparison.json, report.md")
    return 0


def _fmt(v, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.3f}" if signed else f"{v:.3f}"
