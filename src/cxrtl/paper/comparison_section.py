"""The report's comparisons: each of the paper's comparisons in words and in one table.

What a reader needs beside the numbers is said once, above the comparisons: when a test set is too small
to resolve any difference of the size seen, and which comparisons put a configuration against itself.
Where the interval and the exact test disagree (rare, at the margin), the comparison says so.
"""

from __future__ import annotations

from ..formatting import DASH
from .paired import min_resolvable
from .render import Section
from .table import Table

LEVEL = 0.05
DATASET_NAMES = {"covid": "COVID", "pneumonia": "pneumonia"}


def _pp(x: float) -> str:
    return f"{100 * x:+.1f}"


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def unresolvable_datasets(comparisons: list[dict], level: float = LEVEL) -> dict[str, str]:
    """Datasets whose test set cannot resolve any difference of the size seen, with the sentence that
    says so: even if every image the two disagreed on had gone one way, no comparison could reach
    p < ``level``."""
    need = min_resolvable(level)
    out = {}
    groups: dict[str, list[dict]] = {}
    for c in comparisons:
        if not c.get("identical"):
            groups.setdefault(c.get("dataset") or "", []).append(c)
    for dataset, group in groups.items():
        largest = max(group, key=lambda c: abs(c["discordant"][0] - c["discordant"][1]))
        gap = abs(largest["discordant"][0] - largest["discordant"][1])
        if gap >= need:
            continue
        n = largest["n"]
        name = DATASET_NAMES.get(dataset, dataset)
        out[dataset] = (
            f"**The {name} test set ({n} images) is too small to resolve any difference of the size seen "
            f"here.** The largest difference seen is {gap} image(s) ({100 * gap / n:.1f} points); the exact "
            f"test needs at least {need} more images right on one side than on the other "
            f"({100 * need / n:.1f} points of {n}) before it can give p < {level:g}. Its comparisons below "
            "are shown, not decided."
        )
    return out


def _disagreement(c: dict, level: float) -> str:
    lo, hi = c["ci95"]
    excludes = lo > 0 or hi < 0
    if excludes and c["p_value"] >= level:
        return (
            " (the interval just excludes 0 while the exact test gives p >= 0.05: at the margin the two "
            "approximate the question differently; the verdict follows the exact test)"
        )
    if not excludes and c["p_value"] < level:
        return (
            " (the exact test gives p < 0.05 while the interval just reaches 0: at the margin the two "
            "approximate the question differently; the verdict follows the exact test)"
        )
    return ""


def in_words(c: dict, decided: bool = True, level: float = LEVEL) -> str:
    """One comparison as a sentence: difference, interval, p-value and the verdict.

    ``decided`` False: the test set is too small for any verdict (said once above), so none is given.
    """
    if c.get("identical"):
        return f"{c['a']} vs {c['b']}: {c['identical']}, so it is not tested"
    d, (lo, hi), p = c["difference"], c["ci95"], c["p_value"]
    head = f"{c['a']} vs {c['b']}: {_pp(d)} pp [{_pp(lo)}, {_pp(hi)}], {_p_text(p)}"
    if p < level and d != 0:
        verdict = f"{c['a'] if d > 0 else c['b']} is better"
    elif decided:
        verdict = f"not distinguishable on this test set (n = {c['n']})"
    else:
        verdict = "not distinguishable"
    return f"{head}: {verdict}{_disagreement(c, level)}"


def comparison_section(comparisons: list[dict]) -> Section:
    """The paper's comparisons: the notes that hold for several, each in words, then as a table."""
    small = unresolvable_datasets(comparisons)
    same = [c for c in comparisons if c.get("identical")]
    notes = list(small.values())
    if same:
        notes.append(
            f"{len(same)} comparison(s) put a configuration against itself ("
            + "; ".join(f"{c['a']} vs {c['b']}: {c['identical']}" for c in same)
            + "). They are named, not tested."
        )
    t = Table(
        "compare",
        "Paired comparisons on the same test images (accuracy of a minus b)",
        ["Exp.", "a", "b", "a − b", "95% interval", "p (McNemar exact)", "n", "Right by a only / b only"],
    )
    for c in comparisons:
        if c.get("identical"):
            cells = ["same configuration", DASH, DASH]
        else:
            lo, hi = c["ci95"]
            cells = [f"{_pp(c['difference'])} pp", f"[{_pp(lo)}, {_pp(hi)}]", f"{c['p_value']:.3g}"]
        t.rows.append(
            [str(c.get("experiment", "")), c["a"], c["b"], *cells, str(c["n"])]
            + ["{} / {}".format(*c.get("discordant", ["", ""]))]
        )
    t.notes.append(
        "McNemar's exact test counts the test images exactly one of the two gets right. The interval is "
        "Newcombe's hybrid score interval for paired proportions (continuity-corrected), chosen because it "
        "agrees with the exact test far more often than a bootstrap or Tango's interval. With several seeds "
        "each side's probabilities are averaged over its seeds first. p < 0.05 is read as a real "
        "difference; several comparisons are made, so a p-value just under 0.05 deserves caution."
    )
    words = [in_words(c, decided=c.get("dataset") not in small) + "." for c in comparisons]
    return Section("Is a difference real? (the paper's comparisons)", notes + words, [t])
