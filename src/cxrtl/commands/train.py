"""``cxrtl train``: a thin shell over :func:`cxrtl.training.train.train` (also under ``torchrun``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import (
    FOCAL_ALPHAS,
    LOSSES,
    PRECISIONS,
    SCHEMES,
    SELECT_BY,
    TrainConfig,
    config_from_dict,
    load_config,
)
from ..errors import CxrtlError
from . import options

EPILOG = """\
RUN_DIR receives config.yaml, split.csv, history.csv, best/last .safetensors+.json, state.safetensors
(resume point) and summary.json. An existing run in --out is never replaced without --overwrite.
Multi-GPU / multi-node: torchrun --nproc_per_node N -m cxrtl train ... (same options; --batch-size is
per process and the default lr follows the global batch).
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model (fine-tune or frozen extractor) and keep the best-validation epoch",
        description="Train DenseNet-121 (or any timm backbone) + MLP head on a chest X-ray dataset.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    a = p.add_argument
    options.add_data(p)
    a("--out", metavar="RUN_DIR", help="run directory to create")
    options.add_split(p, "split CSV (default: make the dataset's default split)")
    a("--config", metavar="FILE.yaml", help="YAML with the same keys as these options; options override it")
    a("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last completed epoch")
    a(
        "--backbone",
        metavar="NAME",
        help="timm model name (default densenet121; a transfer uses the checkpoint's)",
    )
    a(
        "--init",
        metavar="imagenet|none|PATH",
        help="initialisation: ImageNet, random, or a cxrtl checkpoint "
        "/ run dir to transfer from (default imagenet)",
    )
    a(
        "--pretrained-file",
        metavar="FILE",
        help="local ImageNet weights (.safetensors) for --init imagenet "
        "(default: env CXRTL_IMAGENET_WEIGHTS, else the Hugging Face Hub)",
    )
    a(
        "--keep-hidden",
        action="store_true",
        help="transfer: keep the trained n->64 layer, replace only the last",
    )
    a(
        "--scheme",
        choices=SCHEMES,
        help="finetune (all layers) or extractor (frozen backbone incl. BatchNorm)",
    )
    a("--loss", choices=LOSSES, help="training loss (default ce); validation/test loss is always plain CE")
    a("--focal-gamma", type=float, metavar="G", help="focal loss gamma (default 2)")
    a("--focal-alpha", choices=FOCAL_ALPHAS, help="focal loss per-class alpha (default none)")
    a(
        "--channels",
        type=int,
        choices=(1, 3),
        help="input channels (default 3, pseudo-RGB; a transfer: the source checkpoint's)",
    )
    a(
        "--input",
        choices=("raw", "masked"),
        help="raw images or lung-masked (needs masks; default raw; a transfer: the source's)",
    )
    a("--image-size", type=int, metavar="N", help="crop size (default 224; a transfer: the source's)")
    a("--epochs", type=int, metavar="N", help="epochs (default 30)")
    a(
        "--select-by",
        choices=SELECT_BY,
        help="keep the epoch with the highest val_acc (default, the paper's; ties keep the earlier) "
        "or the lowest val_loss",
    )
    a("--batch-size", type=int, metavar="N", help="batch size per process (default 16)")
    a("--lr", type=float, metavar="X", help="learning rate (default global batch / 1.6e4)")
    a("--milestones", type=int, nargs="+", metavar="E", help="MultiStepLR milestones (default 8 15 25)")
    a("--gamma", type=float, metavar="X", help="MultiStepLR factor (default 0.1)")
    a(
        "--warmup-steps",
        type=int,
        metavar="N",
        help="linear lr warm-up steps (default 0 in one process; min(200, one epoch) under torchrun)",
    )
    a("--seed", type=int, metavar="N", help="seed of split, initialisation and shuffling (default 2022)")
    a("--group-by", choices=("patient",), help="patient-grouped split when the split is made here")
    a("--official", action="store_true", help="Kermany: use the official train/val/test folders")
    a(
        "--ratios",
        nargs="+",
        metavar="A,B,C",
        help="train,val,test split ratios, e.g. 0.7,0.2,0.1, or train,val,calibration,test, e.g. "
        "0.7,0.1,0.05,0.15 (as `cxrtl data split`; spaces also work)",
    )
    options.add_device(
        p,
        help="auto, cpu or cuda (default auto: a CUDA GPU when there is one; under torchrun each process "
        "takes its local rank's GPU)",
        default=argparse.SUPPRESS,
    )
    a("--workers", type=int, metavar="N", help="DataLoader workers (default 0)")
    options.add_precision(
        p, PRECISIONS, "auto: bf16 autocast on CUDA GPUs with native bf16 (compute capability 8+), else fp32"
    )
    a(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="channels_last memory format (default: on with CUDA)",
    )
    a("--compile", action="store_true", help="torch.compile the training step (pays off from a few epochs)")
    a("--tensorboard", action="store_true", help="also log to RUN_DIR/tensorboard")
    a(
        "--track",
        choices=("mlflow",),
        help="log the finished run to MLflow ($MLFLOW_TRACKING_URI, else RUN_DIR/mlruns); cxrtl[mlflow]",
    )
    a("--cache-dir", metavar="DIR", help="image cache (default env CXRTL_CACHE_DIR or ~/.cache/cxrtl)")
    a("--overwrite", action="store_true", help="replace a run already in --out")
    options.add_progress(p)
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """YAML (if any) overlaid by the options actually given -> (config, resume?)."""
    from ..training.resume import RESUME_OPTIONS  # here, not at the top: `cxrtl --help` must not load torch

    given = {
        k: v
        for k, v in vars(args).items()
        if k not in ("func", "command", "verbose", "config", "resume", "track")
    }
    if "ratios" in given:
        given["ratios"] = ",".join(given["ratios"])  # comma form or three words: one syntax for both
    resume = getattr(args, "resume", None)
    if resume is not None:
        extra = sorted(set(given) - set(RESUME_OPTIONS) - {"out"})
        if getattr(args, "config", None):
            extra.insert(0, "config")
        if extra:
            allowed = ", --".join(sorted(o.replace("_", "-") for o in RESUME_OPTIONS))
            raise CxrtlError(
                f"--{extra[0].replace('_', '-')} cannot change when resuming; a resumed run keeps "
                f"its saved settings (only --{allowed} may be given)"
            )
        if "out" in given and given["out"] != resume:
            raise CxrtlError("give the run directory once, as --resume RUN_DIR (without --out)")
        given["out"] = resume
    base = load_config(args.config) if getattr(args, "config", None) else TrainConfig()
    return config_from_dict(given, base), resume is not None


