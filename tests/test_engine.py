"""The trainer: determinism, best-epoch rule, lr rule and schedule, plain-CE validation, resume, predict."""

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cxrtl.config import TrainConfig
from cxrtl.data.preprocess import Preprocess
from cxrtl.device import resolve_device, resolve_numerics
from cxrtl.errors import CxrtlError
from cxrtl.training import engine, losses, resume
from cxrtl.training.engine import evaluate_loader, fit, predict_logits
from cxrtl.training.resume import STATE_FILE, read_state
from cxrtl.training.run_dir import HISTORY_COLUMNS
from cxrtl.transfer import create_model
from helpers import ToyData

TINY = "test_resnet"
CLASSES = ["a", "b", "c"]


def _cfg(**kw):
    base = {
        "backbone": TINY,
        "init": "none",
        "image_size": 32,
        "epochs": 3,
        "batch_size": 16,
        "milestones": [2],
        "progress": False,
        "device": "cpu",
        "seed": 7,
    }
    base.update(kw)
    return TrainConfig(**base)


def _data():
    return {"train": ToyData(50, 0), "val": ToyData(21, 1)}  # 50 % 16 = 2: a short last batch


def _model(cfg):
    torch.manual_seed(cfg.seed)
    return create_model(cfg.backbone, CLASSES, cfg.channels, init="none")


