"""Results over seeds: which seeds a reproduction trains, and each configuration's spread across them.

A configuration (one :class:`~cxrtl.paper.experiments.RunPlan`) is trained once per seed on the same split,
so the seeds vary only the training. The first seed is ``--seed`` itself and its run keeps the plan's
name (a one-seed reproduction looks as it always did); seed ``--seed + i`` runs in ``<name>-seed<S>``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import CxrtlError


def seed_list(seed: int, n: int) -> list[int]:
    """The training seeds of an ``n``-seed reproduction: ``seed, seed + 1, ...``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CxrtlError(f"--seeds must be a whole number of at least 1, not {n}; e.g. --seeds 3")
    return [seed + i for i in range(n)]


def run_name(config: str, seed: int, first_seed: int) -> str:
    """The run directory name of ``config`` trained with ``seed``."""
    return config if seed == first_seed else f"{config}-seed{seed}"


def spread(values: Sequence[float | None]) -> dict | None:
    """``{mean, sd, min, max}`` of the defined values (sd with n - 1; None for one value)."""
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if not v.size:
        return None
    return {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if v.size > 1 else None,
        "min": float(v.min()),
        "max": float(v.max()),
    }


def _binary_auc(metrics: dict, positive: str | None) -> float | None:
    """The positive class's ROC AUC of a two-class evaluation, else None."""
    if len(metrics.get("classes", [])) != 2 or positive is None:
        return None
    value = (metrics.get("roc_auc") or {}).get(positive)
    return value if isinstance(value, (int, float)) else None


def configurations(runs: Sequence[dict], positives: dict[str, str]) -> list[dict]:
    """One entry per configuration: its seeds and the spread of accuracy, macro F1 and (binary) AUC."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r.get("configuration", r["name"]), []).append(r)
    out = []
    for name, group in groups.items():
        tests = [g["test"] for g in group]
        entry = {
            "name": name,
            "experiment": group[0]["experiment"],
            "dataset": group[0]["dataset"],
            "seeds": [g.get("seed") for g in group],
            "runs": [g["name"] for g in group],
            "best_val_acc": spread([g.get("best_val_acc") for g in group]),
            "accuracy": spread([t["accuracy"] for t in tests]),
            "macro_f1": spread([t["macro"]["f1"] for t in tests]),
        }
        aucs = [_binary_auc(t, positives.get(group[0]["dataset"])) for t in tests]
        if any(a is not None for a in aucs):
            entry["auc"] = spread(aucs)
        out.append(entry)
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _mean_tree(items: list):
    """Mean over seeds of every number, with ``<key>_sd`` beside it; intervals and lists are dropped.

    A value some seeds lack (null: a class never predicted has no precision) is averaged over the seeds that
    have it, and ``<key>_seeds`` = [seeds with it, seeds] says how many that is, whichever seed lacks it.
    """
    dicts = [it for it in items if isinstance(it, dict)]
    if not dicts:
        return items[0]
    out: dict = {}
    for key in dict.fromkeys(k for d in dicts for k in d):
        values = [d.get(key) for d in dicts]
        defined = [v for v in values if v is not None]
        if key.endswith("_ci"):
            out[key] = None  # an interval of one run does not describe the mean
        elif defined and all(_is_number(v) for v in defined):
            s = spread(defined)
            out[key] = s["mean"] if s else None
            out[f"{key}_sd"] = s["sd"] if s else None
            if len(defined) < len(values):
                out[f"{key}_seeds"] = [len(defined), len(values)]
        elif defined and all(isinstance(v, dict) for v in defined):
            out[key] = _mean_tree(defined)
        else:
            value = defined[0] if defined else None
            out[key] = value if not isinstance(value, list) or key == "classes" else None
    return out


def merge_seeds(runs: Sequence[dict]) -> list[dict]:
    """Runs for the paper's tables: one per configuration; several seeds become mean (with ``_sd``) rows."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r.get("configuration", r["name"]), []).append(r)
    merged = []
    for name, group in groups.items():
        if len(group) == 1:
            merged.append(group[0])
            continue
        epochs = spread([g.get("best_epoch") for g in group])
        seconds = spread([g.get("seconds") for g in group])
        merged.append(
            {
                **group[0],
                "name": f"{name} (mean ± sd of {len(group)} seeds)",
                "test": _mean_tree([g["test"] for g in group]),
                "best_epoch": f"{epochs['mean']:.1f}" if epochs else None,
                "seconds": seconds["mean"] if seconds else None,
            }
        )
    return merged
