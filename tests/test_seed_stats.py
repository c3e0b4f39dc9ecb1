"""Statistics over seeds and over the family of comparisons, against independent references: Holm against
statsmodels and a hand-worked example, the two-level bootstrap against a plain loop, means over seeds with
a value missing in either order, and the resamples and seed every profile's comparisons use."""

from __future__ import annotations

import random

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from cxrtl.paper import tables as T
from cxrtl.paper.comparisons import adjust_family, bootstrap_seed
from cxrtl.paper.experiments import PROFILES
from cxrtl.paper.paired import holm, two_level_bootstrap
from cxrtl.paper.seeds import merge_seeds


def test_holm_matches_statsmodels_and_a_hand_worked_example():
    # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> raised to 0.06 (monotone).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(3)
    p = list(rng.uniform(0, 0.2, 11))
    assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0]) and holm([]) == []


def test_family_leaves_out_identical_configurations_and_the_verdict_uses_the_adjusted_p():
    comps = [
        {"a": "x", "b": "y", "p_value": 0.01, "difference": 0.1},
        {"a": "z", "b": "y", "p_value": 0.04, "difference": -0.2},
        {
            "a": "s",
            "b": "y",
            "p_value": None,
            "difference": 0.0,
            "identical": "both started from random weights",
        },
    ]
    adjust_family(comps)
    assert [c["p_adjusted"] for c in comps[:2]] == pytest.approx([0.02, 0.04])  # a family of 2, not 3
    assert all(c["adjustment"] == "holm" and c["family"] == 2 for c in comps[:2])
    assert comps[2]["p_adjusted"] is None and "adjustment" not in comps[2]
    assert comps[0]["verdict"] == "x is better" and comps[1]["verdict"] == "y is better"
    comps = [{"a": "x", "b": "y", "p_value": p, "difference": 0.1} for p in (0.03, 0.04)]
    adjust_family(comps)  # each p < 0.05 alone, neither after Holm (0.06, 0.06)
    assert [c["verdict"] for c in comps] == ["not distinguishable"] * 2


def _loop_bootstrap(ca, cb, n_boot, seed):
    """The two-level bootstrap written as plain loops: seeds of each side, then images shared by both."""
    rnd = random.Random(seed)
    n, out = len(ca[0]), []
    for _ in range(n_boot):
        sa = [rnd.randrange(len(ca)) for _ in ca]
        sb = [rnd.randrange(len(cb)) for _ in cb]
        imgs = [rnd.randrange(n) for _ in range(n)]
        acc_a = sum(sum(ca[s][i] for i in imgs) / n for s in sa) / len(sa)
        acc_b = sum(sum(cb[s][i] for i in imgs) / n for s in sb) / len(sb)
        out.append(acc_a - acc_b)
    out.sort()
    return out


def test_two_level_bootstrap_matches_a_plain_loop_and_measures_seed_variance():
    rng = np.random.default_rng(0)
    truth = rng.random(60) < 0.7
    # a's two seeds disagree a lot (seed variance); b's three seeds are nearly the same model.
    ca = np.stack([truth ^ (rng.random(60) < 0.1), truth ^ (rng.random(60) < 0.4)])
    cb = np.stack([truth ^ (rng.random(60) < 0.2) for _ in range(3)])
    got = two_level_bootstrap(ca, cb, n_boot=4000, seed=1)
    assert got["difference"] == pytest.approx(ca.mean() - cb.mean()) and got["resamples"] == 4000
    ref = _loop_bootstrap(ca.astype(int).tolist(), cb.astype(int).tolist(), 4000, seed=5)
    lo, hi = ref[int(0.025 * 4000)], ref[int(0.975 * 4000) - 1]
    assert got["ci95"][0] == pytest.approx(lo, abs=0.02) and got["ci95"][1] == pytest.approx(hi, abs=0.02)
    assert got["p_value"] == pytest.approx(
        2 * min(np.mean(np.array(ref) <= 0), np.mean(np.array(ref) >= 0)), abs=0.05
    )
    # Resampling images only (the seeds fixed) gives a narrower interval: the seeds' variance is in ours.
    fixed = two_level_bootstrap(ca.mean(0, keepdims=True), cb.mean(0, keepdims=True), n_boot=4000, seed=1)
    assert got["ci95"][1] - got["ci95"][0] > fixed["ci95"][1] - fixed["ci95"][0]
    again = two_level_bootstrap(ca, cb, n_boot=4000, seed=1)
    assert again == got  # one seed, one answer


def test_every_profile_compares_with_at_least_2000_resamples_and_a_seed_from_the_reproductions():
    assert all(p.comparison_resamples >= 2000 for p in PROFILES.values())
    assert bootstrap_seed(2022) != bootstrap_seed(2023) and bootstrap_seed(2022) == bootstrap_seed(2022)


def _seed_run(seed, precision):
    test = {
        "n": 10,
        "accuracy": 0.6,
        "accuracy_ci": [0.3, 0.85],
        "classes": ["NORMAL", "PNEUMONIA"],
        "per_class": {
            "NORMAL": {"precision": precision, "recall": 0.0},
            "PNEUMONIA": {"precision": 0.6, "recall": 1.0},
        },
        "macro": {"precision": None, "recall": 0.5, "f1": 0.4},
    }
    return {
        "name": f"c-seed{seed}",
        "configuration": "c",
        "seed": seed,
        "dataset": "pneumonia",
        "experiment": [3],
        "config": {"init": "none"},
        "best_epoch": 2,
        "test": test,
    }


@pytest.mark.parametrize("order", [(None, 0.5), (0.5, None)])
def test_mean_over_seeds_uses_the_seeds_that_have_the_value_in_either_order(order):
    runs = [_seed_run(2022, order[0]), _seed_run(2023, order[1])]
    merged = merge_seeds(runs)[0]["test"]
    normal = merged["per_class"]["NORMAL"]
    assert (
        normal["precision"] == 0.5 and normal["precision_sd"] is None and normal["precision_seeds"] == [1, 2]
    )
    assert merged["per_class"]["PNEUMONIA"]["precision"] == pytest.approx(0.6)
    assert "precision_seeds" not in merged["per_class"]["PNEUMONIA"]  # both seeds have it
    assert merged["macro"]["precision"] is None  # no seed has it
    cells = T.table_vi(merge_seeds(runs), positive="NORMAL").rows[0]
    assert "50.0% (1 of 2 seeds)" in cells
