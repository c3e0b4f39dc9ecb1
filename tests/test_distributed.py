"""DDP: the same `cxrtl train` under torchrun with 2 CPU processes (gloo); rank 0 alone writes."""

import json
import os
import signal
import subprocess
import sys

import pytest

from cxrtl.training.distributed import DistInfo, ShardSampler, all_reduce_sum, env_info


def test_shard_sampler_covers_every_index_once():
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11))
    assert [len(ShardSampler(11, r, 3)) for r in range(3)] == [4, 4, 3]


def test_single_process_defaults(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    info = env_info()
    assert info == DistInfo(0, 1, 0) and info.is_main and not info.enabled
    assert all_reduce_sum([1.5, 2.0]) == [1.5, 2.0]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_two_cpu_processes(tmp_path, covid_root):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CXRTL_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "cxrtl",
        "train",
        "--data",
        str(covid_root),
        "--out",
        str(out),
        "--backbone",
        "test_resnet",
        "--init",
        "none",
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "5",
        "--no-progress",
        "--device",
        "cpu",
    ]
    # own session, so a hang kills torchrun AND its workers (never leave processes behind)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=280)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("torchrun with 2 processes did not finish in 280 s")
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count("best epoch") == 1  # only rank 0 reports
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["finished"]
    assert summary["config"]["lr"] == pytest.approx(2 * 5 / 1.6e4)  # lr rule on the global batch
    # 11 validation images: shards of 6 and 5 take 2 and 1 batches of 5; evaluation must not hang
    assert summary["split_sizes"]["val"] % 2 == 1
    assert (out / "history.csv").read_text().count("\n") == 3
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no stray temp files
