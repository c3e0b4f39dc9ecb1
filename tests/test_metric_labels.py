"""Numbers labelled as what they are: AUC averages by kind, undefined as n/a, small-sample caveats."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrtl.evaluation import figures as F
from cxrtl.evaluation.markdown import evaluation_markdown
from cxrtl.evaluation.metrics import compute_metrics, operating_point, softmax

COVID = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


def imbalanced(seed: int = 3, n: int = 200):
    """Four classes with very unequal supports and unequal separability: the AUC averages differ."""
    rng = np.random.default_rng(seed)
    y = rng.choice(4, size=n, p=[0.6, 0.25, 0.1, 0.05])
    strength = np.array([3.0, 0.5, 1.5, 0.2])[y]
    p = softmax(rng.normal(size=(n, 4)) + strength[:, None] * np.eye(4)[y])
    return y, p


def test_auc_averages_match_sklearn_by_kind():
    y, p = imbalanced()
    m = compute_metrics(y, p, COVID, n_boot=0)
    assert m["roc_auc_weighted"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="weighted"))
    assert m["roc_auc_macro"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["roc_auc_micro"] == pytest.approx(roc_auc_score(np.eye(4)[y], p, average="micro"))
    assert len({round(m[f"roc_auc_{a}"], 4) for a in ("weighted", "macro", "micro")}) == 3


def test_report_rows_and_roc_legend_show_the_same_auc_as_metrics(tmp_path):
    y, p = imbalanced()
    m = compute_metrics(y, p, COVID, n_boot=0)
    md = evaluation_markdown(m)
    assert re.search(r"\| \*weighted avg\* .*\| " + f"{m['roc_auc_weighted']:.4f}" + r" \|", md)
    assert re.search(r"\| \*macro avg\* .*\| " + f"{m['roc_auc_macro']:.4f}" + r" \|", md)
    assert re.search(r"\| \*micro avg.*\| " + f"{m['roc_auc_micro']:.4f}" + r" \|", md)
    svg = F.plot_roc(y, p, COVID, tmp_path / "roc")[1].read_text()
    assert f"macro-average (AUC = {m['roc_auc_macro']:.4f})" in svg
    assert f"micro-average (AUC = {m['roc_auc_micro']:.4f})" in svg


def test_precision_of_a_never_predicted_class_is_undefined_not_zero():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 1, 1, 1])  # class 2 is never predicted
    p = np.full((6, 3), 0.1)
    p[np.arange(6), pred] = 0.8
    m = compute_metrics(y, p, ["A", "B", "C"], n_boot=0)
    assert m["per_class"]["C"]["precision"] is None
    assert m["per_class"]["C"]["recall"] == 0.0 and m["per_class"]["C"]["f1"] == 0.0
    assert m["per_class"]["B"]["precision"] == pytest.approx(0.5)
    row = next(
        line for line in evaluation_markdown(m).splitlines() if line.startswith("| C † |")
    )  # 2 images: †
    assert "| n/a |" in row and "0.0% [" not in row.split("|")[3]


def test_operating_point_on_few_validation_positives_says_so():
    rng = np.random.default_rng(0)
    val_y, test_y = rng.integers(0, 2, 12), rng.integers(0, 2, 40)
    val_p, test_p = softmax(rng.normal(size=(12, 2))), softmax(rng.normal(size=(40, 2)))
    op = operating_point(val_y, val_p, test_y, test_p, ["NORMAL", "PNEUMONIA"], "PNEUMONIA")
    assert op["warning"] and "fewer than 20" in op["warning"]
    m = {**compute_metrics(test_y, test_p, ["NORMAL", "PNEUMONIA"], n_boot=0), "operating_point": op}
    assert "Caution: the threshold was chosen on only" in evaluation_markdown(m)
    val_y = np.r_[np.ones(30, int), np.zeros(30, int)]
    op = operating_point(val_y, softmax(rng.normal(size=(60, 2))), test_y, test_p, ["N", "P"], "P")
    assert op["warning"] is None


def test_calibration_that_worsens_ece_is_reported():
    y, p = imbalanced()
    m = compute_metrics(y, p, COVID, n_boot=0)
    worse = {"temperature": 3.0, "loss": m["loss"] + 0.1, "ece": m["ece"] + 0.05}
    assert "made the ECE on this subset worse" in evaluation_markdown({**m, "calibrated": worse})
    better = {**worse, "ece": m["ece"] / 2}
    assert "worse" not in evaluation_markdown({**m, "calibrated": better})


def test_interval_width_of_equal_test_sets_is_one_number():
    from cxrtl.paper.tables import _resolution_note

    runs = [
        {"test": {"n": 34, "accuracy_ci": [0.5, 0.812]}},
        {"test": {"n": 34, "accuracy_ci": [0.3, 0.612]}},
    ]
    note = _resolution_note(runs)
    assert "±15.6 points wide" in note and " to ±" not in note


def test_random_init_meant_as_imagenet_is_named_random_in_table_v():
    from cxrtl.paper import tables as T

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 30)
    test = compute_metrics(
        y, softmax(rng.normal(size=(30, 2)) + 2 * np.eye(2)[y]), ["NORMAL", "PNEUMONIA"], n_boot=0
    )

    def run(name, pretraining, init):
        cfg = {"input": "raw", "channels": 3, "init": init, "scheme": "finetune", "random_init": True}
        return {
            "name": name,
            "experiment": [3],
            "dataset": "pneumonia",
            "pretraining": pretraining,
            "protocol": "paper",
            "config": cfg,
            "best_epoch": 1,
            "test": test,
        }

    runs = [
        run("pneumonia-imagenet-finetune", "ImageNet", "none"),
        run("pneumonia-covid-finetune", "ImageNet & COVID", "runs/covid/best.safetensors"),
    ]
    rows = {r[2]: r[0] for r in T.table_v(runs).rows}
    assert rows["pneumonia-imagenet-finetune"] == "random (ImageNet unavailable)"
    assert rows["pneumonia-covid-finetune"] == "random (ImageNet unavailable) & COVID"
    # ... and each still sits on the paper row it was planned for, beside the paper's numbers (97.44%, 98.29%)
    table = T.table_v(runs)
    by_run = {r[2]: r for r in table.rows}
    assert (
        "97.44%" in by_run["pneumonia-imagenet-finetune"] and "98.29%" in by_run["pneumonia-covid-finetune"]
    )
    assert len(table.rows) == 5  # the paper's five rows, no extra unmatched ones


@pytest.mark.parametrize("absolute_run_dirs", [True, False])
def test_report_md_figure_links_resolve_from_the_report_folder(tmp_path, monkeypatch, absolute_run_dirs):
    from pathlib import Path

    from cxrtl.paper.report import Section, _md

    monkeypatch.chdir(tmp_path)
    out = Path("work") / "repro"  # as typed on the command line, relative to where the command ran
    fig = out / "runs" / "a" / "test" / "roc.png"
    fig.parent.mkdir(parents=True)
    fig.write_bytes(b"png")
    fig = fig.resolve() if absolute_run_dirs else fig
    md = _md({"runs": [], "reproduction": {}}, [Section("Figures", figures=[("ROC", fig)])], out)
    link = re.search(r"!\[ROC\]\(([^)]+)\)", md).group(1)
    assert link == "runs/a/test/roc.png" and (tmp_path / out / link).is_file()