def _strip(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_same_seed_same_history_and_weights_on_cpu():
    cfg = _cfg()
    runs = []
    for _ in range(2):
        m = _model(cfg)
        runs.append((fit(m, _data(), cfg, None), m.state_dict()))
    (r1, w1), (r2, w2) = runs
    assert _strip(r1["history"]) == _strip(r2["history"])
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_lr_rule_schedule_and_history_file(tmp_path):
    cfg = _cfg(batch_size=32, epochs=4, milestones=[2, 3])
    r = fit(_model(cfg), _data(), cfg, tmp_path)
    lrs = [row["lr"] for row in r["history"]]
    assert lrs[0] == pytest.approx(32 / 1.6e4) and cfg.resolved_lr() == pytest.approx(0.002)
    np.testing.assert_allclose(lrs, [0.002, 0.002, 0.0002, 0.00002])
    with open(tmp_path / "history.csv") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == HISTORY_COLUMNS and len(rows) == 5
    assert [int(r[0]) for r in rows[1:]] == [1, 2, 3, 4]
    assert _cfg(lr=0.05).resolved_lr(world_size=4) == 0.05 and _cfg().resolved_lr(world_size=4) == 64 / 1.6e4
    for name in ("best.safetensors", "best.json", "last.safetensors", "last.json", STATE_FILE):
        assert (tmp_path / name).is_file(), name


def test_best_epoch_is_highest_val_acc_ties_to_earlier(tmp_path, monkeypatch):
    accs = iter([0.5, 0.7, 0.7, 0.6])
    monkeypatch.setattr(engine, "evaluate_loader", lambda *a, **k: (1.0, next(accs), 21))
    cfg = _cfg(epochs=4)
    r = fit(_model(cfg), _data(), cfg, tmp_path)
    assert r["best_epoch"] == 2 and r["best_val_acc"] == 0.7
    import json

    assert json.loads((tmp_path / "best.json").read_text())["epoch"] == 2
    assert json.loads((tmp_path / "last.json").read_text())["epoch"] == 4


def test_accuracy_and_val_loss_are_per_image_plain_ce():
    torch.manual_seed(0)
    model = create_model(TINY, CLASSES, 3, init="none").eval()
    ds = ToyData(21, 3)
    pp = Preprocess("raw", 3, 32)
    loader = DataLoader(ds, batch_size=8)  # 8 + 8 + 5: per-batch averaging would be wrong
    from cxrtl.training.distributed import DistInfo  # noqa: F401 (single process)

    loss, acc, n = evaluate_loader(model, loader, pp, torch.device("cpu"))
    logits, labels = predict_logits(model, ds, pp, "cpu", batch_size=5)
    assert n == 21 and logits.shape == (21, 3) and logits.dtype == np.float32
    np.testing.assert_array_equal(labels, ds.labels)
    want = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    assert loss == pytest.approx(want, rel=1e-5)
    assert acc == pytest.approx(float((logits.argmax(1) == labels).mean()))


def test_weighted_training_loss_counts_training_split_only(monkeypatch):
    seen = {}
    real = losses.create_loss

    def spy(name, labels, classes, *a):
        seen["labels"] = np.asarray(labels)
        return real(name, labels, classes, *a)

    monkeypatch.setattr(losses, "create_loss", spy)
    cfg = _cfg(epochs=1, loss="wce-1cf")
    data = _data()
    fit(_model(cfg), data, cfg, None)
    np.testing.assert_array_equal(seen["labels"], data["train"].labels)


def test_extractor_run_keeps_batchnorm_statistics():
    cfg = _cfg(epochs=1, scheme="extractor")
    from cxrtl.model import set_scheme

    m = set_scheme(_model(cfg), "extractor")
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    head = m.head[0].weight.clone()
    fit(m, _data(), cfg, None)
    after = m.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. running_mean / num_batches_tracked
    assert not torch.equal(head, m.head[0].weight)


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, monkeypatch):
    cfg = _cfg(epochs=4, milestones=[2, 3])
    full = fit(_model(cfg), _data(), cfg, tmp_path / "full")

    real_write = resume.write_state

    def crash_after_epoch_2(path, model, opt, sched, info):
        real_write(path, model, opt, sched, info)
        if info["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(resume, "write_state", crash_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        fit(_model(cfg), _data(), cfg, tmp_path / "cut")
    monkeypatch.setattr(resume, "write_state", real_write)
    tensors, saved = read_state(tmp_path / "cut" / STATE_FILE)
    assert saved["epoch"] == 2 and len(saved["history"]) == 2
    torch.manual_seed(12345)  # a different RNG state in the resuming process must not matter
    resumed = fit(
        create_model(TINY, CLASSES, 3, init="none"), _data(), cfg, tmp_path / "cut", resume=(tensors, saved)
    )
    assert _strip(resumed["history"]) == _strip(full["history"])
    assert resumed["best_epoch"] == full["best_epoch"]
    assert (tmp_path / "cut" / "history.csv").read_text().count("\n") == 5
    from safetensors.torch import load_file

    for name in ("best.safetensors", "last.safetensors"):
        a, b = load_file(tmp_path / "full" / name), load_file(tmp_path / "cut" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_state_file_is_safetensors_not_pickle(tmp_path):
    cfg = _cfg(epochs=1)
    fit(_model(cfg), _data(), cfg, tmp_path)
    head = (tmp_path / STATE_FILE).read_bytes()[:8]
    assert head[:1] != b"\x80" and head[:2] != b"PK"
    tensors, saved = read_state(tmp_path / STATE_FILE)
    assert any(k.startswith("optim.") for k in tensors) and "rng.torch" in tensors
    assert saved["scheduler"]["milestones"] == {"2": 1}


def test_empty_validation_split_and_cuda_request_are_user_errors(monkeypatch):
    cfg = _cfg(epochs=1)
    with pytest.raises(CxrtlError, match="validation"):
        fit(_model(cfg), {"train": ToyData(10, 0), "val": ToyData(0, 1)}, cfg, None)
    if not torch.cuda.is_available():
        with pytest.raises(CxrtlError, match="no CUDA"):
            resolve_device("cuda")
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(CxrtlError, match="no CUDA"):
            resolve_device("cuda:1")  # predict's copy checked this; training's let it through to a crash
    with pytest.raises(CxrtlError, match="unknown device"):
        resolve_device("cuda:x")
    cpu = resolve_numerics(torch.device("cpu"))
    assert cpu.amp_dtype is None and cpu.memory_format == torch.contiguous_format
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # an A100
    gpu = resolve_numerics(torch.device("cuda"))
    assert gpu.amp_dtype == torch.bfloat16 and gpu.memory_format == torch.channels_last


def test_tensorboard_events_written(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = _cfg(epochs=1, tensorboard=True)
    fit(_model(cfg), _data(), cfg, tmp_path)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_fit_takes_its_loss_optimizer_and_scheduler_as_objects(tmp_path):
    cfg = _cfg(epochs=3)
    model = _model(cfg)
    calls = []

    class CountingCE(torch.nn.Module):
        def forward(self, logits, target):
            calls.append(len(target))
            return F.cross_entropy(logits, target)

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    r = fit(model, _data(), cfg, tmp_path, loss_fn=CountingCE(), optimizer=opt, scheduler=sched)
    np.testing.assert_allclose([row["lr"] for row in r["history"]], [0.01, 0.005, 0.0025])
    assert sum(calls) == 3 * 50 and opt.state_dict()["param_groups"][0]["lr"] == pytest.approx(0.00125)
    model2 = _model(cfg)  # the state file holds these objects too, and restores them
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.01)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    state = resume.restore_state(read_state(tmp_path / STATE_FILE), model2, opt2, sched2)
    assert state.epoch == 3 and sched2.state_dict() == sched.state_dict()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.00125)


def test_default_optimizer_and_schedule_are_the_papers():
    from cxrtl.training.optim import create_optimizer, create_scheduler

    cfg = _cfg(batch_size=32, milestones=[2, 3], gamma=0.5)
    model = _model(cfg)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    opt = create_optimizer(cfg, model.parameters(), world_size=2)
    assert isinstance(opt, torch.optim.NAdam) and opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert opt.param_groups[0]["lr"] == pytest.approx(64 / 1.6e4)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.head.parameters()))
    sched = create_scheduler(cfg, opt)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(lrs, [0.004, 0.004, 0.002, 0.001])
