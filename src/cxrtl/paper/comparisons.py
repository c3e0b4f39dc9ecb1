"""Comparing a reproduction's configurations: the paper's paired comparisons among those that ran.

Each comparison scores two configurations on the same test images: McNemar's exact test for the p-value,
Newcombe's paired score interval for the difference in accuracy (:mod:`cxrtl.paper.paired` says why that
one). A configuration with several seeds is compared through the average of its seeds' probabilities.

Two configurations that trained the same job (offline, "ImageNet fine-tune" also starts from random
weights, like "no pre-training fine-tune") are named as such and not tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import CxrtlError
from .experiments import COMPARISONS
from .paired import newcombe_paired, paired_counts

METHOD = (
    "McNemar exact test (binomial on discordant pairs); Newcombe's hybrid score interval for paired "
    "proportions, continuity-corrected (method 11)"
)
# What makes two runs the same training job, beside the shared protocol (backbone, epochs, split, seed):
# the plan's settings and the weights they really started from (not the ones they were meant to).
TRAINING_KEYS = ("input", "channels", "loss", "focal_gamma", "focal_alpha", "scheme", "keep_hidden")


def _started_from(run: dict) -> str:
    cfg = run.get("config") or {}
    return "random weights" if cfg.get("random_init") else str(cfg.get("init_source", cfg.get("init")))


def same_configuration(a_runs: Sequence[dict], b_runs: Sequence[dict]) -> str | None:
    """Why two configurations are the same training job (seed by seed), or None when they differ."""
    if len(a_runs) != len(b_runs) or not a_runs:
        return None
    for ra, rb in zip(a_runs, b_runs):
        ca, cb = ra.get("config") or {}, rb.get("config") or {}
        if ra.get("seed") != rb.get("seed") or ra.get("dataset") != rb.get("dataset"):
            return None
        if any(ca.get(k) != cb.get(k) for k in TRAINING_KEYS) or _started_from(ra) != _started_from(rb):
            return None
    start = _started_from(a_runs[0])
    if start == "random weights":
        return "both started from random weights: the same configuration"
    return f"both started from {start} with the same settings: the same configuration"


def compare_configurations(a_files: Sequence[Path], b_files: Sequence[Path], a: str, b: str) -> dict:
    """``{a, b, metric, difference, ci95, p_value, method, n, seeds, discordant}``: accuracy of a minus b,
    each side's probabilities averaged over its seeds first."""
    from ..evaluation.compare import averaged_correct, mcnemar_exact

    paths_a, ca = averaged_correct(a_files, a)
    paths_b, cb = averaged_correct(b_files, b)
    if paths_a != paths_b:
        raise CxrtlError(
            f"{a} and {b} were evaluated on different test images ({len(paths_a)} vs {len(paths_b)}); "
            "a paired comparison needs the same test set for both"
        )
    both, a_only, b_only, neither = paired_counts(ca, cb)
    return {
        "a": a,
        "b": b,
        "metric": "accuracy",
        "difference": float(ca.mean() - cb.mean()),
        "ci95": list(newcombe_paired(both, a_only, b_only, neither)),
        "p_value": mcnemar_exact(ca, cb),
        "method": METHOD,
        "n": len(ca),
        "seeds": [len(a_files), len(b_files)],
        "discordant": [a_only, b_only],
    }


def comparisons(runs: list[dict], experiments: tuple[int, ...], n_boot: int) -> list[dict]:
    """The paper's paired comparisons (``COMPARISONS``) among the configurations this reproduction ran.

    A comparison of two identical configurations carries ``identical`` (why) and no test.
    """
    by_config: dict[str, list[dict]] = {}
    for r in runs:
        by_config.setdefault(r["configuration"], []).append(r)
    out = []
    for exp, a, b in COMPARISONS:
        wanted = exp in experiments or (exp == 2 and 3 in experiments)
        if not (wanted and a in by_config and b in by_config):
            continue
        files = [[Path(r["run_dir"]) / "test" / "predictions.csv" for r in by_config[x]] for x in (a, b)]
        entry = {
            "experiment": exp,
            "dataset": by_config[a][0]["dataset"],
            **compare_configurations(files[0], files[1], a, b),
        }
        why = same_configuration(by_config[a], by_config[b])
        if why:
            entry.update(identical=why, p_value=None, ci95=None)
        out.append(entry)
    return out
