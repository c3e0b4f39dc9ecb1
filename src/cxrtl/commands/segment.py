"""``cxrtl segment train|evaluate|predict``: lung masks from a U-Net trained on the COVID DB's masks."""

from __future__ import annotations

from ..errors import CxrtlError
from . import options


def register(subparsers) -> None:
    seg = subparsers.add_parser(
        "segment",
        help="train, evaluate and apply a lung segmenter (U-Net)",
        description="Lung segmentation: masks for radiographs that have none (Kermany, your own images).",
    )
    sub = seg.add_subparsers(dest="segment_command", metavar="SUBCOMMAND")
    seg.set_defaults(func=lambda args: (seg.print_help(), 2)[1])
    _register_train(sub)

    p = sub.add_parser("evaluate", help="Dice and IoU on the test split, worst images, overlay figure")
    p.add_argument("seg_run", metavar="SEG_RUN", help="run directory of `cxrtl segment train`")
    p.add_argument("--data", required=True, metavar="ROOT", help="dataset with true masks")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for metrics.json and overlays.png")
    options.add_split(p, "split whose test images to use (default: the run's)")
    options.add_device(p)
    options.add_progress(p)
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser("predict", help="write one 0/255 PNG lung mask per image, mirroring folders")
    p.add_argument("seg_run", metavar="SEG_RUN", help="run directory of `cxrtl segment train`")
    p.add_argument("paths", metavar="PATH", nargs="+", help="image file (PNG/JPEG/DICOM) or folder")
    p.add_argument("--out", required=True, metavar="MASK_DIR", help="folder for the masks")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per pass (default 8)")
    options.add_device(p)
    options.add_progress(p)
    p.set_defaults(func=run_predict)


def _register_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a lung U-Net on a dataset's image/mask pairs (the COVID-19 Radiography DB)",
        description="Train a lung U-Net (segmentation-models-pytorch, timm encoder) on image/mask pairs.",
    )
    a = p.add_argument
    a("--data", metavar="ROOT", help="dataset with lung masks (COVID-19 Radiography Database)")
    a("--out", metavar="SEG_RUN", help="run directory to create")
    a("--resume", metavar="SEG_RUN", help="continue an interrupted run")
    options.add_split(p, "reuse a split (e.g. a classifier run's split.csv)")
    a(
        "--encoder",
        default="tu-mobilenetv3_small_100",
        help="timm encoder of the U-Net (default tu-mobilenetv3_small_100)",
    )
    a(
        "--init",
        choices=("imagenet", "none"),
        default="imagenet",
        help="encoder weights: ImageNet (needs the Hub or its cache) or random (default imagenet)",
    )
    a("--channels", type=int, choices=(1, 3), default=1, help="input channels (default 1)")
    a("--image-size", type=int, default=256, help="input size, a multiple of 32 (default 256)")
    a("--epochs", type=int, default=20, metavar="N", help="training epochs (default 20)")
    a("--batch-size", type=int, default=8, metavar="N", help="images per step (default 8)")
    a("--lr", type=float, default=1e-3, metavar="LR", help="NAdam learning rate (default 0.001)")
    a(
        "--seed",
        type=int,
        default=2022,
        metavar="N",
        help="seed of split, initialisation and shuffling (default 2022)",
    )
    a("--ratios", metavar="A,B,C", help="train,val,test ratios (default: the dataset's)")
    a("--group-by", choices=("patient",), help="keep a patient's images in one split")
    options.add_device(p)
    options.add_precision(
        p, ("auto", "fp32", "bf16"), "auto: bf16 autocast on CUDA, else fp32 (default auto)", default="auto"
    )
    a("--workers", type=int, default=0, metavar="N", help="DataLoader workers (default 0)")
    a("--overwrite", action="store_true", help="replace a run in --out")
    options.add_progress(p)
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    from ..data.splits import parse_ratios
    from ..segmentation.train import SegmentConfig, train_segmenter

    if bool(args.out) == bool(args.resume):
        raise CxrtlError("give --out SEG_RUN for a new run or --resume SEG_RUN to continue one")
    cfg = SegmentConfig(
        data=args.data,
        out=args.resume or args.out,
        split=args.split,
        encoder=args.encoder,
        init=args.init,
        channels=args.channels,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        ratios=list(parse_ratios(args.ratios)) if args.ratios else None,
        group_by=args.group_by,
        device=args.device,
        precision=args.precision,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=args.progress,
    )
    summary = train_segmenter(cfg, resume=bool(args.resume))
    print(
        f"best epoch {summary['best_epoch']}: validation Dice {summary['best_val_dice']:.4f}; "
        f"wrote {summary['run_dir']}"
    )
    return 0


def run_evaluate(args) -> int:
    from ..segmentation.evaluate import evaluate_segmenter

    m = evaluate_segmenter(args.seg_run, args.data, args.out, args.split, args.device, args.progress)
    d, i = m["dice"], m["iou"]
    print(f"test images: {m['n_images']}")
    print(f"Dice {d['mean']:.4f} (95% CI {d['ci_low']:.4f}-{d['ci_high']:.4f})")
    print(f"IoU  {i['mean']:.4f} (95% CI {i['ci_low']:.4f}-{i['ci_high']:.4f})")
    if m["worst"]:
        print("worst images (lowest Dice):")
        for w in m["worst"]:
            print(f"  {w['dice']:.4f}  {w['path']}")
    print(f"wrote {args.out}/metrics.json and {args.out}/overlays.png")
    return 0


def run_predict(args) -> int:
    from ..segmentation.predict import Segmenter, plan_outputs, segment_files

    if args.batch_size < 1:
        raise CxrtlError(f"--batch-size must be at least 1, not {args.batch_size}")
    seg = Segmenter.load(args.seg_run, args.device)
    plan = plan_outputs(args.paths)
    if not plan:
        raise CxrtlError(
            "no images found in " + ", ".join(args.paths) + "; give PNG/JPEG/DICOM files or folders"
        )
    written, failed = segment_files(seg, plan, args.out, args.batch_size, args.progress)
    for path, why in failed:
        print(f"failed: {path}: {why}")
    print(f"wrote {written} mask(s) to {args.out}")
    return 1 if failed else 0
