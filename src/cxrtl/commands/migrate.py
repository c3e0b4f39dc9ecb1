"""``cxrtl migrate``: fold an older run's decision sidecars into its one decision record, in place."""

from __future__ import annotations

import argparse

EPILOG = """\
Runs written before cxrtl kept one decision record kept a model's temperature, operating point and conformal
threshold in three files beside the checkpoint (best.calibration.json, best.operating_point.json,
best.conformal.json). They still load as they are; this command writes best.decisions.json from them and
removes them, so every tool reads one file. `cxrtl evaluate RUN --out DIR` does the same on its way.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "migrate",
        help="fold an older run's decision sidecars into best.decisions.json",
        description="Rewrite an older run's decision settings as one record (best.decisions.json), in place.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="a run directory or .safetensors checkpoint written by cxrtl")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bundle_manifest import is_bundle
    from ..checkpoint import read_meta, resolve_checkpoint
    from ..decisions import migrate
    from ..errors import CxrtlError

    weights = resolve_checkpoint(args.run)
    if is_bundle(weights.parent):
        raise CxrtlError(
            f"{weights.parent} is a bundle, whose files are checksummed: it is not rewritten in place; it loads "
            "as it is (export it again from its run to get one decision record)"
        )
    path, written = migrate(weights, read_meta(weights))
    if written:
        print(f"wrote {path}; the older sidecars it replaces were removed")
    elif path.is_file():
        print(f"{path} is already the model's one decision record; nothing to do")
    else:
        print(f"{weights} has no decision settings yet (`cxrtl evaluate --calibrate/--positive/--conformal`)")
    return 0
