"""Interrupted work: a real `cxrtl` process is SIGKILLed mid-way, then rerun or resumed.

The final result must equal an uninterrupted run, and nothing half-written may ever be read.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import make_root

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")]

BACKBONE = "test_resnet"


def cxrtl(*args, env, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cxrtl", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` is true; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=60)
            return True
        time.sleep(0.005)
    proc.kill()
    proc.communicate()
    pytest.fail("the process never reached the point to interrupt")


@pytest.fixture
def env(tmp_path) -> dict:
    e = dict(
        os.environ,
        CXRTL_CACHE_DIR=str(tmp_path / "cache"),
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    e["PYTHONPATH"] = src + os.pathsep + e.get("PYTHONPATH", "")
    return e


def history_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_train_killed_then_resumed_equals_uninterrupted(tmp_path, env):
    root = make_root(tmp_path / "ds", per_class=10, size=40)
    args = [
        "--data",
        root,
        "--backbone",
        BACKBONE,
        "--init",
        "none",
        "--image-size",
        "32",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "0.01",
        "--milestones",
        "2",
        "--seed",
        "7",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--no-progress",
    ]
    code, _, err = finish(cxrtl("train", "--out", tmp_path / "full", *args, env=env))
    assert code == 0, err
    full = tmp_path / "full"
    assert len(history_rows(full)) == 3

    run_dir = tmp_path / "killed"
    proc = cxrtl("train", "--out", run_dir, *args, env=env)
    # kill as soon as epoch 1 is committed (its resume state written), i.e. in the middle of epoch 2
    killed = kill_when(proc, lambda: (run_dir / "state.safetensors").exists())
    assert killed, "training finished before it could be interrupted; make the run longer"
    done = history_rows(run_dir)
    assert 1 <= len(done) < 3
    # whatever the kill left behind is either complete or a hidden temporary file; never a torn checkpoint
    from cxrtl.checkpoint import load_checkpoint

    for stem in ("best", "last"):
        if (run_dir / f"{stem}.safetensors").exists():
            load_checkpoint(run_dir / f"{stem}.safetensors")

    code, _, err = finish(cxrtl("train", "--resume", run_dir, "--no-progress", env=env))
    assert code == 0, err
    assert history_rows(run_dir) == history_rows(full)
    for stem in ("best", "last"):
        a, b = tensors(full / f"{stem}.safetensors"), tensors(run_dir / f"{stem}.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{stem}:{k}")
    sa = json.loads((full / "summary.json").read_text())
    sb = json.loads((run_dir / "summary.json").read_text())
    assert sa["best_epoch"] == sb["best_epoch"] and sa["best_val_acc"] == sb["best_val_acc"]
    leftovers = [p.name for p in run_dir.iterdir() if ".tmp" in p.name]
    assert not leftovers, leftovers


def cache_dirs(base: Path) -> tuple[list[Path], list[Path]]:
    """(finished cache folders, temporary ones) under a cache base."""
    if not base.exists():
        return [], []
    found = [p for p in base.rglob("*") if p.is_dir()]
    return [p for p in found if not p.name.startswith(".")], [p for p in found if p.name.startswith(".")]


def cache_content(base: Path) -> tuple[np.ndarray, list]:
    finished, _ = cache_dirs(base)
    with_images = [p for p in finished if any(f.suffix == ".npy" for f in p.iterdir())]
    assert len(with_images) == 1, with_images
    d = with_images[0]
    images = np.load(next(f for f in d.iterdir() if f.suffix == ".npy"))
    index = json.loads((d / "index.json").read_text()) if (d / "index.json").exists() else {}
    return images, index.get("records", index.get("paths", []))


def test_data_cache_killed_then_rerun_equals_uninterrupted(tmp_path, env):
    root = make_root(tmp_path / "ds", per_class=50, size=480)
    split = tmp_path / "split.csv"
    code, _, err = finish(cxrtl("data", "split", root, "--out", split, env=env))
    assert code == 0, err
    args = ["data", "cache", root, "--split", split, "--image-size", "32", "--channels", "1"]

    ref_env = dict(env, CXRTL_CACHE_DIR=str(tmp_path / "ref-cache"))
    code, _, err = finish(cxrtl(*args, env=ref_env))
    assert code == 0, err
    ref_images, ref_index = cache_content(tmp_path / "ref-cache")

    base = tmp_path / "cache"
    proc = cxrtl(*args, env=env)
    killed = kill_when(proc, lambda: bool(cache_dirs(base)[1]))
    assert killed, "the cache was built before it could be interrupted; use more or bigger images"
    finished, temporary = cache_dirs(base)
    assert not [p for p in finished if any(f.suffix == ".npy" for f in p.iterdir())], (
        "a killed build left a cache that looks finished"
    )
    assert temporary  # the torn build is hidden under a temporary name

    code, _, err = finish(cxrtl(*args, env=env))
    assert code == 0, err
    images, index = cache_content(base)
    np.testing.assert_array_equal(images, ref_images)
    assert index == ref_index
    # a second rerun reuses the finished cache
    code, _, err = finish(cxrtl(*args, env=env))
    assert code == 0, err


class _Killed(BaseException):
    """Stands in for SIGKILL at an exact point, in-process (deterministic, unlike a timed kill)."""


def test_train_killed_before_first_commit_can_be_continued(tmp_path, monkeypatch, capsys):
    from cxrtl import cli
    from cxrtl.training import resume

    monkeypatch.setenv("CXRTL_CACHE_DIR", str(tmp_path / "cache"))
    root = make_root(tmp_path / "ds", per_class=6, size=40)
    run_dir = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(root),
        "--out",
        str(run_dir),
        "--backbone",
        BACKBONE,
        "--init",
        "none",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--no-progress",
    ]

    def killed(*a, **k):
        raise _Killed

    with monkeypatch.context() as m:
        m.setattr(resume, "write_state", killed)
        with pytest.raises(_Killed):
            cli.main(args)
    assert (run_dir / "history.csv").exists() and not (run_dir / "state.safetensors").exists()
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run_dir), "--no-progress"]) == 0 or cli.main(args) == 0, (
        capsys.readouterr().err
    )
