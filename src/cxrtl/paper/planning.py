"""Planning a reproduction before any training: the inputs are checked, the output directory is claimed.

Every refusal a reproduction can make about its inputs happens here, before the first epoch: datasets of
the right kind, masks where masked runs need them, ImageNet weights (or ``--allow-random-init``), the lung
segmenter's plan, and an output directory that holds this reproduction or nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..data.records import DatasetIndex
from ..errors import CxrtlError
from ..fsutil import read_json
from .experiments import COVID_BEST, Profile, RunPlan
from .options import MANIFEST, SYNTH_MARKER, ReproduceOptions

log = logging.getLogger(__name__)


def _load(root: str, want_kind: str, flag: str) -> DatasetIndex:
    from ..data import load_dataset

    index = load_dataset(root)
    if index.kind != want_kind:
        expect = {
            "covid": "the COVID-19 Radiography Database (COVID-19_Radiography_Dataset/)",
            "pneumonia": "the Kermany chest_xray/ set",
        }[want_kind]
        raise CxrtlError(
            f"{flag} {root} holds a {index.layout} dataset, not {expect}; check which root "
            f"goes to --covid and which to --pneumonia"
        )
    return index


def is_synthetic(index: DatasetIndex) -> bool:
    return any((p / SYNTH_MARKER).is_file() for p in (index.root, index.root.parent))


def _imagenet_available(backbone: str, pretrained_file: str | None) -> str | None:
    """None when ImageNet weights can be had (hub or local file), else the one-line reason."""
    from ..model import new_model

    try:
        new_model(backbone, ["a", "b"], 3, init="imagenet", pretrained_file=pretrained_file)
    except CxrtlError as exc:
        return str(exc)
    return None


def identity_of(
    opts: ReproduceOptions, prof: Profile, covid: DatasetIndex, pneu: DatasetIndex | None
) -> dict:
    """What makes two reproductions the same: a directory never mixes runs of different ones."""

    def fingerprint(index):
        if index is None:
            return None
        counts = {c: sum(r.label == c for r in index.records) for c in index.classes}
        return {"layout": index.layout, "classes": index.classes, "counts": counts}

    return {
        "format": "cxrtl-reproduction",
        "profile": prof.name,
        "seed": opts.seed,
        "split_protocol": opts.split_protocol,
        "exclude_overlap": opts.exclude_overlap,
        "backbone": opts.backbone or prof.backbone,
        "epochs": opts.epochs or prof.epochs,
        "image_size": opts.image_size or prof.image_size,
        "batch_size": opts.batch_size or prof.batch_size,
        "max_per_class": opts.max_per_class if opts.max_per_class is not None else prof.max_per_class,
        "covid": fingerprint(covid),
        "pneumonia": fingerprint(pneu),
    }


def check_out(out: Path, identity: dict) -> None:
    """Refuse an out dir holding another reproduction's runs, or unrelated files."""
    manifest = out / MANIFEST
    if manifest.is_file():
        old = read_json(manifest, "reproduction manifest")
        old_id = {k: old.get(k) for k in identity}
        if old_id.get("pneumonia") is None:  # a reproduction without Exp. 3 may be extended by it
            for key in ("pneumonia", "split_protocol", "exclude_overlap"):
                old_id[key] = identity[key]
        diff = [k for k in identity if old_id.get(k) != identity[k]]
        if diff:
            raise CxrtlError(
                f"{out} holds a different reproduction ({', '.join(diff)} differ); "
                "choose another --out, or repeat that reproduction's options"
            )
    elif out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise CxrtlError(f"{out} is not empty and holds no {MANIFEST}; choose an empty or new --out")


def check_inputs(opts: ReproduceOptions, prof, runs: list[RunPlan]) -> tuple:
    """The COVID and pneumonia indexes and why ImageNet weights are missing (or None); refuses bad input."""
    need_pneumonia = any(r.dataset == "pneumonia" for r in runs)
    if opts.pneumonia_masks and not need_pneumonia:
        raise CxrtlError("--pneumonia-masks is for experiment 3; add 3 to --experiments, or drop it")
    if need_pneumonia and not opts.pneumonia:
        raise CxrtlError(
            "experiment 3 needs the pneumonia dataset; pass --pneumonia ROOT or --experiments 1,2"
        )
    covid = _load(opts.covid, "covid", "--covid")
    pneu = _load(opts.pneumonia, "pneumonia", "--pneumonia") if need_pneumonia and opts.pneumonia else None
    if any(r.input == "masked" for r in runs):
        from ..data.dataset import check_masks

        try:
            check_masks(covid)
        except CxrtlError as exc:
            raise CxrtlError(
                f"experiment 1 compares masked inputs: {exc}; or run --experiments 2,3"
            ) from None
    backbone = opts.backbone or prof.backbone
    from ..model import check_backbone

    check_backbone(backbone)
    no_weights = None
    if any(r.init in ("imagenet", COVID_BEST) for r in runs):
        no_weights = _imagenet_available(backbone, opts.pretrained_file)
        if no_weights and not opts.allow_random_init:
            raise CxrtlError(
                f"{no_weights.rstrip('.')}; or pass --allow-random-init to run from random weights "
                "(the report will say so)"
            )
    return covid, pneu, no_weights


def plan_segmenter(opts: ReproduceOptions, prof: Profile, covid: DatasetIndex, no_weights) -> dict | None:
    """None (no segmenter), {"skipped": why} (no masks), or {"epochs", "init"}; checked before training."""
    from .segmenter import segmenter_init, skip_reason

    epochs = opts.segmenter_epochs if opts.segmenter_epochs is not None else prof.segmenter_epochs
    if epochs < 0:
        raise CxrtlError(f"invalid --segmenter-epochs {epochs}; expected 0 (no segmenter) or more")
    if not epochs:
        return None
    why = skip_reason(covid)
    if why:
        log.warning("no lung segmenter: %s", why)
        return {"skipped": why}
    from ..segmentation.model import DEFAULT_ENCODER

    return {"epochs": epochs, "init": segmenter_init(DEFAULT_ENCODER, opts.allow_random_init, no_weights)}
