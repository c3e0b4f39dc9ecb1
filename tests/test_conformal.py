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


# ------------------------------------------------------------------------- class-conditional (Mondrian)
def test_mondrian_thresholds_match_a_per_class_hand_computation():
    from cxrtl.evaluation.conformal import fit_class_thresholds

    rng = np.random.default_rng(7)
    classes = ["a", "b", "c"]
    labels = np.repeat([0, 1, 2], [60, 30, 25])
    probs = rng.dirichlet([2.0, 1.0, 1.0], size=len(labels))
    got = fit_class_thresholds(probs, labels, ALPHA, classes)
    for i, c in enumerate(classes):  # each class alone: its own ceil((n_c + 1)(1 - alpha))-th smallest score
        scores = []
        for j in range(len(labels)):
            if labels[j] == i:
                scores.append(1.0 - probs[j, i])
        scores.sort()
        rank = math.ceil((len(scores) + 1) * (1 - ALPHA))
        assert got[c] == scores[rank - 1]
    # class c (n=25): rank ceil(26 * 0.9) = 24, the second largest of its 25 scores
    assert got["c"] == sorted(1 - probs[labels == 2, 2])[23]


def test_mondrian_refuses_a_class_with_too_few_images():
    from cxrtl.evaluation.conformal import fit_class_thresholds

    labels = np.repeat([0, 1], [40, 7])
    with pytest.raises(CxrtlError, match="needs at least 20 validation images of every class; b has 7"):
        fit_class_thresholds(np.full((47, 2), 0.5), labels, ALPHA, ["a", "b"])


def test_decisions_apply_each_class_its_own_threshold_and_empty_sets_are_empty():
    from cxrtl.decisions import Conformal, Decisions

    d = Decisions(
        classes=("a", "b", "c"),
        conformal=Conformal(alpha=0.1, threshold=0.5, class_thresholds={"a": 0.2, "b": 0.9, "c": 0.5}),
    )
    # a: 1 - 0.7 = 0.3 > 0.2 out; b: 0.8 <= 0.9 in; c: 0.9 > 0.5 out (the marginal 0.5 would keep only a)
    assert d.prediction_set([0.7, 0.2, 0.1]) == ["b"]
    marginal = Decisions(classes=("a", "b", "c"), conformal=Conformal(alpha=0.1, threshold=0.1))
    assert marginal.prediction_set([0.45, 0.35, 0.20]) == []  # the example: no class is plausible
    assert Decisions.from_json(d.to_json()).conformal.class_thresholds == {"a": 0.2, "b": 0.9, "c": 0.5}


def test_set_report_gives_each_class_its_n_and_the_empty_fraction():
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.3, 0.7], [0.55, 0.45]])
    r = set_report(probs, np.array([0, 0, 1, 1]), np.array([0.2, 0.4]), ["x", "y"])
    # sets: {x}, {}, {y}, {} -> per class: x covered 1 of 2, y 1 of 2; empty 2 of 4
    assert r["per_class_n"] == {"x": 2, "y": 2}
    assert r["per_class_coverage"] == {"x": 0.5, "y": 0.5}
    assert r["empty_fraction"] == 0.5 and r["singleton_fraction"] == 0.5


# ------------------------------------------------------------------- end to end: by class, calibration, empty
def _probs_of(predictions_csv, classes):
    import csv

    with open(predictions_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = np.array([classes.index(r["label"]) for r in rows])
    return np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows]), labels


@pytest.mark.slow
def test_evaluate_conformal_by_class_stores_per_class_thresholds(run_dir, tmp_path, capsys):
    root, run = run_dir
    classes = ["NORMAL", "PNEUMONIA"]
    args = ["evaluate", str(run), "--data", str(root), "--no-figures", "--no-progress", "--bootstrap", "0"]
    out = tmp_path / "ev"
    assert (
        main([*args, "--subset", "val", "--out", str(out), "--conformal", "0.1", "--conformal-by-class"]) == 0
    )
    c = json.loads((out / "metrics.json").read_text())["conformal"]
    stored = json.loads((run / "best.decisions.json").read_text())["conformal"]
    assert stored["class_thresholds"] == c["class_thresholds"] and stored["method"] == "lac-mondrian"
    probs, labels = _probs_of(out / "predictions.csv", classes)  # the validation images, as fitted on
    for i, name in enumerate(classes):
        scores = sorted(1 - probs[labels == i, i])
        assert c["class_thresholds"][name] == pytest.approx(
            scores[math.ceil((len(scores) + 1) * 0.9) - 1], abs=1e-6
        )
    assert c["per_class_n"] == {"NORMAL": 40, "PNEUMONIA": 40}
    report = (out / "report.md").read_text()
    assert "## Conformal prediction sets" in report and "class-conditional (Mondrian)" in report
    # each class reaches its own 1 - alpha on the images it was fitted on (its (n+1) rank guarantees it)
    assert all(v >= 0.9 for v in c["per_class_coverage"].values())
    # too few of a class for alpha 0.02 (needs 49 of each): refused in one line, nothing written
    before = (run / "best.decisions.json").read_bytes()
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "x"), "--conformal", "0.02", "--conformal-by-class"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs at least 49 validation images of every class; NORMAL has 40, PNEUMONIA has 40" in err
    assert "\n" not in err and not (tmp_path / "x" / "metrics.json").exists()
    assert (run / "best.decisions.json").read_bytes() == before


