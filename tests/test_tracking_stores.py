"""--track mlflow against the stores users have, never a stand-in: a SQLite file, a real `mlflow server`.

A store that cannot be used is refused before training; a server that goes away after training is a
warning, and the command still exits 0 with its run directory intact.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("sqlalchemy")  # full mlflow (the `mlflow` extra), not mlflow-skinny

from cxrtl.cli import main

FAST = ["--backbone", "test_resnet", "--init", "none", "--image-size", "32", "--epochs", "2"]
FAST += ["--batch-size", "16", "--no-progress", "--device", "cpu"]
SERVER_START_S = 240  # a cold `mlflow server` takes 10-50 s on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(covid_root: Path, out: Path) -> int:
    return main(["train", "--data", str(covid_root), "--out", str(out), *FAST, "--track", "mlflow"])


def read_back(uri: str, run_name: str):
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("cxrtl")
    (run,) = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{run_name}'")
    return client, run


def assert_logged_as_recorded(client, run, run_dir: Path) -> None:
    """Parameters from summary.json's config, and every epoch of history.csv as a metric step."""
    config = json.loads((run_dir / "summary.json").read_text())["config"]
    assert run.data.params["seed"] == str(config["seed"])
    assert run.data.params["backbone"] == "test_resnet" and run.data.params["epochs"] == "2"
    with open(run_dir / "history.csv", newline="") as fh:
        history = list(csv.DictReader(fh))
    logged = client.get_metric_history(run.info.run_id, "val_acc")
    assert [(m.step, m.value) for m in logged] == [(int(r["epoch"]), float(r["val_acc"])) for r in history]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == len(history) == 2


@pytest.mark.parametrize(
    "uri, allow_folder, cause",
    [
        ("http://127.0.0.1:{port}", False, "(connection refused: no server listens there); start the server"),
        ("http://mlflow.invalid:5000", False, "(the host name does not resolve)"),  # RFC 6761: never resolves
        ("bogus://nowhere", False, "(the installed MLflow cannot open this kind of store)"),
        ("file://{tmp}/a-file", True, "Not a directory"),
        ("{tmp}/mlruns", False, "set MLFLOW_ALLOW_FILE_STORE=true, or use sqlite:///mlflow.db"),
    ],
)
def test_an_unusable_store_is_refused_before_training(
    tmp_path, covid_root, capsys, monkeypatch, uri, allow_folder, cause
):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.format(port=free_port(), tmp=tmp_path))
    if allow_folder:
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    else:
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    start = time.monotonic()
    assert train(covid_root, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cxrtl: error: cannot use the MLflow tracking store ")
    assert cause in err
    assert not (tmp_path / "run").exists()  # refused before any work
    assert time.monotonic() - start < 30


@pytest.mark.slow
def test_a_sqlite_store_records_the_run(tmp_path, covid_root, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(
        tmp_path
    )  # a database store keeps artifacts in ./mlruns (MLflow's default): not in the repo
    assert train(covid_root, tmp_path / "run") == 0
    assert (tmp_path / "mlruns").is_dir()
    assert f"tracked in {uri}" in capsys.readouterr().out
    client, run = read_back(uri, "run")
    assert_logged_as_recorded(client, run, tmp_path / "run")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real tracking server (`mlflow server`, SQLite backend) on a free loopback port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    exe = Path(sys.executable).with_name("mlflow")
    if not exe.is_file():
        pytest.skip("the mlflow command (full mlflow) is not installed")
    with open(root / "server.log", "wb") as log:
        yield from _serve(root, exe, port, log)


def _serve(root: Path, exe: Path, port: int, log):
    proc = subprocess.Popen(
        [str(exe), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
        + ["--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
        + ["--workers", "1"],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers go with it
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield {"uri": uri, "proc": proc}
    stop(proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_a_tracking_server_records_the_run_and_its_test_metrics(
    tmp_path, covid_root, monkeypatch, mlflow_server
):
    from cxrtl.tracking import track_train

    uri = mlflow_server["uri"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_dir = tmp_path / "served"
    assert train(covid_root, run_dir) == 0
    client, run = read_back(uri, "served")
    assert_logged_as_recorded(client, run, run_dir)
    assert "history.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}  # through the server

    # evaluated, the run is logged again with its final test metrics
    argv = ["evaluate", str(run_dir), "--data", str(covid_root), "--out", str(run_dir / "test")]
    assert main([*argv, "--device", "cpu", "--no-progress"]) == 0
    assert track_train(run_dir) == uri
    want = json.loads((run_dir / "test" / "metrics.json").read_text())
    runs = client.search_runs(
        [client.get_experiment_by_name("cxrtl").experiment_id], "attributes.run_name = 'served'"
    )
    evaluated = [r for r in runs if "test_accuracy" in r.data.metrics]
    assert len(runs) == 2 and len(evaluated) == 1
    metrics = evaluated[0].data.metrics
    assert metrics["test_accuracy"] == pytest.approx(want["accuracy"])
    assert metrics["test_macro_f1"] == pytest.approx(want["macro"]["f1"])


@pytest.mark.slow
def test_a_server_that_goes_away_after_training_is_a_warning(
    tmp_path, covid_root, monkeypatch, capsys, caplog, mlflow_server
):
    """Runs last in this module: it stops the shared server once training is over."""
    import cxrtl.tracking as tracking

    real_log_run = tracking.log_run

    def server_gone_then_log(*args, **kwargs):
        stop(mlflow_server["proc"])
        return real_log_run(*args, **kwargs)

    monkeypatch.setattr(tracking, "log_run", server_gone_then_log)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server["uri"])
    start = time.monotonic()
    assert train(covid_root, tmp_path / "run") == 0
    assert time.monotonic() - start < 120
    assert mlflow_server["proc"].poll() is not None  # it really went away
    out = capsys.readouterr().out
    assert "run dir:" in out and "tracked in" not in out
    assert "could not log" in caplog.text and "nothing is lost" in caplog.text
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["finished"]
    assert (tmp_path / "run" / "best.safetensors").is_file()
    assert mlflow.active_run() is None
