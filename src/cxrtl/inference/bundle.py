"""Model bundles: one folder that carries a trained model, its ONNX export, its config, metrics and card.

A bundle holds the run's best checkpoint (``best.safetensors``/``best.json``, and its decision record
``best.decisions.json`` when evaluated: see :mod:`cxrtl.decisions`),
``model.onnx`` (and ``model.int8.onnx`` with ``--int8``), ``config.yaml``,
``metrics.json`` when the run was evaluated, the generated model card ``README.md`` and ``bundle.json``,
which records the SHA-256 and size of every other file. Because the checkpoint keeps its run-directory
names, everything that takes a run directory (predict, evaluate, ``train --init``) takes a bundle; they
verify the checksums first, so a truncated download or an edited file is refused, not silently used.

The checksums guard integrity (a truncated or damaged file, an accidental edit), not authenticity: whoever
can rewrite a file can rewrite ``bundle.json`` too. This module never imports torch; building a bundle
(:func:`make_bundle`) does, through the export.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .._version import __version__
from ..bundle_manifest import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    META_FILE,
    SEGMENTER_FILE,
    SEGMENTER_ONNX,
    is_bundle,
)
from ..errors import CxrtlError
from ..fsutil import UMASK, read_json, sha256_file, write_bytes, write_json, write_text

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ("best.safetensors", "best.json")


def check_bundle_target(out: Path) -> None:
    """An absent or empty folder, or an existing bundle (replaced), may receive a bundle; nothing else."""
    if not out.exists():
        return
    if not out.is_dir():
        raise CxrtlError(f"--bundle {out} is a file; give a new or empty folder")
    if any(out.iterdir()) and not is_bundle(out):
        raise CxrtlError(
            f"--bundle {out} is a non-empty folder that is not a cxrtl bundle; give a new or empty folder "
            "(an existing bundle is replaced)"
        )


def _copy(src: Path, dst: Path) -> None:
    write_bytes(dst, src.read_bytes())


def _checkpoint_files(run: Path, stage: Path) -> None:
    """The best checkpoint and its decision record into the staging folder, verified on the way.

    A run that still has the older sidecars gets them folded into one ``best.decisions.json`` in the bundle.
    """
    from ..checkpoint import read_meta
    from ..decisions import read_decisions, record_files, write_decisions

    meta = read_meta(run / "best.safetensors")  # a cxrtl checkpoint whose weights match best.json
    for name in CHECKPOINT_FILES:
        if (run / name).is_file():
            _copy(run / name, stage / name)
    if record_files(run / "best.safetensors"):
        write_decisions(stage / "best.safetensors", read_decisions(run / "best.safetensors", meta))


def _config_yaml(run: Path, stage: Path) -> None:
    """config.yaml from the run, or rebuilt from the checkpoint's own record of its config."""
    import yaml

    if (run / "config.yaml").is_file():
        _copy(run / "config.yaml", stage / "config.yaml")
        return
    config = (read_json(run / "best.json", "checkpoint metadata") or {}).get("config") or {}
    write_text(stage / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def find_metrics(run: Path) -> Path | None:
    """The run's test metrics: ``RUN/test/metrics.json`` (where reproduce puts them) or ``RUN/metrics.json``."""
    for candidate in (run / "test" / "metrics.json", run / "metrics.json"):
        if candidate.is_file():
            return candidate
    return None


def check_source_run(run: str | os.PathLike) -> Path:
    """A run directory with a best checkpoint, or a one-line error (a bundle is refused: see below)."""
    path = Path(run).expanduser()
    if not path.is_dir():
        raise CxrtlError(
            f"{path} is not a run directory; give the folder `cxrtl train --out` wrote (a bundle needs "
            "the run's config, split and metrics, not only its checkpoint)"
        )
    if not (path / "best.safetensors").is_file():
        raise CxrtlError(
            f"run {path} has no best checkpoint (best.safetensors), so there is no model to describe; "
            "let training finish at least one epoch"
        )
    if is_bundle(path):
        source = (read_json(path / META_FILE, "bundle metadata") or {}).get("source_run")
        there = f" ({source})" if isinstance(source, str) and Path(source).is_dir() else ""
        raise CxrtlError(
            f"{path} is a bundle, not a run directory: its card needs the run's summary, split and history, "
            f"which a bundle does not carry; export the run it was made from{there}, or copy the bundle"
        )
    return path


def make_bundle(
    run: str | os.PathLike,
    out: str | os.PathLike,
    *,
    metrics: str | os.PathLike | None = None,
    int8: bool = False,
    calibration_data: str | os.PathLike | None = None,
    calibration_images: int = 200,
    leakage_check: bool = True,
    license_id: str = "other",
    exporter: str = "auto",
    opset: int | None = None,
    verify: bool = True,
    progress: bool = False,
    segmenter: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write the bundle of ``run`` into ``out`` (built in a hidden sibling folder, then renamed into place).

    Returns the bundle's metadata (``bundle.json``). ``metrics`` overrides where the test metrics are read
    (default :func:`find_metrics`); ``int8`` adds ``model.int8.onnx`` calibrated on ``calibration_data``
    (see :mod:`cxrtl.inference.quantize`); ``leakage_check`` hashes the run's split for the card.
    ``segmenter``: a ``cxrtl segment train`` run carried as ``segmenter.safetensors``/``.json``, so a
    masked-input model predicts its own lung masks when the bundle is loaded.
    """
    src = check_source_run(run)
    if segmenter is not None:
        check_bundle_segmenter(src, segmenter)
    out = Path(out).expanduser()
    check_bundle_target(out)
    if int8 and calibration_data is None:
        raise CxrtlError("--int8 needs --calibration-data ROOT (the dataset the run was trained on)")
    metrics_path = Path(metrics) if metrics is not None else find_metrics(src)
    if metrics_path is not None and not metrics_path.is_file():
        raise CxrtlError(
            f"metrics file {metrics_path} does not exist; give the metrics.json of `cxrtl evaluate`"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    os.chmod(stage, 0o777 & ~UMASK)  # mkdtemp makes 0700; a bundle gets the user's usual permissions
    try:
        _build(src, stage, metrics_path, exporter, opset, verify, segmenter)
        quant = None
        if int8:
            from .quantize import quantize_run

            quant = quantize_run(
                stage,
                stage / "model.onnx",
                stage / "model.int8.onnx",
                calibration_data,
                calibration_images,
                src / "split.csv",
                progress,
            )
        meta = _finish(src, stage, quant, leakage_check, license_id, progress)
        _swap_into_place(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("wrote bundle %s", out)
    return meta


def check_bundle_segmenter(run: Path, segmenter: str | os.PathLike) -> None:
    """Only a masked-input model carries a segmenter, and only a real segmenter run; one-line errors."""
    from ..segmentation.model import read_segmenter_meta

    preprocess = (read_json(run / "best.json", "checkpoint metadata") or {}).get("preprocess") or {}
    if preprocess.get("input") != "masked":
        raise CxrtlError(
            f"--segmenter is for a model trained on lung-masked images; {run} takes raw images, which need "
            "no mask: drop --segmenter"
        )
    read_segmenter_meta(segmenter)  # names a classifier run given as the segmenter


def _segmenter_files(segmenter: Path, stage: Path, exporter: str, opset: int) -> None:
    """The segmenter's weights, its ONNX export, and its reference in the model's decision record."""
    from ..checkpoint import read_meta
    from ..decisions import SegmenterRef, read_decisions, write_decisions
    from ..segmentation.model import resolve_segmenter
    from .export import export_segmenter

    weights = resolve_segmenter(segmenter)
    _copy(weights, stage / SEGMENTER_FILE)
    if weights.with_suffix(".json").is_file():
        _copy(weights.with_suffix(".json"), stage / Path(SEGMENTER_FILE).with_suffix(".json"))
    export_segmenter(stage / SEGMENTER_FILE, stage / SEGMENTER_ONNX, exporter=exporter, opset=opset)
    best = stage / "best.safetensors"
    ref = SegmenterRef(SEGMENTER_FILE, sha256_file(stage / SEGMENTER_FILE), onnx=SEGMENTER_ONNX)
    write_decisions(best, read_decisions(best, read_meta(best)).replace(segmenter=ref))


def _build(
    src: Path,
    stage: Path,
    metrics_path: Path | None,
    exporter: str,
    opset: int | None,
    verify: bool,
    segmenter: str | os.PathLike | None,
) -> None:
    """The checkpoint, config, metrics, segmenter and fp32 ONNX export into ``stage``.

    The segmenter comes before the export, so that ``model.onnx`` embeds the record that names it.
    """
    from .export import DEFAULT_OPSET, export_onnx

    _checkpoint_files(src, stage)
    _config_yaml(src, stage)
    if metrics_path is not None:
        _copy(metrics_path, stage / "metrics.json")
    if segmenter is not None:
        _segmenter_files(Path(segmenter), stage, exporter, opset or DEFAULT_OPSET)
    export_onnx(
        stage,
        stage / "model.onnx",
        exporter=exporter,
        opset=opset or DEFAULT_OPSET,
        verify=verify,
        label=f"{src} to the bundle's model.onnx",
    )


def _finish(src: Path, stage: Path, quant: dict | None, leakage_check: bool, license_id: str, progress: bool):
    """The model card and bundle.json (checksums of every other file); returns bundle.json's content."""
    from .card import render_card
    from .card_facts import gather_facts

    facts = gather_facts(src, stage, int8=quant, leakage_check=leakage_check, progress=progress)
    facts["license"] = license_id
    write_text(stage / "README.md", render_card(facts))
    meta = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "cxrtl_version": __version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "name": facts["name"],
        "source_run": str(src.resolve()),
        "classes": facts["classes"],
        "backbone": facts["backbone"],
        "preprocess": facts["preprocess"],
        "evaluated": facts["metrics"] is not None,
        "int8": quant,
        "files": {
            p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(stage.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.name != META_FILE
        },
    }
    write_json(stage / META_FILE, meta)
    return meta


def _swap_into_place(stage: Path, out: Path) -> None:
    """Rename the finished staging folder to ``out``; an existing bundle there is replaced as a whole."""
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        else:
            out.rmdir()
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
