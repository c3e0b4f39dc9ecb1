"""``cxrtl push``: upload a bundle to a Hugging Face Hub model repository."""

from __future__ import annotations

import argparse

EPILOG = """\
BUNDLE is a folder written by `cxrtl export RUN --bundle DIR`; its checksums are verified before upload.
The token comes from huggingface_hub's usual places (HF_TOKEN, `hf auth login`). Pull it back anywhere a
model is taken: `cxrtl predict hf://OWNER/NAME IMAGES...`, `cxrtl evaluate hf://OWNER/NAME ...`,
`cxrtl train --init hf://OWNER/NAME ...`.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "push",
        help="upload a bundle to the Hugging Face Hub",
        description="Upload a cxrtl bundle (model, ONNX, config, metrics, card) to a Hub model repository.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("bundle", metavar="BUNDLE", help="bundle folder written by `cxrtl export --bundle`")
    a("--repo", required=True, metavar="OWNER/NAME", help="Hub model repository (created if missing)")
    a("--private", action="store_true", help="create the repository private")
    a("--revision", metavar="BRANCH", help="branch to commit to (default: main)")
    a("--message", metavar="TEXT", help="commit message")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..hub import push

    result = push(args.bundle, args.repo, private=args.private, revision=args.revision, message=args.message)
    print(f"pushed {len(result['files'])} files to {result['url']}; use it as hf://{result['repo']}")
    return 0
