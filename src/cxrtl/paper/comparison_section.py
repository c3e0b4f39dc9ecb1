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


def _disagreement(test: dict, level: float, interval: str) -> str:
    """Why the interval of ``test`` (ensemble or seed-level) and its verdict seem to disagree, or ""."""
    lo, hi = test["ci95"]
    excludes = lo > 0 or hi < 0
    p, adjusted = test["p_value"], test.get("p_adjusted", test["p_value"])
    if excludes and p < level <= adjusted:
        return (
            f" (p < {level:g} for this comparison alone, but not after allowing for the "
            f"{test.get('family')} comparisons made: the interval is for this one alone)"
        )
    if excludes and p >= level:
        return (
            f" (the {interval} just excludes 0 while the test gives p >= {level:g}: at the margin the two "
            "approximate the question differently; the verdict follows the test)"
        )
    if not excludes and adjusted < level:
        return (
            f" (the test gives p < {level:g} while the {interval} just reaches 0: at the margin the two "
            "approximate the question differently; the verdict follows the test)"
        )
    return ""


def _test_words(test: dict) -> str:
    lo, hi = test["ci95"]
    p_text = _p_text(test["p_value"])
    if test.get("p_adjusted") is not None:
        p_text += f", Holm {_p_text(test['p_adjusted']).removeprefix('p ')}"
    return f"{_pp(test['difference'])} pp [{_pp(lo)}, {_pp(hi)}], {p_text}"


def in_words(c: dict, decided: bool = True, level: float = LEVEL) -> str:
    """One comparison as a sentence: difference, interval, p-value (and Holm's), the verdict, and with
    several seeds both the seed-level comparison (the headline) and the ensemble test, each named.

    ``decided`` False: the test set is too small for any verdict (said once above), so none is given.
    """
    if c.get("identical"):
        return f"{c['a']} vs {c['b']}: {c['identical']}, so it is not tested"
    seed = c.get("seed_level") if c.get("headline") == "seed_level" else None
    head_test = seed or c
    p = head_test.get("p_adjusted", head_test["p_value"])
    verdict = c.get("verdict") or (
        f"{c['a'] if head_test['difference'] > 0 else c['b']} is better"
        if p < level and head_test["difference"] != 0
        else "not distinguishable"
    )
    if verdict == "not distinguishable" and decided:
        verdict += f" on this test set (n = {c['n']})"
    if seed is None:
        text = f"{c['a']} vs {c['b']}: {_test_words(c)}"
        return f"{text}: {verdict}{_disagreement(c, level, 'interval')}"
    return (
        f"{c['a']} vs {c['b']}: mean accuracy over {c['seeds'][0]} and {c['seeds'][1]} seeds "
        f"{_test_words(seed)} (two-level bootstrap over seeds and images): {verdict}"
        f"{_disagreement(seed, level, 'bootstrap interval')}; the ensemble test of the seed-averaged models, "
        f"weights fixed: {_test_words(c)}{_disagreement(c, level, 'interval')}"
    )


def _seed_note(comparisons: list[dict]) -> str:
    seeded = [c for c in comparisons if c.get("seed_level")]
    if not seeded:
        return (
            "One training seed per configuration: seed variance is not measured, so each comparison is "
            "between two single training runs, and another seed could move either (`--seeds N` measures it)."
        )
    s = seeded[0]["seed_level"]
    return (
        "Several training seeds per configuration: the headline is the difference in mean accuracy over "
        "seeds (the difference of the tables' numbers) with a two-level bootstrap interval and p-value "
        f"(seeds resampled, then the test images, paired by image; {s['resamples']} resamples, the "
        "bootstrap seed derived from --seed and recorded in results.json), so the variation between "
        "training seeds is in it. Beside it, the ensemble test compares the seed-averaged models on these "
        "images with their weights fixed (McNemar exact, Newcombe's interval); it does not include seed "
        "variance."
    )


def _holm_note(comparisons: list[dict]) -> str:
    family = next((c.get("family") for c in comparisons if c.get("family")), 0)
    if not family:
        return ""
    return (
        f"Holm: each p-value adjusted by Holm's step-down method over the {family} comparisons tested "
        "here, so the chance of calling any equal pair different stays at most 5%; the verdicts use it."
    )


def comparison_section(comparisons: list[dict]) -> Section:
    """The paper's comparisons: the notes that hold for several, each in words, then as a table."""
    small = unresolvable_datasets(comparisons)
    same = [c for c in comparisons if c.get("identical")]
    notes = list(small.values())
    if same:
        notes.append(
            f"{len(same)} comparison(s) put a configuration against itself ("
            + "; ".join(f"{c['a']} vs {c['b']}: {c['identical']}" for c in same)
            + "). They are named, not tested, and not in the family the p-values are adjusted over."
        )
    notes += [n for n in (_seed_note(comparisons), _holm_note(comparisons)) if n]
    seeded = any(c.get("seed_level") for c in comparisons)
    test_cols = ["a − b", "95% interval", "p", "p (Holm)"]
    columns = ["Exp.", "a", "b"]
    if seeded:
        columns += [f"Seeds: {x}" for x in test_cols] + [f"Ensemble: {x}" for x in test_cols]
    else:
        columns += test_cols
    t = Table(
        "compare",
        "Paired comparisons on the same test images (accuracy of a minus b)",
        columns + ["n", "Right by a only / b only"],
    )
    for c in comparisons:
        cells = []
        for test in ([c.get("seed_level")] if seeded else []) + [c]:
            if c.get("identical") or not test:
                cells += ["same configuration" if c.get("identical") else DASH, DASH, DASH, DASH]
            else:
                lo, hi = test["ci95"]
                cells += [
                    f"{_pp(test['difference'])} pp",
                    f"[{_pp(lo)}, {_pp(hi)}]",
                    f"{test['p_value']:.3g}",
                    f"{test['p_adjusted']:.3g}" if test.get("p_adjusted") is not None else DASH,
                ]
        t.rows.append(
            [str(c.get("experiment", "")), c["a"], c["b"], *cells, str(c["n"])]
            + ["{} / {}".format(*c.get("discordant", ["", ""]))]
        )
    t.notes.append(
        "Ensemble test: McNemar's exact test counts the test images exactly one of the two gets right; its "
        "interval is Newcombe's hybrid score interval for paired proportions (continuity-corrected), "
        "chosen because it agrees with the exact test far more often than a bootstrap or Tango's interval."
        + (" Seeds: the two-level bootstrap over seeds and images (the headline)." if seeded else "")
        + " p (Holm): adjusted over the comparisons tested; verdicts use it."
    )
    words = [in_words(c, decided=c.get("dataset") not in small) + "." for c in comparisons]
    return Section("Is a difference real? (the paper's comparisons)", notes + words, [t])
