"""Comparing a reproduction's configurations: the paper's paired comparisons among those that ran.

Each comparison scores two configurations on the same test images, in up to two ways:

* the **ensemble test** (always): each side's probabilities averaged over its seeds, then McNemar's exact
  test and Newcombe's paired score interval (:mod:`cxrtl.paper.paired` says why that one) on the test
  images. With several seeds this tests the two seed ensembles with their weights fixed: the variation
  between training seeds is not in it. With one seed it is the two runs themselves.
* the **seed-level comparison** (at least 2 seeds on each side, then the headline): a two-level bootstrap
  (seeds, then test images, paired by image) of the difference in mean accuracy over seeds, the difference
  of the numbers in the tables.

The headline p-values of a reproduction's comparisons are one family, adjusted with Holm's method; each
verdict uses the adjusted value. Two configurations that trained the same job (offline, "ImageNet
fine-tune" also starts from random weights, like "no pre-training fine-tune") are named as such, not
tested, and left out of the family. The bootstrap's seed is derived from the reproduction's ``--seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import CxrtlError
from .experiments import COMPARISONS
from .paired import holm, newcombe_paired, paired_counts, two_level_bootstrap

METHOD = (
    "McNemar exact test (binomial on discordant pairs); Newcombe's hybrid score interval for paired "
    "proportions, continuity-corrected (method 11); each side's probabilities averaged over its seeds"
)
SEED_METHOD = (
    "two-level bootstrap: each side's seeds resampled, then the test images (the same for both sides); "
    "percentile interval and two-sided bootstrap p-value of the difference in mean accuracy over seeds"
)
LEVEL = 0.05
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


def bootstrap_seed(seed: int) -> int:
    """The comparisons' bootstrap seed, derived from the reproduction's ``--seed`` (recorded in results.json)."""
    return int(np.random.SeedSequence([int(seed), 0xB007]).generate_state(1)[0])


def _correct_by_seed(files: Sequence[Path], name: str) -> tuple[list[str], np.ndarray]:
    """(image paths, [seeds, images] correctness of each seed's own argmax)."""
    from ..evaluation.compare import read_predictions

    rows = []
    first = None
    for f in files:
        paths, labels, classes, probs = read_predictions(f)
        if first is not None and paths != first:
            raise CxrtlError(
                f"the runs of {name} were evaluated on different test images ({files[0]} vs {f}); "
                "re-evaluate them on one split"
            )
        first = paths
        rows.append(np.asarray(classes)[np.argmax(probs, axis=1)] == np.asarray(labels))
    return first or [], np.stack(rows)


def compare_configurations(
    a_files: Sequence[Path], b_files: Sequence[Path], a: str, b: str, n_boot: int = 2000, seed: int = 0
) -> dict:
    """The ensemble test of a minus b (``difference`` of the seed-averaged ensembles' accuracies, ``ci95``,
    ``p_value``, ``discordant``) and, with at least 2 seeds on each side, ``seed_level``: the two-level
    bootstrap of the difference in mean accuracy over seeds."""
    from ..evaluation.compare import mcnemar_exact, paired_correct

    ca, cb = paired_correct(a_files, b_files, a, b)
    both, a_only, b_only, neither = paired_counts(ca, cb)
    out: dict = {
        "a": a,
        "b": b,
        "metric": "accuracy",
        "difference": float(ca.mean() - cb.mean()),
        "difference_of": "the seed-averaged ensembles' accuracies"
        if max(len(a_files), len(b_files)) > 1
        else "the two runs' accuracies",
        "ci95": list(newcombe_paired(both, a_only, b_only, neither)),
        "p_value": mcnemar_exact(ca, cb),
        "method": METHOD,
        "n": len(ca),
        "seeds": [len(a_files), len(b_files)],
        "discordant": [a_only, b_only],
        "headline": "ensemble",
    }
    if min(len(a_files), len(b_files)) >= 2:
        _, sa = _correct_by_seed(a_files, a)
        _, sb = _correct_by_seed(b_files, b)
        level = two_level_bootstrap(sa, sb, n_boot, seed)
        out["seed_level"] = {**level, "method": SEED_METHOD, "bootstrap_seed": seed}
        out["headline"] = "seed_level"
    return out


def _verdict(c: dict, p: float, difference: float) -> str:
    if p < LEVEL and difference != 0:
        return f"{c['a'] if difference > 0 else c['b']} is better"
    return "not distinguishable"


def adjust_family(entries: list[dict]) -> list[dict]:
    """Holm-adjust the family of comparisons in place: ``p_adjusted``, ``adjustment``, ``family`` and the
    ``verdict`` (from the adjusted headline p-value) on each tested entry; identical configurations are not
    in the family (``p_adjusted`` None). The seed-level p-values are adjusted as their own family."""
    family = [c for c in entries if not c.get("identical")]
    for c in entries:
        if c.get("identical"):
            c.update(p_adjusted=None, verdict="the same configuration, not tested")
    for c, adjusted in zip(family, holm([c["p_value"] for c in family])):
        c.update(p_adjusted=adjusted, adjustment="holm", family=len(family))
    seeded = [c for c in family if c.get("seed_level")]
    for c, adjusted in zip(seeded, holm([c["seed_level"]["p_value"] for c in seeded])):
        c["seed_level"].update(p_adjusted=adjusted, adjustment="holm", family=len(seeded))
    for c in family:
        head = c["seed_level"] if c.get("headline") == "seed_level" else c
        c["verdict"] = _verdict(c, head["p_adjusted"], head["difference"])
    return entries


def comparisons(
    runs: list[dict], experiments: tuple[int, ...], n_boot: int = 2000, seed: int = 0
) -> list[dict]:
    """The paper's paired comparisons (``COMPARISONS``) among the configurations this reproduction ran,
    adjusted as one family (:func:`adjust_family`); ``seed``: the bootstrap's (see :func:`bootstrap_seed`).

    A comparison of two identical configurations carries ``identical`` (why) and no test.
    """
    by_config: dict[str, list[dict]] = {}
    for r in runs:
        by_config.setdefault(r["configuration"], []).append(r)
    out = []
    for i, (exp, a, b) in enumerate(COMPARISONS):
        wanted = exp in experiments or (exp == 2 and 3 in experiments)
        if not (wanted and a in by_config and b in by_config):
            continue
        files = [[Path(r["run_dir"]) / "test" / "predictions.csv" for r in by_config[x]] for x in (a, b)]
        entry = {
            "experiment": exp,
            "dataset": by_config[a][0]["dataset"],
            **compare_configurations(files[0], files[1], a, b, n_boot, seed + i),
        }
        why = same_configuration(by_config[a], by_config[b])
        if why:
            entry.update(identical=why, p_value=None, ci95=None)
            entry.pop("seed_level", None)
            entry["headline"] = None
        out.append(entry)
    return adjust_family(out)