@pytest.mark.slow
def test_a_calibration_subset_is_where_settings_are_fitted(run_dir, tmp_path, caplog):
    import shutil

    from cxrtl.data import load_dataset, make_split, write_split_csv

    root, src = run_dir
    run = tmp_path / "run"
    shutil.copytree(src, run)
    (run / "best.decisions.json").unlink(missing_ok=True)
    args = ["evaluate", str(run), "--data", str(root), "--no-figures", "--no-progress", "--bootstrap", "0"]
    fit = ["--calibrate", "--positive", "PNEUMONIA", "--conformal", "0.1"]

    # without a calibration subset: fitted on validation, and the report says so in one line
    assert main([*args, "--out", str(tmp_path / "a"), *fit]) == 0
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["fitted_on"] == {"temperature": "val", "operating_point": "val", "conformal": "val"}
    report = (tmp_path / "a" / "report.md").read_text()
    assert "fitted on the validation subset, the one that chose the checkpoint" in report

    # --positive scored on the subset it was chosen on warns, as --calibrate and --conformal do
    caplog.clear()
    assert main([*args, "--subset", "val", "--out", str(tmp_path / "v"), "--positive", "PNEUMONIA"]) == 0
    assert "operating point was fitted on the subset it is evaluated on" in caplog.text

    # with one: 40 train, 40 val, 60 calibration, 60 test; every part fitted on the 60 calibration images
    write_split_csv(run / "split.csv", make_split(load_dataset(root), ratios=(0.2, 0.2, 0.3, 0.3), seed=0))
    assert main([*args, "--out", str(tmp_path / "b"), *fit]) == 0
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["fitted_on"] == {
        "temperature": "calibration",
        "operating_point": "calibration",
        "conformal": "calibration",
    }
    assert m["conformal"]["n_calibration"] == 60 and m["n"] == 60
    record = json.loads((run / "best.decisions.json").read_text())
    assert record["temperature"]["fitted_on"] == "calibration" and record["temperature"]["n"] == 60
    assert record["operating_point"]["fitted_on"] == "calibration" and record["operating_point"]["n"] == 60
    assert record["conformal"]["fitted_on"] == "calibration" and record["conformal"]["n"] == 60
    report = (tmp_path / "b" / "report.md").read_text()
    assert (
        "Decision settings fitted on: temperature: calibration subset; operating point: calibration subset"
        in report
    )
    assert "the one that chose the checkpoint" not in report
    assert "fitted on 60 calibration images" in report


@pytest.mark.slow
def test_predict_marks_an_empty_set_in_csv_and_table(run_dir, tmp_path, capsys):
    import shutil

    from cxrtl.decisions import Conformal, Decisions, write_decisions

    root, src = run_dir
    run = tmp_path / "run"
    shutil.copytree(src, run)
    # a threshold of 0.01 keeps a class only at p >= 0.99: this untrained model's sets are all empty
    write_decisions(
        run / "best.safetensors",
        Decisions(classes=("NORMAL", "PNEUMONIA"), conformal=Conformal(alpha=0.1, threshold=0.01)),
    )
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    files = [str(root / "NORMAL" / "NORMAL-1.png"), str(bad)]
    capsys.readouterr()
    assert main(["predict", str(run), *files, "--format", "csv"]) == 1
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["prediction_set"] == "(empty)" and rows[0]["label"] in ("NORMAL", "PNEUMONIA")
    assert rows[1]["prediction_set"] == "" and rows[1]["error"]  # an error row: no set, not an empty one
    assert main(["predict", str(run), files[0]]) == 0
    assert "(empty)" in capsys.readouterr().out
    assert main(["predict", str(run), files[0], "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["prediction_set"] == []
