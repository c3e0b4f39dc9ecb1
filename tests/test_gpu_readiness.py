"""GPU readiness (issue 16): each fault of the GPU paths shown on a CPU where it shows there.

The tests marked ``gpu`` need CUDA and are skipped without it (see conftest); benchmarks/GPU.md runs them.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cxrtl.config import TrainConfig
from cxrtl.data import preprocess
from cxrtl.data.preprocess import Preprocess, normalize_batch
from cxrtl.device import Numerics, resolve_device, resolve_numerics
from cxrtl.errors import CxrtlError
from cxrtl.training import distributed as ddp
from cxrtl.training.engine import fit, make_loader, predict_logits, train_one_epoch
from cxrtl.training.optim import Warmup, resolve_warmup
from cxrtl.training.resume import read_state, restore_state, write_state
from cxrtl.transfer import create_model
from helpers import ToyData as Toy

TINY = "test_resnet"
CLASSES = ["a", "b", "c"]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _cfg(**kw) -> TrainConfig:
    base = {
        "backbone": TINY,
        "init": "none",
        "image_size": 32,
        "epochs": 2,
        "batch_size": 16,
        "milestones": [2],
        "progress": False,
        "device": "cpu",
        "seed": 7,
    }
    return TrainConfig(**{**base, **kw})


def _model(seed: int = 7):
    torch.manual_seed(seed)
    return create_model(TINY, CLASSES, 3, init="none")


def _by_hand(images: torch.Tensor) -> torch.Tensor:
    """Reference normalisation: torchvision's, on [0,1] pseudo-RGB."""
    from torchvision.transforms.functional import normalize

    return normalize(images.float().div(255).expand(-1, 3, -1, -1), IMAGENET_MEAN, IMAGENET_STD)


