"""Conformal prediction sets: the coverage guarantee, the threshold rule by hand, the sidecar, predict, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from cxrtl.cli import main
from cxrtl.errors import CxrtlError
from cxrtl.evaluation.conformal import check_alpha, fit_threshold, prediction_sets, set_report

ALPHA = 0.1


def test_threshold_is_the_ceil_n_plus_1_quantile_by_hand():
    # 20 calibration images, all labelled 0, with p(true) = 0.05, 0.10, ..., 1.00: scores 0.95 ... 0.00.
    p_true = np.arange(1, 21) / 20
    probs = np.stack([p_true, 1 - p_true], axis=1)
    # ceil(21 * 0.9) = 19: the 19th smallest score of {0.00, 0.05, ..., 0.95} is 0.90.
    assert fit_threshold(probs, np.zeros(20, int), ALPHA) == pytest.approx(0.90)
    # A class is in the set when 1 - p <= 0.90, i.e. p >= 0.10.
    member = prediction_sets(np.array([[0.95, 0.05], [0.5, 0.5], [0.09, 0.91]]), 0.90)
    assert member.tolist() == [[True, False], [True, True], [False, True]]


def test_marginal_coverage_holds_over_many_exchangeable_draws():
    # Theory (Vovk; Lei et al. 2018): with n exchangeable calibration points the expected test coverage of
    # the split-conformal set lies in [1 - alpha, 1 - alpha + 1 / (n + 1)] for any model.
    rng = np.random.default_rng(0)
    n_cal, n_test, trials, k = 50, 200, 300, 4
    cover = []
    for _ in range(trials):
        probs = rng.dirichlet(np.ones(k) * 0.7, size=n_cal + n_test)
        model = 0.6 * probs + 0.4 * rng.dirichlet(np.ones(k), size=n_cal + n_test)  # a miscalibrated model
        labels = np.array([rng.choice(k, p=p) for p in probs])
        t = fit_threshold(model[:n_cal], labels[:n_cal], ALPHA)
        cover.append(set_report(model[n_cal:], labels[n_cal:], t, list("abcd"))["coverage"])
    mean = float(np.mean(cover))
    se = float(np.std(cover) / math.sqrt(trials))
    assert 1 - ALPHA - 3 * se <= mean <= 1 - ALPHA + 1 / (n_cal + 1) + 3 * se


def test_alpha_and_calibration_size_are_checked():
    for bad in (0, 1, 1.5, -0.1, True):
        with pytest.raises(CxrtlError, match=r"must be in \(0, 1\)"):
            check_alpha(bad)
    probs = np.full((19, 2), 0.5)
    with pytest.raises(CxrtlError, match="at least 20 validation images, the split has 19"):
        fit_threshold(probs, np.zeros(19, int), ALPHA)
    # alpha 0.01 needs n >= 99 for a finite quantile
    with pytest.raises(CxrtlError, match="at least 99"):
        fit_threshold(np.full((50, 2), 0.5), np.zeros(50, int), 0.01)


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A random-init test_resnet run on a learnable 2-class folder set, split 0.2/0.4/0.4 (80 val, 80 test)."""
    import torch

    from cxrtl.checkpoint import save_checkpoint
    from cxrtl.data import Preprocess, load_dataset, make_split, write_split_csv
    from cxrtl.transfer import create_model

    base = tmp_path_factory.mktemp("conformal")
    root = base / "data"
    rng = np.random.default_rng(0)
    for k, c in enumerate(["NORMAL", "PNEUMONIA"]):
        (root / c).mkdir(parents=True)
        for i in range(100):
            img = np.clip(rng.normal(100 + 30 * k, 40, (32, 32)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / c / f"{c}-{i}.png")
    run = base / "run"
    run.mkdir()
    write_split_csv(run / "split.csv", make_split(load_dataset(root), ratios=(0.2, 0.4, 0.4), seed=0))
    torch.manual_seed(0)
    model = create_model("test_resnet", ["NORMAL", "PNEUMONIA"], in_chans=3, init="none")
    pp = Preprocess("raw", 3, 32).to_dict()
    save_checkpoint(run / "best", model, {"preprocess": pp, "epoch": 1, "config": {"seed": 0}})
    return root, run


@pytest.mark.slow
def test_evaluate_conformal_covers_and_predict_shows_the_sets(run_dir, tmp_path, capsys):
    root, run = run_dir
    args = ["evaluate", str(run), "--data", str(root), "--no-figures", "--no-progress", "--bootstrap", "0"]
    assert main([*args, "--out", str(tmp_path / "ev"), "--conformal", str(ALPHA)]) == 0
    c = json.loads((tmp_path / "ev" / "metrics.json").read_text())["conformal"]
    assert set(c) >= {
        "alpha",
        "method",
        "threshold",
        "coverage",
        "mean_set_size",
        "per_class_coverage",
        "singleton_fraction",
    }
    assert c["n"] == 80 and c["n_calibration"] == 80
    # Within sampling error of 0.9 on 80 test images (binomial sd 0.034; 3 sd, plus the 1/(n+1) slack).
    assert 0.9 - 3 * 0.034 <= c["coverage"] <= 0.9 + 1 / 81 + 3 * 0.034
    stored = json.loads((run / "best.decisions.json").read_text())["conformal"]
    assert stored["threshold"] == c["threshold"] and stored["alpha"] == ALPHA
    assert stored["fitted_on"] == "val" and stored["n"] == 80 and stored["fitted_utc"]

    # The sets predict prints are {class: p >= 1 - threshold}, recomputed here from its probabilities.
    capsys.readouterr()
    files = [str(root / "NORMAL" / "NORMAL-1.png"), str(root / "PNEUMONIA" / "PNEUMONIA-3.png")]
    assert main(["predict", str(run), *files, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    for row in rows:
        want = [k for k, p in row["probabilities"].items() if p >= 1 - c["threshold"] - 1e-6]
        assert row["prediction_set"] == want and row["label"] in want


@pytest.mark.slow
def test_conformal_bad_input_is_one_line_and_writes_nothing(run_dir, tmp_path, capsys):
    root, run = run_dir
    args = ["evaluate", str(run), "--data", str(root), "--no-figures", "--no-progress", "--bootstrap", "0"]
    before = (run / "best.decisions.json").read_bytes() if (run / "best.decisions.json").exists() else None
    for alpha, message in (("1.5", "must be in (0, 1)"), ("0", "must be in (0, 1)")):
        capsys.readouterr()
        assert main([*args, "--out", str(tmp_path / "x"), "--conformal", alpha]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("cxrtl: error:") and message in err and "\n" not in err
    # 0.01 needs 99 validation images; the split has 80.
    assert main([*args, "--out", str(tmp_path / "y"), "--conformal", "0.01"]) == 2
    err = capsys.readouterr().err.strip()
    assert "at least 99 validation images, the split has 80" in err and "\n" not in err
    assert not (tmp_path / "y" / "metrics.json").exists()
    after = (run / "best.decisions.json").read_bytes() if (run / "best.decisions.json").exists() else None
    assert after == before
