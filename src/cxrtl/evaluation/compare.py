"""Is one model better than another on the same test images? Paired tests on two sets of predictions.

Two models scored on the same images are paired: their errors are correlated, so comparing two
independent intervals wastes most of the information. Here the accuracy difference gets

* McNemar's exact test: under "equally accurate", the images one model gets right and the other wrong
  split 50:50 (a two-sided binomial test on the discordant pairs, ``scipy.stats.binomtest``);
* a paired bootstrap: the same resampled images for both models, percentile interval of the difference.

Each side may be several runs (seeds) of one configuration: their probabilities are averaged per image
before the argmax, so this compares the two seed *ensembles* with their weights fixed; the variation between
training seeds is not in its interval. The reproduction's headline comparison over seeds is the two-level
bootstrap of :mod:`cxrtl.paper.comparisons` (seeds, then images), and its paired interval is Newcombe's
(:mod:`cxrtl.paper.paired`), which agrees with the exact test; this module gives the exact test and the
building blocks.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import CxrtlError

METHOD = "McNemar exact test (binomial on discordant pairs); paired percentile bootstrap over test images"


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired correctness vectors (1.0 when no pair disagrees)."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_bootstrap(
    correct_a: np.ndarray, correct_b: np.ndarray, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> list[float]:
    """Percentile interval of accuracy(a) - accuracy(b), resampling the same images for both."""
    diff = np.asarray(correct_a, float) - np.asarray(correct_b, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(n_boot, len(diff)))
    samples = diff[idx].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    return [float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail))]


def read_predictions(path: str | Path) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """(paths, labels, classes, probabilities [N, k]) of an evaluation's ``predictions.csv``."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise CxrtlError(f"cannot read predictions {path} ({exc.strerror}); evaluate the run again") from None
    if not rows:
        raise CxrtlError(f"predictions {path} has no rows; evaluate the run again")
    classes = [k.removeprefix("prob_") for k in rows[0] if k.startswith("prob_")]
    probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows], dtype=np.float64)
    return [r["path"] for r in rows], [r["label"] for r in rows], classes, probs


def averaged_correct(files: Sequence[str | Path], name: str) -> tuple[list[str], np.ndarray]:
    """(image paths, correctness of the seed-averaged argmax) of one configuration's prediction files."""
    paths, labels, classes, total = read_predictions(files[0])
    for f in files[1:]:
        p2, l2, c2, probs = read_predictions(f)
        if p2 != paths or l2 != labels or c2 != classes:
            raise CxrtlError(
                f"the runs of {name} were evaluated on different test images ({files[0]} vs {f}); "
                "re-evaluate them on one split"
            )
        total = total + probs
    pred = np.asarray(classes)[np.argmax(total, axis=1)]
    return paths, pred == np.asarray(labels)


def paired_correct(
    a_files: Sequence[str | Path], b_files: Sequence[str | Path], a: str, b: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of the seed-averaged a and b, refused unless both scored the same images."""
    paths_a, ca = averaged_correct(a_files, a)
    paths_b, cb = averaged_correct(b_files, b)
    if paths_a != paths_b:
        raise CxrtlError(
            f"{a} and {b} were evaluated on different test images ({len(paths_a)} vs {len(paths_b)}); "
            "a paired comparison needs the same test set for both"
        )
    return ca, cb


def compare(
    a_files: Sequence[str | Path],
    b_files: Sequence[str | Path],
    a: str,
    b: str,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """``{a, b, metric, difference, ci95, p_value, method, n}``: accuracy of a minus accuracy of b."""
    ca, cb = paired_correct(a_files, b_files, a, b)
    return {
        "a": a,
        "b": b,
        "metric": "accuracy",
        "difference": float(ca.mean() - cb.mean()),
        "ci95": paired_bootstrap(ca, cb, n_boot, seed),
        "p_value": mcnemar_exact(ca, cb),
        "method": METHOD,
        "n": len(ca),
        "seeds": [len(a_files), len(b_files)],
        "discordant": [int(np.sum(ca & ~cb)), int(np.sum(~ca & cb))],
    }


def in_words(c: dict, level: float = 0.05) -> str:
    """``"masked vs raw: -2.1 pp [-3.0, -1.2], p < 0.001: raw is better"``, or not distinguishable."""
    d, (lo, hi), p = 100 * c["difference"], c["ci95"], c["p_value"]
    p_text = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
    head = f"{c['a']} vs {c['b']}: {d:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}], {p_text}"
    if p < level and d != 0:
        return f"{head}: {c['a'] if d > 0 else c['b']} is better"
    return f"{head}: not distinguishable on this test set (n = {c['n']})"
