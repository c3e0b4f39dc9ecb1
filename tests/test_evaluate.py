"""`cxrtl evaluate`: outputs recomputable from predictions.csv, calibration, operating point, bad input."""

from __future__ import annotations

import csv
import json
import sys
import types

import numpy as np
import pytest
from PIL import Image

from cxrtl.cli import main
from cxrtl.evaluation.metrics import compute_metrics

pytestmark = pytest.mark.slow  # one module fixture builds a dataset, a checkpoint and evaluates (~15 s)

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]  # the synthetic COVID set's


def make_folder_dataset(root, classes, per_class=12, seed=0):
    """Class-folder dataset of small grey PNGs, brightness depending on the class (so it is learnable)."""
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(rng.normal(60 + 60 * k, 25, (40, 40)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / c / f"{c}-{i}.png")
    return root


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, covid_root):
    """A tiny run dir (resnet18 at 64 px, the smallest with a 2x2 map for Grad-CAM, random init) on the
    synthetic COVID set, evaluated once via the CLI."""
    import torch

    from cxrtl.checkpoint import save_checkpoint
    from cxrtl.data import Preprocess, load_dataset, make_split, write_split_csv
    from cxrtl.transfer import create_model

    base = tmp_path_factory.mktemp("eval")
    data = covid_root
    run = base / "run"
    run.mkdir()
    index = load_dataset(data)
    split = make_split(index, ratios=(0.5, 0.25, 0.25), seed=0)
    write_split_csv(run / "split.csv", split)
    torch.manual_seed(0)
    model = create_model("resnet18", CLASSES, in_chans=3, init="none")
    pp = Preprocess("raw", 3, 64)
    save_checkpoint(run / "best", model, {"preprocess": pp.to_dict(), "epoch": 2, "config": {"seed": 0}})
    (run / "history.csv").write_text(
        "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds\n"
        "1,1.1,0.4,1.1,0.3,0.001,1.0\n2,1.0,0.5,1.0,0.4,0.001,1.0\n"
    )
    out = base / "out"
    code = main(
        [
            "evaluate",
            str(run),
            "--data",
            str(data),
            "--out",
            str(out),
            "--calibrate",
            "--positive",
            "covid",
            "--target-sensitivity",
            "0.9",
            "--device",
            "cpu",
            "--cam-in-lungs",
            "--cache-dir",
            str(base / "cache"),
            "--bootstrap",
            "100",
            "--no-progress",
        ]
    )
    assert code == 0
    return types.SimpleNamespace(
        base=base,
        data=data,
        run=run,
        out=out,
        split=split,
        n_all=len(index.records),
        metrics=json.loads((out / "metrics.json").read_text()),
    )


def read_predictions(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_outputs_and_schema(evaluated):
    m, out = evaluated.metrics, evaluated.out
    assert m["classes"] == CLASSES
    assert m["n"] == len(evaluated.split["test"])
    for key in (
        "accuracy",
        "accuracy_ci",
        "loss",
        "per_class",
        "weighted",
        "macro",
        "confusion_matrix",
        "roc_auc",
        "ece",
        "calibration",
        "calibrated",
        "operating_point",
        "source",
    ):
        assert key in m
    assert set(m["per_class"]["COVID"]) >= {
        "precision",
        "recall",
        "f1",
        "support",
        "precision_ci",
        "recall_ci",
    }
    for name in ("roc", "confusion", "reliability", "history"):
        assert (out / f"{name}.png").is_file() and (out / f"{name}.svg").is_file()
    assert "accuracy" in (out / "report.md").read_text()
    assert m["source"]["split"] == str(evaluated.run / "split.csv")


def test_predictions_follow_split_and_recompute_metrics(evaluated):
    rows = read_predictions(evaluated.out / "predictions.csv")
    assert list(rows[0]) == ["path", "label", "pred"] + [f"prob_{c}" for c in CLASSES]
    assert sorted(r["path"] for r in rows) == sorted(r.path for r in evaluated.split["test"])
    y = np.array([CLASSES.index(r["label"]) for r in rows])
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
    assert [CLASSES[i] for i in probs.argmax(axis=1)] == [r["pred"] for r in rows]
    again = compute_metrics(y, probs, CLASSES, seed=0, n_boot=100)
    m = evaluated.metrics
    assert again["confusion_matrix"] == m["confusion_matrix"]
    assert again["accuracy"] == m["accuracy"]
    assert again["roc_auc"] == m["roc_auc"]
    assert again["per_class"]["COVID"]["f1_ci"] == m["per_class"]["COVID"]["f1_ci"]
    assert again["loss"] == pytest.approx(m["loss"], abs=1e-6)


def test_calibration_saved_beside_checkpoint_and_operating_point(evaluated):
    record = json.loads((evaluated.run / "best.decisions.json").read_text())
    assert record["temperature"]["value"] == pytest.approx(evaluated.metrics["calibrated"]["temperature"])
    assert record["temperature"]["fitted_on"] == "val" and record["temperature"]["fitted_utc"]
    assert record["operating_point"]["positive"] == "COVID"  # one record holds every fitted setting
    assert not (evaluated.run / "best.calibration.json").exists()
    op = evaluated.metrics["operating_point"]
    assert op["positive"] == "COVID" and 0 <= op["threshold"] <= 1
    assert op["val"]["sensitivity"] >= 0.9
    assert op["test"]["tp"] + op["test"]["fn"] == evaluated.metrics["per_class"]["COVID"]["support"]


def test_checkpoint_file_on_all_images_uses_saved_temperature(evaluated, capsys):
    out = evaluated.base / "out_all"
    code = main(
        [
            "evaluate",
            str(evaluated.run / "best.json"),
            "--data",
            str(evaluated.data),
            "--subset",
            "all",
            "--out",
            str(out),
            "--cache-dir",
            str(evaluated.base / "cache"),
            "--bootstrap",
            "0",
            "--no-figures",
            "--no-progress",
        ]
    )
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == evaluated.n_all and "calibrated" in m
    assert "accuracy" in capsys.readouterr().out


def test_cam_in_lungs_real(evaluated):
    cam = evaluated.metrics["cam_in_lungs"]
    assert cam["overall"]["n"] == evaluated.metrics["n"]  # the synthetic set has a mask for every image
    assert 0 <= cam["overall"]["mean"] <= 1
    assert set(cam["per_class"]) == set(CLASSES)


def test_cam_in_lungs_aggregates_per_class(evaluated, monkeypatch):
    from cxrtl.evaluation.evaluate import evaluate

    fake = types.ModuleType("cxrtl.evaluation.cam")
    fake.lung_fractions = lambda model, index, records, pp, device: [
        None if i == 0 else 0.5 for i, _ in enumerate(records)
    ]
    fake.mask_shares = lambda index, records, pp: [0.9 if i == 0 else 0.25 for i, _ in enumerate(records)]
    fake.feature_map_size = lambda model, pp, device, warn=True: (2, 2)
    fake.COARSE_MAP = 4
    monkeypatch.setitem(sys.modules, "cxrtl.evaluation.cam", fake)
    m = evaluate(
        evaluated.run,
        evaluated.data,
        out=evaluated.base / "out_cam",
        cam_in_lungs=True,
        cache_dir=evaluated.base / "cache",
        progress=False,
        n_boot=0,
        figures=False,
        device="cpu",
    )
    cam = m["cam_in_lungs"]
    assert cam["without_mask"] == 1 and cam["overall"]["mean"] == 0.5 and cam["overall"]["n"] == m["n"] - 1
    # the chance level beside it: the lung share of the same images (the one without a CAM left out)
    assert cam["overall"]["mask_share"] == 0.25 and cam["feature_map"] == [2, 2] and "2x2" in cam["warning"]
    assert cam["by"] == "CAM of the predicted class, grouped by true class"
    assert cam["overall"]["ci"] == pytest.approx([0.5, 0.5])  # every share 0.5: no spread


def _listing(*roots):
    """Every path under ``roots`` with its size and modification time."""
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in root.rglob("*"))


