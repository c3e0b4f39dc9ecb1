"""Figures (PNG + SVG, axes labelled right) and the paper's tables built from run dicts."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from cxrtl.errors import CxrtlError
from cxrtl.evaluation import figures as F
from cxrtl.evaluation.markdown import evaluation_markdown
from cxrtl.evaluation.metrics import compute_metrics, softmax
from cxrtl.formatting import fmt_pct
from cxrtl.paper import tables as T
from cxrtl.paper.published import published_rows

COVID = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
PNEU = ["NORMAL", "PNEUMONIA"]


def fake_metrics(classes, n=120, strength=2.0, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(classes), n)
    p = softmax(rng.normal(size=(n, len(classes))) + strength * np.eye(len(classes))[y])
    return y, p, compute_metrics(y, p, classes, n_boot=50, seed=seed)


def test_figures_written_as_png_and_svg(tmp_path):
    y, p, m = fake_metrics(COVID)
    for paths in (
        F.plot_roc(y, p, COVID, tmp_path / "roc"),
        F.plot_confusion(m["confusion_matrix"], COVID, tmp_path / "confusion"),
        F.plot_reliability(
            m["calibration"], tmp_path / "reliability", calibrated={**m["calibration"], "temperature": 1.3}
        ),
    ):
        assert [q.suffix for q in paths] == [".png", ".svg"]
        assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert paths[1].read_text().lstrip().startswith("<?xml")
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_confusion_axes_labelled_true_rows_predicted_columns(tmp_path):
    svg = F.plot_confusion([[5, 1], [2, 7]], PNEU, tmp_path / "cm")[1].read_text()
    assert ">True<" in svg and ">Predicted<" in svg
    # normalised per true class (row): 5 of 6 NORMAL, 7 of 9 PNEUMONIA right
    assert ">83.3%<" in svg and ">16.7%<" in svg and ">22.2%<" in svg and ">77.8%<" in svg


def test_roc_has_micro_macro_and_handles_absent_class(tmp_path):
    y, p, _ = fake_metrics(COVID)
    svg = F.plot_roc(y, p, COVID, tmp_path / "roc")[1].read_text()
    assert "micro-average" in svg and "macro-average" in svg and "Viral Pneumonia (AUC" in svg
    keep = y != 3
    svg = F.plot_roc(y[keep], p[keep], COVID, tmp_path / "roc2")[1].read_text()
    assert "Viral Pneumonia (AUC" not in svg


def test_history_plot(tmp_path):
    hist = tmp_path / "history.csv"
    hist.write_text(
        "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds\n"
        "1,1.2,0.5,1.1,0.55,0.001,3.0\n2,0.8,0.7,0.9,0.65,0.001,3.1\n3,0.5,0.8,0.95,0.6,0.0001,3.0\n"
    )
    paths = F.plot_history(hist, tmp_path / "curves")
    assert "best val: epoch 2" in paths[1].read_text()
    with pytest.raises(CxrtlError):
        F.plot_history(tmp_path / "missing.csv", tmp_path / "x")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(CxrtlError):
        F.plot_history(tmp_path / "empty.csv", tmp_path / "x")


def test_figures_are_byte_stable(tmp_path):
    a = F.plot_confusion([[3, 1], [0, 4]], PNEU, tmp_path / "a")
    b = F.plot_confusion([[3, 1], [0, 4]], PNEU, tmp_path / "b")
    assert a[1].read_bytes() == b[1].read_bytes()


def test_fmt_pct():
    assert fmt_pct(0.9575, [0.9487, 0.9656]) == "95.8% [94.9, 96.6]"
    assert fmt_pct(None) == "—"


def make_runs():
    runs = []
    for i, (inp, ch) in enumerate([("raw", 1), ("raw", 3), ("masked", 1), ("masked", 3)]):
        runs.append(
            {
                "name": f"covid-{inp}-{ch}",
                "experiment": [1, 2] if (inp, ch) == ("raw", 3) else 1,
                "dataset": "covid",
                "config": {"input": inp, "channels": ch, "loss": "wce-1cf", "init": "imagenet"},
                "best_epoch": 3 + i,
                "seconds": 100.0 + i,
                "test": fake_metrics(COVID, seed=i)[2],
            }
        )
    runs.append(
        {
            "name": "covid-ce",
            "experiment": "exp2",
            "dataset": "covid",
            "config": {"input": "raw", "channels": 3, "loss": "ce", "init": "imagenet"},
            "best_epoch": 4,
            "seconds": 90.0,
            "test": fake_metrics(COVID, seed=9)[2],
        }
    )
    for pre, scheme, init in [
        ("None", "finetune", "none"),
        ("ImageNet", "extractor", "imagenet"),
        (None, "finetune", "runs/covid/best.safetensors"),
    ]:
        cfg = {"input": "raw", "channels": 3, "loss": "wce-1cf", "init": init, "scheme": scheme}
        if pre:
            cfg["pretraining"] = pre
        runs.append(
            {
                "name": f"pneu-{init}-{scheme}",
                "experiment": 3,
                "dataset": "pneumonia",
                "protocol": "paper",
                "config": cfg,
                "best_epoch": 2,
                "seconds": 50.0,
                "test": fake_metrics(PNEU, n=80, seed=5)[2],
            }
        )
    return runs


def test_tables_rows_follow_config_and_show_paper_numbers():
    runs = make_runs()
    t2 = T.table_ii(runs)
    assert [r[:3] for r in t2.rows] == [
        ["Raw Images", "1", "covid-raw-1"],
        ["Raw Images", "3", "covid-raw-3"],
        ["Masked Images", "1", "covid-masked-1"],
        ["Masked Images", "3", "covid-masked-3"],
    ]
    covid = runs[1]["test"]["per_class"]["COVID"]
    assert t2.rows[1][3] == fmt_pct(covid["precision"], covid["precision_ci"])
    assert t2.rows[1][-3:] == ["98.66%", "97.36%", "98.01%"]
    t3 = T.table_iii(runs)
    assert "95.75%" in t3.rows[1] and "0.2296" in t3.rows[1]
    assert t3.rows[0][4] == fmt_pct(runs[0]["test"]["accuracy"], runs[0]["test"]["accuracy_ci"])
    # Table III compares macro with macro: the paper's numbers are the macro row of its printout.
    macro = runs[1]["test"]["macro"]
    assert t3.rows[1][5:8] == [fmt_pct(macro[k], macro.get(f"{k}_ci")) for k in ("precision", "recall", "f1")]
    assert t3.rows[1][-3:] == ["96.20%", "96.71%", "96.45%"]
    assert t3.columns[-3:] == ["Paper macro P", "Paper macro R", "Paper macro F1"]
    notes = " ".join(t3.notes)
    assert "macro" in notes and "2027 of 2117" in notes and "averaged accuracy over batches" not in notes
    assert "86.81%" in " ".join(T.table_ii(runs).notes)

    t4 = T.table_iv(runs)
    by_loss = {r[0]: r for r in t4.rows}
    assert by_loss["Cross Entropy Loss"][1] == "covid-ce"
    assert by_loss["WCE using 1-CF"][1] == "covid-raw-3"  # listed under experiments 1 and 2
    assert by_loss["Focal Loss"][1] == "—" and by_loss["Focal Loss"][-2:] == ["94.51%", "19"]
    assert len(t4.rows) == 4  # raw-1/masked runs are not in Exp. 2

    t5 = T.table_v(runs)
    keys = [(r[0], r[1], r[2]) for r in t5.rows]
    assert ("None", "Fine-tune", "pneu-none-finetune") in keys
    assert ("ImageNet & COVID", "Fine-tune", "pneu-runs/covid/best.safetensors-finetune") in keys
    assert ("ImageNet", "Fine-tune", "—") in keys  # paper row kept without a run
    assert "Protocol" in t5.columns
    t6 = T.table_vi(runs)
    row = next(r for r in t6.rows if r[2] == "pneu-none-finetune")
    assert row[-3:] == ["97.67%", "97.67%", "97.67%"]
    assert "not resolved" in t6.notes[0]


def test_write_tables_markdown_and_csv(tmp_path):
    out = T.write_tables(make_runs(), tmp_path)
    assert set(out) == {"II", "III", "IV", "V", "VI", "runs", "all"}
    with open(tmp_path / "table_ii.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[1]["input"] == "raw" and rows[1]["channels"] == "3"
    assert float(rows[1]["paper_precision"]) == pytest.approx(0.9866)
    assert float(rows[1]["covid_precision_lo"]) <= float(rows[1]["covid_precision"])
    md = (tmp_path / "tables.md").read_text()
    assert "Table II." in md and "Table VI." in md and "All runs" in md
    with pytest.raises(CxrtlError, match="no test metrics"):
        T.write_tables([{"name": "x"}], tmp_path)


def test_only_fitting_tables_and_experiment_inference():
    runs = [r for r in make_runs() if r["dataset"] == "pneumonia"]
    assert set(T.paper_tables(runs)) == {"V", "VI", "runs"}
    r = {
        "name": "x",
        "dataset": "covid",
        "config": {"input": "raw", "channels": 3, "loss": "focal"},
        "test": fake_metrics(COVID)[2],
    }
    assert T.run_experiments(r) is None
    assert set(T.paper_tables([r])) == {"II", "III", "IV", "runs"}
    assert T.run_experiments({"experiment": "exp2"}) == {2}
    assert T.run_row_keys({"config": {"init": "none"}})["pretraining"] == "None"


def test_evaluation_markdown_mentions_intervals():
    _, _, m = fake_metrics(PNEU, n=586)
    text = evaluation_markdown(m)
    assert "not distinguishable" in text and "| PNEUMONIA |" in text and "True \\ Predicted" in text


def test_table_iv_with_protocol_only_when_it_has_runs():
    runs = [r for r in make_runs() if r["dataset"] == "pneumonia"]
    for r in runs:
        r["protocol"] = "patient-grouped"
    assert "IV" not in T.paper_tables(runs)
    covid = {**make_runs()[4], "protocol": "paper"}
    t4 = T.paper_tables(runs + [covid])["IV"]
    assert t4.columns[:3] == ["Loss", "Run", "Protocol"] and t4.n_runs == 1


def test_published_numbers_keep_the_papers_rows_order_and_types():
    assert list(published_rows("II")) == [("raw", 1), ("raw", 3), ("masked", 1), ("masked", 3)]
    assert list(published_rows("IV")) == ["ce", "wce-1cf", "wce-icf", "focal"]
    assert (
        list(published_rows("V"))
        == list(published_rows("VI"))
        == [
            ("None", "finetune"),
            ("ImageNet", "finetune"),
            ("ImageNet", "extractor"),
            ("ImageNet & COVID", "finetune"),
            ("ImageNet & COVID", "extractor"),
        ]
    )
    assert published_rows("III")[("masked", 1)] == {
        "loss": 0.2269,
        "accuracy": 0.9192,
        "precision": 0.9172,
        "recall": 0.9138,
        "f1": 0.9151,
    }
    assert published_rows("IV")["focal"] == {"accuracy": 0.9451, "epochs": 19}
    assert isinstance(published_rows("V")[("None", "finetune")]["epoch"], int)
    published_rows("II")[("raw", 1)]["f1"] = 0.0  # callers get copies: the packaged numbers stay put
    assert published_rows("II")[("raw", 1)]["f1"] == 0.9683


# The paper's Tables II-VI, typed here from paper.md independently of published.json (percent, loss, epoch).
PAPER = {
    "II": {
        ("raw", 1): [97.08, 96.57, 96.83],
        ("raw", 3): [98.66, 97.36, 98.01],
        ("masked", 1): [93.20, 85.81, 89.89],
        ("masked", 3): [95.01, 90.50, 92.70],
    },
    "III": {
        ("raw", 1): [0.2685, 95.32, 95.61, 96.03, 95.81],
        ("raw", 3): [0.2296, 95.75, 96.20, 96.71, 96.45],
        ("masked", 1): [0.2269, 91.92, 91.72, 91.38, 91.51],
        ("masked", 3): [0.2603, 93.48, 93.73, 93.42, 93.55],
    },
    "IV": {"ce": [94.68, 30], "wce-1cf": [95.75, 25], "wce-icf": [95.13, 23], "focal": [94.51, 19]},
    "V": {
        ("None", "finetune"): [0.0773, 96.59, 96.59, 96.59, 96.59, 19],
        ("ImageNet", "finetune"): [0.0728, 97.44, 98.59, 97.90, 98.25, 11],
        ("ImageNet", "extractor"): [0.1401, 94.88, 94.90, 94.88, 94.89, 28],
        ("ImageNet & COVID", "finetune"): [0.0649, 98.29, 98.29, 98.29, 98.29, 16],
        ("ImageNet & COVID", "extractor"): [0.0823, 97.10, 97.17, 97.10, 97.12, 29],
    },
    "VI": {
        ("None", "finetune"): [97.67, 97.67, 97.67],
        ("ImageNet", "finetune"): [98.59, 97.90, 98.25],
        ("ImageNet", "extractor"): [96.72, 96.27, 96.50],
        ("ImageNet & COVID", "finetune"): [98.38, 99.30, 98.84],
        ("ImageNet & COVID", "extractor"): [98.82, 97.20, 98.00],
    },
}
COLUMNS = {
    "II": ["precision", "recall", "f1"],
    "III": ["loss", "accuracy", "precision", "recall", "f1"],
    "IV": ["accuracy", "epochs"],
    "V": ["loss", "accuracy", "precision", "recall", "f1", "epoch"],
    "VI": ["precision", "recall", "f1"],
}


def test_every_published_number_matches_the_paper():
    count = 0
    for table, rows in PAPER.items():
        packaged = published_rows(table)
        assert list(packaged) == list(rows)
        for key, values in rows.items():
            for col, want in zip(COLUMNS[table], values):
                got = packaged[key][col]
                if col in ("loss", "epoch", "epochs"):
                    assert got == want, (table, key, col)
                else:
                    assert 100 * got == pytest.approx(want, abs=1e-9), (table, key, col)
                count += 1
    assert count == 12 + 20 + 8 + 30 + 15
