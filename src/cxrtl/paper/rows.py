"""Reading a run dict for the tables: which experiments it belongs to and which paper row it fills.

Run dicts (what the table builders read; ``cxrtl reproduce`` fills them)::

    {"name": str, "dataset": "covid" | "pneumonia",
     "experiment": 1 | "exp1" | [1, 2] ...   (or "experiments"; absent: every table the config fits),
     "protocol": optional label, e.g. "paper" | "patient-grouped" | "official-test",
     "config": {"input": "raw" | "masked", "channels": 1 | 3,
                "loss": "ce" | "wce-1cf" | "wce-icf" | "focal",
                "init": "imagenet" | "none" | <checkpoint path>,
                "pretraining": "None" | "ImageNet" | "ImageNet & COVID"  (default: derived from init),
                "scheme": "finetune" | "extractor"  (default "finetune")},
     "best_epoch": int (1-based epoch whose weights were kept), "seconds": float (training time),
     "test": <compute_metrics() dict of the test subset>}

Table II/III rows are keyed by (input, channels), Table IV by loss (raw 3-channel runs),
Tables V/VI by (pretraining, scheme).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any


def run_experiments(run: dict) -> set[int] | None:
    """The paper experiments a run belongs to (``None`` when it does not say: any table it fits)."""
    value = run.get("experiment", run.get("experiments", (run.get("config") or {}).get("experiments")))
    if value is None:
        return None
    values = value if isinstance(value, (list, tuple, set)) else [value]
    out = set()
    for v in values:
        digits = "".join(ch for ch in str(v) if ch.isdigit())
        if digits:
            out.add(int(digits))
    return out


RANDOM_NOT_IMAGENET = "random (ImageNet unavailable)"


def run_row_keys(run: dict) -> dict:
    """The config values that place a run in the paper's tables, with defaults filled in."""
    cfg = run.get("config") or {}
    init = str(cfg.get("init", "imagenet"))
    pretraining = run.get("pretraining") or cfg.get("pretraining")
    if not pretraining:
        pretraining = {"none": "None", "imagenet": "ImageNet"}.get(init.lower(), "ImageNet & COVID")
    if (
        cfg.get("random_init")
        and "ImageNet" in str(pretraining)
        and RANDOM_NOT_IMAGENET not in str(pretraining)
    ):
        # meant to start from ImageNet, ran from random weights (results.json written before it said so)
        pretraining = str(pretraining).replace("ImageNet", RANDOM_NOT_IMAGENET)
    scheme = str(cfg.get("scheme") or ("extractor" if cfg.get("freeze_backbone") else "finetune")).lower()
    scheme = {
        "fine-tune": "finetune",
        "feature-extractor": "extractor",
        "feature_extractor": "extractor",
        "frozen": "extractor",
    }.get(scheme, scheme)
    return {
        "input": str(cfg.get("input", "raw")),
        "channels": int(cfg.get("channels", 3)),
        "loss": str(cfg.get("loss", "wce-1cf")),
        "pretraining": str(pretraining),
        "scheme": scheme,
    }


def loss_label(run: dict) -> str:
    """The run's loss as the config table shows it; focal with its gamma and alpha (Table IV's settings)."""
    cfg = run.get("config") or {}
    loss = run_row_keys(run)["loss"]
    if loss != "focal":
        return loss
    alpha = {"none": "none", "1cf": "1-CF", "icf": "inverse CF"}.get(str(cfg.get("focal_alpha", "none")))
    return f"focal (gamma {cfg.get('focal_gamma', 2.0):g}, alpha {alpha or cfg.get('focal_alpha')})"


def fits(run: dict, dataset: str, experiment: int) -> bool:
    exps = run_experiments(run)
    return run.get("dataset") == dataset and (exps is None or experiment in exps)


def class_metrics(metrics: dict, name: str) -> dict | None:
    """Per-class entry of ``name`` (case-insensitive) or None."""
    for cls, entry in (metrics or {}).get("per_class", {}).items():
        if cls.lower() == name.lower():
            return entry
    return None


def has_protocol(runs: Sequence[dict]) -> bool:
    return any(r.get("protocol") for r in runs)


def as_planned(key: Any) -> Any:
    """A row key as the run was planned: a run meant to start from ImageNet sits on the paper's ImageNet row
    (its own label still says it started from random weights)."""
    if isinstance(key, tuple):
        return tuple(
            str(k).replace(RANDOM_NOT_IMAGENET, "ImageNet") if isinstance(k, str) else k for k in key
        )
    return key


def ordered_rows(runs: Iterable[dict], key_of, paper_keys: Collection) -> list[tuple[Any, dict | None]]:
    """Pair paper rows with runs, in the paper's order; unmatched runs after; empty paper rows kept."""
    runs = list(runs)
    out: list[tuple[Any, dict | None]] = []
    for key in paper_keys:
        matched = [r for r in runs if as_planned(key_of(r)) == key]
        out += [(key, r) for r in matched] or [(key, None)]
    out += [(key_of(r), r) for r in runs if as_planned(key_of(r)) not in paper_keys]
    return out
