"""Paired comparisons (McNemar exact, paired bootstrap) and results over seeds, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from cxrtl.errors import CxrtlError
from cxrtl.evaluation.compare import compare, in_words, mcnemar_exact, paired_bootstrap
from cxrtl.paper.seeds import configurations, merge_seeds, seed_list, spread


def test_mcnemar_exact_by_hand():
    # 8 images only a gets right, 2 only b, 5 both, 1 neither: p = 2 * P(X <= 2), X ~ Bin(10, 1/2)
    # = 2 * (1 + 10 + 45) / 1024 = 0.109375.
    a = np.array([1] * 8 + [0] * 2 + [1] * 5 + [0])
    b = np.array([0] * 8 + [1] * 2 + [1] * 5 + [0])
    assert mcnemar_exact(a, b) == pytest.approx(112 / 1024)
    assert mcnemar_exact(a, a) == 1.0  # no discordant pair
    # 10 vs 0: p = 2 / 1024
    assert mcnemar_exact(np.ones(10), np.zeros(10)) == pytest.approx(2 / 1024)


def test_paired_bootstrap_interval():
    same = np.array([1, 0, 1, 1, 0])
    assert paired_bootstrap(same, same, n_boot=200) == [0.0, 0.0]  # paired: identical models never differ
    a, b = np.ones(100), np.r_[np.ones(50), np.zeros(50)]
    lo, hi = paired_bootstrap(a, b, n_boot=500, seed=1)
    assert lo < 0.5 < hi and lo > 0.35 and hi < 0.65


def _write_preds(path, paths, labels, probs, classes=("NORMAL", "PNEUMONIA")):
    lines = ["path,label,pred," + ",".join(f"prob_{c}" for c in classes)]
    for p, y, row in zip(paths, labels, probs):
        lines.append(f"{p},{y},{classes[int(np.argmax(row))]}," + ",".join(str(v) for v in row))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_compare_averages_seeds_before_the_argmax(tmp_path):
    paths, labels = ["a.png", "b.png", "c.png", "d.png"], ["PNEUMONIA", "PNEUMONIA", "NORMAL", "NORMAL"]
    # Config A, two seeds: on b.png one seed says 0.9 PNEUMONIA, the other 0.4: averaged 0.65, right.
    a1 = _write_preds(tmp_path / "a1.csv", paths, labels, [[0.2, 0.8], [0.1, 0.9], [0.7, 0.3], [0.4, 0.6]])
    a2 = _write_preds(tmp_path / "a2.csv", paths, labels, [[0.3, 0.7], [0.6, 0.4], [0.8, 0.2], [0.45, 0.55]])
    # Config B: right on a.png and c.png only.
    b1 = _write_preds(tmp_path / "b.csv", paths, labels, [[0.1, 0.9], [0.9, 0.1], [0.9, 0.1], [0.8, 0.2]])
    c = compare([a1, a2], [b1], "A", "B", n_boot=100)
    # A: right on a, b, c (3/4); B: a, c, d (3/4) -> difference 0, discordant b (A only) and d (B only).
    assert c["difference"] == 0.0 and c["discordant"] == [1, 1] and c["p_value"] == 1.0
    assert c["n"] == 4 and c["seeds"] == [2, 1] and c["metric"] == "accuracy"
    assert "not distinguishable on this test set" in in_words(c)

    other = _write_preds(tmp_path / "o.csv", ["x.png", *paths[1:]], labels, [[0.5, 0.5]] * 4)
    with pytest.raises(CxrtlError, match="different test images"):
        compare([a1], [other], "A", "B")
    with pytest.raises(CxrtlError, match="different test images"):
        compare([a1, other], [b1], "A", "B")


def test_in_words_names_the_better_side():
    c = {
        "a": "masked",
        "b": "raw",
        "difference": -0.021,
        "ci95": [-0.03, -0.012],
        "p_value": 0.0004,
        "n": 2117,
    }
    assert in_words(c) == "masked vs raw: -2.1 pp [-3.0, -1.2], p < 0.001: raw is better"


def test_seeds_configurations_and_merged_rows():
    assert seed_list(2022, 3) == [2022, 2023, 2024]
    for bad in (0, -1):
        with pytest.raises(CxrtlError, match="--seeds must be"):
            seed_list(2022, bad)
    assert spread([0.8, 0.9]) == pytest.approx({"mean": 0.85, "sd": 0.0707106781, "min": 0.8, "max": 0.9})
    assert spread([0.8])["sd"] is None

    def run(name, seed, acc, f1, auc):
        test = {
            "classes": ["NORMAL", "PNEUMONIA"],
            "accuracy": acc,
            "accuracy_ci": [acc - 0.1, acc + 0.1],
            "macro": {"f1": f1},
            "roc_auc": {"NORMAL": auc, "PNEUMONIA": auc},
        }
        return {
            "name": name if seed == 1 else f"{name}-seed{seed}",
            "configuration": name,
            "seed": seed,
            "experiment": [3],
            "dataset": "pneumonia",
            "best_val_acc": acc,
            "best_epoch": seed + 1,
            "test": test,
        }

    runs = [run("x", 1, 0.8, 0.7, 0.9), run("x", 2, 0.9, 0.8, 0.95)]
    (cfg,) = configurations(runs, {"pneumonia": "PNEUMONIA"})
    assert cfg["name"] == "x" and cfg["seeds"] == [1, 2] and cfg["runs"] == ["x", "x-seed2"]
    assert cfg["accuracy"] == pytest.approx({"mean": 0.85, "sd": 0.0707106781, "min": 0.8, "max": 0.9})
    assert cfg["macro_f1"]["mean"] == pytest.approx(0.75) and cfg["auc"]["mean"] == pytest.approx(0.925)
    (merged,) = merge_seeds(runs)
    assert merged["test"]["accuracy"] == pytest.approx(0.85)
    assert merged["test"]["accuracy_sd"] == pytest.approx(0.0707106781)
    assert merged["test"]["accuracy_ci"] is None and "2 seeds" in merged["name"]