# ----------------------------------------------------------------------------- 2. fp32 head under bf16
def test_logits_stay_fp32_under_bf16_autocast():
    model = _model().eval()
    x = _by_hand(Toy(4, 0).x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        features = model.backbone(x)
        bf16_head = model.head(features)  # what the head returned before: rounded to bf16
    lin1, _, lin2 = model.head
    with torch.no_grad():  # the head by hand, in fp32 on the same features
        want = F.linear(F.mish(F.linear(features.float(), lin1.weight, lin1.bias)), lin2.weight, lin2.bias)
    assert logits.dtype == torch.float32 and bf16_head.dtype == torch.bfloat16
    assert torch.equal(logits, want)
    assert not torch.equal(bf16_head.float(), want)  # the rounding the fix removes is real


# ----------------------------------------------------------------------------- 4. no per-batch tensors
def test_normalize_batch_makes_its_mean_and_std_once(monkeypatch):
    made = []
    real = torch.tensor

    def counting(*args, **kwargs):
        made.append(args[0] if args else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(preprocess, "_STATS", {})
    monkeypatch.setattr(torch, "tensor", counting)
    images = Toy(8, 0).x
    for _ in range(5):
        x = normalize_batch(images, Preprocess(image_size=32))
    assert len(made) == 2  # mean and std once, not 2 per batch
    torch.testing.assert_close(x, _by_hand(images), rtol=0, atol=1e-6)
    one = normalize_batch(images, Preprocess(channels=1, image_size=32))
    torch.testing.assert_close(one, (images.float() / 255 - 0.485) / 0.229, rtol=0, atol=1e-6)
    assert len(made) == 4  # a new (device, channels) pair gets its own pair, once


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("memory_format", [None, torch.channels_last])
@pytest.mark.parametrize("slice_bytes", [1, 3 * 32 * 32 * 4 * 2, 1 << 30])  # 1 image, 2 images, whole batch
def test_normalize_batch_in_place_gives_the_same_bits_as_the_plain_expression(
    channels, memory_format, slice_bytes, monkeypatch
):
    """Worked in place, a slice at a time: the values must stay those the checkpoints were trained on."""
    monkeypatch.setattr(preprocess, "_CPU_SLICE_BYTES", slice_bytes)
    images = torch.randint(
        0, 256, (5, 1, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    x = images.float() / 255.0
    mean = torch.tensor(preprocess.IMAGENET_MEAN[:channels]).view(1, -1, 1, 1)
    std = torch.tensor(preprocess.IMAGENET_STD[:channels]).view(1, -1, 1, 1)
    want = (x.expand(-1, channels, -1, -1) - mean) / std
    got = normalize_batch(images, Preprocess(channels=channels, image_size=32), "cpu", memory_format)
    assert torch.equal(got, want)
    assert got.is_contiguous(memory_format=memory_format or torch.contiguous_format)
    assert torch.equal(normalize_batch(images[:, 0], Preprocess(channels=channels, image_size=32)), want)
    rgb = images.expand(-1, 3, -1, -1).contiguous()  # a batch that is already 3-channel
    mean3 = torch.tensor(preprocess.IMAGENET_MEAN).view(1, -1, 1, 1)
    std3 = torch.tensor(preprocess.IMAGENET_STD).view(1, -1, 1, 1)
    want3 = (rgb.float() / 255.0 - mean3) / std3
    assert torch.equal(normalize_batch(rgb, Preprocess(channels=3, image_size=32)), want3)


# ----------------------------------------------------------------------------- 3. resume strides
def test_resume_gives_optimizer_state_its_parameters_strides(tmp_path):
    cfg = _cfg(channels_last=True)
    model = _model().to(memory_format=torch.channels_last)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [2])
    pp, loader = Preprocess(image_size=32), DataLoader(Toy(16, 0), batch_size=8)
    train_one_epoch(model, loader, torch.nn.CrossEntropyLoss(), opt, pp, torch.device("cpu"))
    write_state(tmp_path / "state.safetensors", model, opt, sched, {**_info(cfg)})

    fresh = _model(1).to(memory_format=torch.channels_last)
    fresh_opt = torch.optim.NAdam(fresh.parameters(), lr=1e-3)
    fresh_sched = torch.optim.lr_scheduler.MultiStepLR(fresh_opt, [2])
    restore_state(read_state(tmp_path / "state.safetensors"), fresh, fresh_opt, fresh_sched)
    pairs = [(p, fresh_opt.state[p]) for p in fresh.parameters()]
    assert any(p.stride() != p.contiguous().stride() for p, _ in pairs)  # channels_last does bite here
    for (p, st), q in zip(pairs, model.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert st[key].stride() == p.stride(), key
            assert torch.equal(st[key], opt.state[q][key])


def _info(cfg: TrainConfig) -> dict:
    from cxrtl.training.resume import FitState

    return FitState(epoch=1, history=[]).to_info(cfg, CLASSES)


# ----------------------------------------------------------------------------- 5. precision auto
@pytest.mark.parametrize(
    ("capability", "amp"),
    [((7, 0), None), ((7, 5), None), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)],
)
def test_auto_precision_is_fp32_on_gpus_that_emulate_bf16(monkeypatch, capability, amp):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    got = resolve_numerics(torch.device("cuda"), "auto")
    assert got.amp_dtype == amp and got.memory_format == torch.channels_last
    assert resolve_numerics(torch.device("cuda"), "fp32").amp_dtype is None
    assert resolve_numerics(torch.device("cpu"), "auto") == Numerics()


# ----------------------------------------------------------------------------- 1. timeout, per-node cache
def test_process_group_gets_a_long_timeout(monkeypatch):
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(ddp.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(ddp.dist, "init_process_group", lambda **kw: seen.update(kw))
    ddp.setup("cpu")
    assert seen["backend"] == "gloo" and seen["timeout"].total_seconds() >= 3600
    monkeypatch.setenv(ddp.TIMEOUT_ENV, "90")
    ddp.setup("cpu")
    assert seen["timeout"].total_seconds() == 90
    monkeypatch.setenv(ddp.TIMEOUT_ENV, "soon")
    with pytest.raises(CxrtlError, match="CXRTL_DIST_TIMEOUT_S"):
        ddp.setup("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(rank: int, port: int, out: str) -> None:
    """One of two gloo processes: node_first in three layouts, then fit with and without the DDP options."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    result: dict = {}
    try:
        built = os.path.join(out, "built")

        def build_or_read():  # the "cache": local rank 0 writes it, the others must find it written
            if not os.path.exists(built):
                open(built, "w").close()
                return "built"
            return "read"

        one_node = ddp.DistInfo(rank, 2, local_rank=rank)
        result["one_node"] = ddp.node_first(build_or_read, one_node, "cpu", "build")
        dist.barrier()
        if rank == 0:
            os.remove(built)
        dist.barrier()
        two_nodes = ddp.DistInfo(rank, 2, local_rank=0)
        result["two_nodes_calls"] = ddp.node_first(lambda: 1, two_nodes, "cpu", "build")

        def broken():
            raise CxrtlError("disk full; free space")

        try:
            ddp.node_first(broken, one_node, "cpu", "build the cache")
        except CxrtlError as exc:
            result["error"] = str(exc)

        histories, new_options = {}, dict(ddp.DDP_OPTIONS)
        for name, options in (("new", new_options), ("old", {"broadcast_buffers": True})):
            ddp.DDP_OPTIONS.clear()
            ddp.DDP_OPTIONS.update(options)
            cfg = _cfg()
            data = {"train": Toy(50, 0), "val": Toy(21, 1)}
            summary = fit(
                _model(), data, cfg, None, info=ddp.DistInfo(rank, 2, rank), device=torch.device("cpu")
            )
            histories[name] = [{k: v for k, v in row.items() if k != "seconds"} for row in summary["history"]]
        result["histories"] = histories
        ddp.DDP_OPTIONS.clear()
        ddp.DDP_OPTIONS.update(new_options)
        net, _ = ddp.wrap_model(_model(), ddp.DistInfo(rank, 2, rank), torch.device("cpu"))
        result["ddp_options"] = [net.broadcast_buffers, net.gradient_as_bucket_view]
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_two_ranks, args=(_free_port(), str(out)), nprocs=2, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cache_is_built_once_per_node_and_errors_stop_every_rank(two_ranks):
    assert [r["one_node"] for r in two_ranks] == ["built", "read"]  # local rank 1 waited for local rank 0
    assert [r["two_nodes_calls"] for r in two_ranks] == [1, 1]  # each node's first process built its own
    assert two_ranks[0]["error"] == "disk full; free space"
    assert "could not build the cache" in two_ranks[1]["error"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_without_per_forward_buffer_broadcast_keeps_the_history(two_ranks):
    new, old = two_ranks[0]["histories"]["new"], two_ranks[0]["histories"]["old"]
    assert len(new) == 2 and new == old  # the explicit broadcast before evaluation is what matters
    assert two_ranks[1]["histories"] == two_ranks[0]["histories"]  # every rank reports the same numbers
    assert [r["ddp_options"] for r in two_ranks] == [[False, True]] * 2


# ----------------------------------------------------------------------------- 7. one compiled graph
def test_compile_builds_one_graph_for_training_and_none_for_evaluation(monkeypatch):
    graphs = []

    def counting_backend(gm, example_inputs):  # a real dynamo trace, run eagerly: counts (re)compiles
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counting_backend))
    cfg = _cfg(compile=True)
    summary = fit(_model(), {"train": Toy(50, 0), "val": Toy(21, 1)}, cfg, None)  # 50 = 3 x 16 + 2
    assert summary["epochs_completed"] == 2 and len(graphs) == 1
    torch._dynamo.reset()


def test_full_batches_only_where_asked():
    sizes = [len(y) for _, y in make_loader(Toy(50, 0), 16, train=True, seed=0, info=ddp.DistInfo())]
    assert sizes == [16, 16, 16, 2]
    full = make_loader(Toy(50, 0), 16, train=True, seed=0, info=ddp.DistInfo(), full_batches=True)
    assert [len(y) for _, y in full] == [16, 16, 16]
    tiny = make_loader(Toy(10, 0), 16, train=True, seed=0, info=ddp.DistInfo(), full_batches=True)
    assert [len(y) for _, y in tiny] == [10]  # fewer images than a batch: train on them, not on nothing


# ----------------------------------------------------------------------------- 8. warm-up
def test_warmup_ramps_the_learning_rate_then_gives_the_schedule_back():
    model = _model()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(o.param_groups[0]["lr"]))
    loader = DataLoader(Toy(64, 0), batch_size=16)  # 4 steps an epoch
    args = (model, loader, torch.nn.CrossEntropyLoss(), opt, Preprocess(image_size=32), torch.device("cpu"))
    train_one_epoch(*args, warmup=Warmup(6), first_step=0)
    train_one_epoch(*args, warmup=Warmup(6), first_step=4)
    want = [1e-3 / 6, 2e-3 / 6, 3e-3 / 6, 4e-3 / 6, 5e-3 / 6, 1e-3, 1e-3, 1e-3]
    assert seen == pytest.approx(want, rel=1e-12)
    assert opt.param_groups[0]["lr"] == 1e-3


def test_warmup_defaults_to_none_alone_and_a_few_hundred_steps_under_ddp():
    assert resolve_warmup(_cfg(), 1, 1000).steps == 0  # the paper's single-GPU setting is unchanged
    assert resolve_warmup(_cfg(), 8, 1000).steps == 200
    assert resolve_warmup(_cfg(), 8, 30).steps == 30  # at most the first epoch
    assert resolve_warmup(_cfg(warmup_steps=0), 8, 1000).steps == 0
    assert resolve_warmup(_cfg(warmup_steps=50), 1, 1000).steps == 50
    with pytest.raises(CxrtlError, match="warmup-steps"):
        _cfg(warmup_steps=-1).validate()


# ----------------------------------------------------------------------------- 9. tests stay on the CPU
def test_auto_device_is_the_cpu_in_tests_even_with_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cpu")  # conftest sets CXRTL_DEVICE=cpu
    monkeypatch.setenv("CXRTL_DEVICE", "gpu0")
    with pytest.raises(CxrtlError, match="CXRTL_DEVICE='gpu0' is not a device"):
        resolve_device("auto")


# ----------------------------------------------------------------------------- 10. caller's model untouched
def test_predict_logits_leaves_the_callers_model_as_it_was():
    model = _model().train()
    strides = [p.stride() for p in model.parameters()]
    ds = Toy(6, 2)
    logits, labels = predict_logits(
        model, ds, Preprocess(image_size=32), "cpu", numerics=Numerics(memory_format=torch.channels_last)
    )
    assert model.training and [p.stride() for p in model.parameters()] == strides
    with torch.no_grad():
        want = model.eval()(_by_hand(ds.x)).numpy()
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels, ds.labels)


# ----------------------------------------------------------------------------- on a GPU only
@pytest.mark.gpu
def test_cuda_training_loop_has_no_per_batch_syncs():
    device = torch.device("cuda")
    model = _model().to(device, memory_format=torch.channels_last)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    numerics = resolve_numerics(device)
    loss_fn = torch.nn.CrossEntropyLoss().to(device)

    def syncs(n_batches: int) -> int:
        loader = DataLoader(Toy(16 * n_batches, 0), batch_size=16, pin_memory=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_one_epoch(model, loader, loss_fn, opt, Preprocess(image_size=32), device, numerics)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    syncs(2)  # first steps allocate optimizer state
    assert syncs(6) == syncs(2)  # only the end-of-epoch sums sync, whatever the number of batches


@pytest.mark.gpu
def test_cuda_bf16_logits_are_fp32_and_evaluate_matches_predict(tmp_path):
    device = torch.device("cuda")
    model = _model().to(device).eval()
    ds = Toy(12, 3)
    bf16 = Numerics(torch.bfloat16, torch.channels_last)
    logits, _ = predict_logits(model, ds, Preprocess(image_size=32), device, numerics=bf16)
    x = normalize_batch(ds.x, Preprocess(image_size=32), device)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        assert model(x).dtype == torch.float32
    again, _ = predict_logits(model, ds, Preprocess(image_size=32), device, numerics=bf16, batch_size=5)
    np.testing.assert_allclose(logits, again, rtol=0, atol=1e-5)  # batch size does not move the logits


@pytest.mark.gpu
def test_cuda_checkpoint_loads_onto_the_gpu(tmp_path):
    from cxrtl.checkpoint import load_checkpoint, save_checkpoint

    model = _model()
    meta = {
        "backbone": TINY,
        "classes": CLASSES,
        "in_chans": 3,
        "preprocess": Preprocess(image_size=32).to_dict(),
    }
    path = save_checkpoint(tmp_path / "m", model, meta)
    loaded, _ = load_checkpoint(path, map_location="cuda")
    assert all(p.is_cuda for p in loaded.parameters())
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b.cpu()), k
