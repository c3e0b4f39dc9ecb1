"""--track mlflow: runs, parameters, per-epoch and test metrics, tags and artifacts, read back with MLflow."""

from __future__ import annotations

import json
import sys

import pytest

from cxrtl.cli import main
from test_bundle import make_covid_run
from test_reproduce import _args

HISTORY = (
    "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds\n"
    "1,1.5,0.4,1.4,0.5,0.001,2.0\n"
    "2,1.2,0.6,1.3,0.55,0.001,2.1\n"
)


def client_runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("cxrtl")
    return client, client.search_runs([experiment.experiment_id])


def test_a_run_is_logged_and_read_back(tmp_path, covid_root, monkeypatch):
    pytest.importorskip("mlflow")
    from cxrtl.tracking import track_train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = make_covid_run(tmp_path / "run", covid_root)
    (run / "history.csv").write_text(HISTORY)
    (run / "test").mkdir()
    (run / "test" / "metrics.json").write_text(json.dumps({"accuracy": 0.625, "macro": {"f1": 0.5}}))
    uri = track_train(run)
    assert uri == (run / "mlruns").resolve().as_uri()
    client, (found,) = client_runs(uri)
    assert found.data.params["seed"] == "7" and found.data.params["loss"] == "wce-1cf"
    assert found.data.tags["synthetic"] == "true" and found.data.tags["init"] == "random"
    assert found.data.tags["dataset"] == "COVID-19_Radiography_Dataset"
    assert found.data.metrics["test_accuracy"] == 0.625 and found.data.metrics["test_macro_f1"] == 0.5
    val_acc = client.get_metric_history(found.info.run_id, "val_acc")
    assert [(m.step, m.value) for m in val_acc] == [(1, 0.5), (2, 0.55)]
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"history.csv", "metrics.json", "MODEL_CARD.md"} <= artifacts


def test_missing_extra_is_one_line_before_training(tmp_path, covid_root, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if cxrtl[mlflow] were not installed
    argv = ["train", "--data", str(covid_root), "--out", str(tmp_path / "r"), "--backbone", "test_resnet"]
    assert main([*argv, "--init", "none", "--track", "mlflow"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'cxrtl[mlflow]'" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_tracked_reproduction_holds_every_run(tmp_path, synth_roots, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "out"
    argv = _args(*synth_roots, out, "--allow-random-init", "--experiments", "1", "--track", "mlflow")
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    client, runs = client_runs((out / "mlruns").resolve().as_uri())
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "reproduction"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(r["name"] for r in results["runs"])
    for child in children:
        want = next(r for r in results["runs"] if r["name"] == child.info.run_name)
        assert child.data.metrics["test_accuracy"] == pytest.approx(want["test"]["accuracy"])
        assert "1" in child.data.tags["experiment"].split(",")
        assert client.get_metric_history(child.info.run_id, "val_acc")
    assert "report.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}