def explicit_keys(args: argparse.Namespace) -> set[str]:
    """The config keys the user set: options given on the command line and keys of the --config YAML."""
    keys = {k for k in vars(args) if k not in ("func", "command", "verbose", "config", "resume")}
    if getattr(args, "config", None):
        import yaml

        data = (
            yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        )  # validated by build_config
        keys |= {str(k).replace("-", "_") for k in data}
    return keys


def run(args: argparse.Namespace) -> int:
    from ..model_ref import local_path
    from ..tracking import check_tracker, track_train
    from ..training.distributed import env_info
    from ..training.train import inherit_input_settings, train

    track = getattr(args, "track", None)
    check_tracker(track)
    cfg, resume = build_config(args)
    cfg.init = local_path(cfg.init)  # hf://OWNER/NAME -> the downloaded (or cached) bundle folder
    if not resume:
        cfg = inherit_input_settings(cfg, explicit_keys(args))
    summary = train(cfg, resume=resume)
    if not env_info().is_main:
        return 0
    print(
        f"best epoch {summary['best_epoch']}/{summary['epochs']} by {summary['config']['select_by']}: "
        f"val acc {summary['best_val_acc']:.4f}, val loss {summary['best_val_loss']:.4f}"
    )
    print(f"run dir: {summary['run_dir']}")
    if track and (uri := track_train(summary["run_dir"], track)):  # None: a warning, the run is complete
        print(f"tracked in {uri}")
    return 0
