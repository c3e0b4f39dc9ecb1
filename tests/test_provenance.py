"""Results say what produced them, evaluate finds the run's data, predict names `pred` and flags `positive`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cxrtl.cli import main

FAST = ["--backbone", "test_resnet", "--init", "none", "--image-size", "32", "--epochs", "1"]
FAST += ["--batch-size", "8", "--no-progress", "--device", "cpu", "--group-by", "patient"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, pneumonia_root):
    run = tmp_path_factory.mktemp("prov") / "run"
    assert main(["train", "--data", str(pneumonia_root), "--out", str(run), *FAST]) == 0
    return run


def _expected_versions() -> dict:
    import timm
    import torch

    import cxrtl

    return {
        "cxrtl": cxrtl.__version__,
        "torch": torch.__version__.split("+")[0],
        "timm": timm.__version__,
        "python": ".".join(map(str, sys.version_info[:3])),
    }


def _git_head() -> str | None:
    here = Path(__import__("cxrtl").__file__).parent
    r = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or None


def _check(prov: dict) -> None:
    for key, value in _expected_versions().items():
        assert str(prov[key]).split("+")[0] == value, key
    head = _git_head()
    assert (prov["git_commit"] or "").split("+")[0] == (head or "")
    assert prov["device"].startswith("cpu")


def test_summary_and_checkpoint_record_versions_commit_and_device(run_dir):
    _check(json.loads((run_dir / "summary.json").read_text())["provenance"])
    _check(json.loads((run_dir / "best.json").read_text())["provenance"])


def test_evaluate_takes_the_data_root_from_the_run_and_records_provenance(run_dir, pneumonia_root, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", str(run_dir), "--out", str(out), "--bootstrap", "0", "--no-figures"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert Path(m["source"]["data"]) == Path(pneumonia_root)
    _check(m["provenance"])


def test_evaluate_without_data_when_the_run_data_is_gone(run_dir, tmp_path, capsys):
    moved = tmp_path / "run"
    moved.mkdir()
    for f in run_dir.iterdir():
        if f.is_file():
            (moved / f.name).write_bytes(f.read_bytes())
    text = (moved / "config.yaml").read_text()
    (moved / "config.yaml").write_text(
        text.replace(
            json.loads((run_dir / "summary.json").read_text())["config"]["data"], str(tmp_path / "gone")
        )
    )
    assert main(["evaluate", str(moved), "--out", str(tmp_path / "e"), "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cxrtl: error:") and "--data ROOT" in err and "\n" not in err
    assert not (tmp_path / "e").exists()


def test_stored_operating_point_flags_predict_rows_and_pred_names_the_label(
    run_dir, pneumonia_root, tmp_path, capsys
):
    out = tmp_path / "eval"
    args = ["evaluate", str(run_dir), "--out", str(out), "--bootstrap", "0", "--no-figures"]
    assert main([*args, "--positive", "PNEUMONIA", "--target-sensitivity", "0.9"]) == 0
    threshold = json.loads((out / "metrics.json").read_text())["operating_point"]["threshold"]
    capsys.readouterr()
    images = sorted((pneumonia_root / "test").rglob("*.jpeg"))[:6]
    assert main(["predict", str(run_dir), *map(str, images), "--format", "json", "--no-progress"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(images)
    for row in rows:
        probs = row["probabilities"]
        assert row["pred"] == row["label"] == max(probs, key=probs.get)  # argmax stays the label
        assert row["positive"] == {
            "class": "PNEUMONIA",
            "threshold": pytest.approx(threshold),
            "flag": probs["PNEUMONIA"] >= threshold,
        }
    assert main(["predict", str(run_dir), str(images[0]), "--format", "csv", "--no-progress"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split(",")
    assert header[:2] == ["path", "label"] and "positive_flag" in header


def test_without_a_stored_operating_point_rows_have_no_positive(tmp_path, pneumonia_root, capsys):
    from cxrtl.inference.predict import Prediction

    row = Prediction(path="a.png", label="NORMAL", probabilities={"NORMAL": 0.7, "PNEUMONIA": 0.3}).to_dict()
    assert row["pred"] == "NORMAL" and "positive" not in row