def test_out_none_returns_the_same_metrics_and_writes_nothing(evaluated, tmp_path, monkeypatch):
    from cxrtl.evaluation.evaluate import evaluate

    kw = {
        "positive": "covid",
        "target_sensitivity": 0.9,
        "cache_dir": evaluated.base / "cache",
        "progress": False,
        "n_boot": 50,
        "device": "cpu",
    }
    written = evaluate(evaluated.run, evaluated.data, out=tmp_path / "out", **kw)
    assert (tmp_path / "out" / "metrics.json").is_file() and written["figures"]
    monkeypatch.chdir(tmp_path)  # a relative default output folder would land here
    before = _listing(tmp_path, evaluated.base, evaluated.data)
    m = evaluate(evaluated.run, evaluated.data, out=None, **kw)
    assert _listing(tmp_path, evaluated.base, evaluated.data) == before
    assert "figures" not in m and "calibrated" in m and "operating_point" in m
    expected = {k: v for k, v in written.items() if k != "figures"}
    assert json.dumps(m, sort_keys=True) == json.dumps(expected, sort_keys=True)


def one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("cxrtl: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_run_dir_without_best_checkpoint(evaluated, tmp_path, capsys):
    err = one_line_error(
        capsys, ["evaluate", str(tmp_path), "--data", str(evaluated.data), "--out", str(tmp_path / "o")]
    )
    assert "no best checkpoint" in err


def test_classes_do_not_match(evaluated, pneumonia_root, tmp_path, capsys):
    data = pneumonia_root
    err = one_line_error(
        capsys,
        [
            "evaluate",
            str(evaluated.run / "best.safetensors"),
            "--data",
            str(data),
            "--subset",
            "all",
            "--out",
            str(tmp_path / "o"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-progress",
        ],
    )
    assert "do not match" in err
    assert not (tmp_path / "cache").exists()  # refused before decoding a single image into a cache


def test_labels_never_seen(evaluated, tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "five", CLASSES + ["Tuberculosis"], per_class=3)
    err = one_line_error(
        capsys,
        [
            "evaluate",
            str(evaluated.run / "best.safetensors"),
            "--data",
            str(data),
            "--subset",
            "all",
            "--out",
            str(tmp_path / "o"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-progress",
        ],
    )
    assert "never saw" in err and "Tuberculosis" in err


def test_empty_subset(evaluated, tmp_path, capsys):
    split = tmp_path / "split.csv"
    with open(split, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        for name in ("train", "val", "test"):
            for r in evaluated.split[name]:
                w.writerow([r.path, r.label, "train"])
    err = one_line_error(
        capsys,
        [
            "evaluate",
            str(evaluated.run),
            "--data",
            str(evaluated.data),
            "--split",
            str(split),
            "--out",
            str(tmp_path / "o"),
            "--cache-dir",
            str(evaluated.base / "cache"),
            "--no-progress",
        ],
    )
    assert "empty" in err


def test_unknown_positive_class(evaluated, tmp_path, capsys):
    err = one_line_error(
        capsys,
        [
            "evaluate",
            str(evaluated.run),
            "--data",
            str(evaluated.data),
            "--out",
            str(tmp_path / "o"),
            "--positive",
            "PNEUMONIA",
            "--cache-dir",
            str(evaluated.base / "cache"),
            "--no-progress",
            "--no-figures",
        ],
    )
    assert "--positive" in err
