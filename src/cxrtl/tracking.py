"""Experiment tracking (``--track mlflow``): a finished run, or a whole reproduction, logged to MLflow.

Logged from the files a run leaves, after it finishes, so training itself is untouched and a tracked run is
bit-identical to an untracked one: parameters (the resolved config), per-epoch metrics (the ``history.csv``
columns, step = epoch), test metrics, tags (experiment, dataset, seed, synthetic, init) and artifacts
(``history.csv``, ``metrics.json``, figures, the generated model card). A reproduction is one parent run
with a child per training run, and ``report.html`` on the parent.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else a local file store ``<out>/mlruns`` that needs no
server and no network. MLflow 3 keeps that file store in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``;
cxrtl sets it for its own local default only. A SQLite file (``sqlite:///...``) and a tracking server
(``http(s)://...``) work too; they need full ``mlflow`` (the ``mlflow`` extra), not mlflow-skinny.

A set URI is checked before training (:func:`check_tracker`): a store that cannot be used is one line before
any work. A tracking failure after training (the server went away) is a warning: the run directory is
complete, and the command still succeeds. Requests to a server are retried twice and time out after 30 s
unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT`` say otherwise (MLflow's own
defaults, 7 retries with exponential backoff, would hold a finished command for minutes).
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import CxrtlError
from .fsutil import read_json

log = logging.getLogger(__name__)

TRACKERS = ("mlflow",)
EXPERIMENT = "cxrtl"
# Packages whose exceptions mean "the tracking store failed", not a bug in cxrtl.
STORE_PACKAGES = frozenset(
    {"mlflow", "requests", "urllib3", "sqlalchemy", "alembic", "sqlite3", "http", "socket"}
)
# A dead server fails fast: MLflow's defaults are 7 retries with exponential backoff and a 120 s timeout.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
CHECK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def _mlflow():
    try:
        import mlflow
    except ImportError:
        raise CxrtlError(
            "--track mlflow needs MLflow; install it with `pip install 'cxrtl[mlflow]'`"
        ) from None
    return mlflow


@contextmanager
def _http_defaults(values: dict[str, str]) -> Iterator[None]:
    """Set MLflow's HTTP retry and timeout variables that the user has not set, for the duration."""
    added = [k for k in values if k not in os.environ]
    os.environ.update({k: values[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _from_store(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) comes from MLflow or the store beneath it, or is an OS error."""
    cur: BaseException | None = exc
    for _ in range(20):
        if cur is None:
            return False
        if isinstance(cur, OSError) or type(cur).__module__.split(".")[0] in STORE_PACKAGES:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


# What requests/urllib3 say, deep inside MLflow's message, and what it means.
_HTTP_CAUSES = (
    (("maintenance mode",), "MLflow 3 opens a folder store only with MLFLOW_ALLOW_FILE_STORE=true"),
    (("unsupported URI", "Unsupported"), "the installed MLflow cannot open this kind of store"),
    (
        ("Connection refused", "Failed to establish a new connection"),
        "connection refused: no server listens there",
    ),
    (
        ("Name or service not known", "nodename nor servname", "name resolution"),
        "the host name does not resolve",
    ),
    (("timed out", "Timeout"), "the server did not answer in time"),
)


def _cause(exc: BaseException) -> str:
    text = str(exc)
    for needles, cause in _HTTP_CAUSES:
        if any(n in text for n in needles):
            return cause
    return f"{type(exc).__name__}: {_first_line(exc)}"


def check_store(uri: str) -> None:
    """Open the tracking store as logging will, before training: a one-line error if it cannot be used."""
    from urllib.parse import urlparse

    mlflow = _mlflow()
    scheme = urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        fix = "start the server (`mlflow server --backend-store-uri sqlite:///mlflow.db`) or fix MLFLOW_TRACKING_URI"
    elif scheme.startswith(("sqlite", "postgresql", "mysql", "mssql")):
        fix = "check that the database's folder exists and is writable"
        if importlib.util.find_spec("alembic") is None:  # mlflow-skinny: no SQLAlchemy stores, no migrations
            fix = "install full MLflow (`pip install 'cxrtl[mlflow]'`; mlflow-skinny cannot open database stores)"
    elif scheme in ("", "file"):
        fix = "check that the folder exists and is writable, or set MLFLOW_TRACKING_URI to another store"
    else:
        fix = (
            "use a folder, sqlite:///FILE.db or http://HOST:PORT, or unset MLFLOW_TRACKING_URI for OUT/mlruns"
        )
    if not logging.getLogger().isEnabledFor(logging.DEBUG):  # without -v: no "Updating database tables"
        for name in ("mlflow.store.db.utils", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with _http_defaults(CHECK_HTTP):
            client = mlflow.MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
            if scheme not in ("", "file"):
                # the model registry store is what mlflow-skinny cannot open for a database URI
                client.search_registered_models(max_results=1)
    except Exception as exc:
        if not _from_store(exc):
            raise
        if "maintenance mode" in str(exc):
            fix = "set MLFLOW_ALLOW_FILE_STORE=true, or use sqlite:///mlflow.db (MLflow's recommended store)"
        raise CxrtlError(f"cannot use the MLflow tracking store {uri} ({_cause(exc)}); {fix}") from None


def tracking_uri(out: str | os.PathLike) -> str:
    """``MLFLOW_TRACKING_URI``, or the local file store ``<out>/mlruns``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (Path(out).resolve() / "mlruns").as_uri()


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:6000]
    return out


def _history(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def _tags(run_dir: Path, config: dict, extra: dict[str, str]) -> dict[str, str]:
    """Tags: dataset folder name, seed, synthetic (marker beside the data), init (random/imagenet/transfer)."""
    from .inference.card_facts import SYNTH_MARKER

    data = Path(str(config.get("data") or ""))
    synthetic = any((p / SYNTH_MARKER).is_file() for p in (data, data.parent)) if config.get("data") else None
    init = str(config.get("init") or "imagenet")
    return {
        "dataset": data.name or "unknown",
        "seed": str(config.get("seed")),
        "synthetic": "unknown" if synthetic is None else str(synthetic).lower(),
        "init": {"none": "random", "imagenet": "imagenet"}.get(init, "transfer"),
        "run_dir": str(run_dir),
        **extra,
    }


def _test_metrics(m: dict) -> dict[str, float]:
    values = {
        "test_accuracy": m.get("accuracy"),
        "test_macro_f1": (m.get("macro") or {}).get("f1"),
        "test_weighted_f1": (m.get("weighted") or {}).get("f1"),
        "test_macro_auc": m.get("roc_auc_macro"),
        "test_ece": m.get("ece"),
    }
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}


def _card(run_dir: Path, tmp: Path) -> Path | None:
    """The run's model card (as a bundle would carry it), or None when it cannot be made."""
    from .inference.card import render_card
    from .inference.card_facts import gather_facts

    if not (run_dir / "best.json").is_file():
        return None
    stage = tmp / "card"
    stage.mkdir(exist_ok=True)
    from .decisions import record_files

    for path in [run_dir / "best.json", *record_files(run_dir / "best.safetensors")]:
        if path.is_file():
            (stage / path.name).write_bytes(path.read_bytes())
    metrics = run_dir / "test" / "metrics.json"
    if metrics.is_file():
        (stage / "metrics.json").write_bytes(metrics.read_bytes())
    card = tmp / "MODEL_CARD.md"
    card.write_text(render_card(gather_facts(run_dir, stage, leakage_check=False)))
    return card


def log_run(
    mlflow, run_dir: Path, name: str, extra_tags: dict[str, str] | None = None, nested: bool = False
) -> str:
    """One training run (config, history, test metrics, artifacts) as an MLflow run; returns its id."""
    summary = (
        read_json(run_dir / "summary.json", "run summary") if (run_dir / "summary.json").is_file() else {}
    )
    config = summary.get("config") or {}
    with mlflow.start_run(run_name=name, nested=nested) as active:
        mlflow.set_tags(_tags(run_dir, config, extra_tags or {}))
        mlflow.log_params(_flatten(config))
        for row in _history(run_dir / "history.csv"):
            step = int(row.pop("epoch", 0))
            mlflow.log_metrics(row, step=step)
        metrics_file = run_dir / "test" / "metrics.json"
        if metrics_file.is_file():
            mlflow.log_metrics(_test_metrics(read_json(metrics_file, "metrics")))
        _log_files(mlflow, [run_dir / "history.csv", run_dir / "summary.json", metrics_file])
        _log_files(mlflow, sorted((run_dir / "test").glob("*.png")), "figures")
        with tempfile.TemporaryDirectory(prefix="cxrtl-track-") as tmp:
            card = _card(run_dir, Path(tmp))
            _log_files(mlflow, [card] if card else [])
        return active.info.run_id


def _log_files(mlflow, paths: Iterable[Path], folder: str | None = None) -> None:
    for p in paths:
        if p.is_file():
            mlflow.log_artifact(str(p), artifact_path=folder)


@contextmanager
def _after_the_work(what: Path, uri: str, again: str) -> Iterator[list[bool]]:
    """Around logging a finished run: a store failure is a warning (the run directory is complete), not an error.

    Yields a one-element list that holds False when logging failed.
    """
    ok = [True]
    try:
        with _http_defaults(HTTP_DEFAULTS):
            yield ok
    except Exception as exc:
        if not _from_store(exc):
            raise  # a bug in cxrtl, not the store: surface it
        ok[0] = False
        mlflow = _mlflow()
        for _ in range(10):  # a half-logged run (and its parent) must not stay active in this process
            if mlflow.active_run() is None:
                break
            try:
                mlflow.end_run("FAILED")  # pops the run, then tells the store, which may fail again
            except Exception:
                pass
        log.warning(
            "could not log %s to MLflow at %s (%s); the run directory is complete, nothing is lost; %s",
            what,
            uri,
            _cause(exc),
            again,
        )


def track_train(run_dir: str | os.PathLike, kind: str = "mlflow") -> str | None:
    """Log one finished ``cxrtl train`` run; returns the tracking URI, or None (with a warning) on failure."""
    mlflow = _mlflow()
    run_dir = Path(run_dir)
    uri = tracking_uri(run_dir)
    again = (
        "once the store is back, log it with "
        f"`python -c \"from cxrtl.tracking import track_train; track_train('{run_dir}')\"`"
    )
    with _after_the_work(run_dir, uri, again) as ok:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(EXPERIMENT)
        log_run(mlflow, run_dir, run_dir.name)
    return uri if ok[0] else None


def track_reproduction(out: str | os.PathLike, result: dict[str, Any], kind: str = "mlflow") -> str | None:
    """Log a reproduction: a parent run (its identity and report.html) with one child per training run.

    Returns the tracking URI, or None (with a warning) when the store failed.
    """
    mlflow = _mlflow()
    out = Path(out)
    uri = tracking_uri(out)
    meta = result.get("reproduction") or {}
    with _after_the_work(
        out, uri, "each run's folder can be logged with cxrtl.tracking.track_train(RUN_DIR)"
    ) as ok:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(EXPERIMENT)
        with mlflow.start_run(run_name=f"reproduce {out.name}"):
            mlflow.set_tags({"kind": "reproduction", "synthetic": str(bool(meta.get("synthetic"))).lower()})
            mlflow.log_params(_flatten({k: v for k, v in meta.items() if not isinstance(v, (list, dict))}))
            for r in result.get("runs", []):
                tags = {"experiment": ",".join(map(str, r.get("experiment") or [])), "kind": "training"}
                log_run(mlflow, Path(r["run_dir"]), r["name"], tags, nested=True)
            report = (result.get("report") or {}).get("html")
            _log_files(mlflow, [Path(report)] if report else [])
    return uri if ok[0] else None


def check_tracker(kind: str | None) -> None:
    """Fail before training, not after: an unknown tracker, a missing extra, or a store that cannot be used.

    The default store (``OUT/mlruns``) is a folder training itself creates; a ``MLFLOW_TRACKING_URI`` is opened
    now (a server asked once, without retries), so that a bad one costs a second, not a training run.
    """
    if kind is None:
        return
    if kind not in TRACKERS:
        raise CxrtlError(f"unknown tracker {kind!r}; use --track mlflow")
    _mlflow()
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        check_store(uri)
