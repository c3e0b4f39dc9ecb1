"""Training throughput: cxrtl's trainer step over a grid of settings vs the authors' plain loop.

Settings: fp32 / bf16 autocast x NCHW / channels_last (each a flag), at batch 16 (the paper's) and 64, all
with the same cudnn.benchmark setting, the reference included. For each (batch, setting) both loops train
the same model (same initial weights) with NAdam + cross-entropy on the same images, alternating step by
step after at least 5 warm-up steps each, so machine noise hits both alike; medians of K timed steps are
kept, timed between CUDA events on a GPU. Peak GPU memory is reset for each setting. The reference is the
notebook's loop: float32 NCHW batches already normalised on the CPU, per-step ``.item()`` bookkeeping.
cxrtl's step is ``engine.train_one_epoch`` on uint8 batches normalised on the device. On CPU only fp32
NCHW at batch 16 runs by default (CPU bf16 is emulated and slower; ask with --precision/--memory-format);
a child process then measures peak RSS of cxrtl training on CPU at 224 px, batch 16.

Last line: ``train step speedup: <X>x``: cxrtl at the device's default setting (bf16 + channels_last on a
GPU with native bf16, fp32 NCHW on CPU), batch 16, over the reference's images/s.

    python benchmarks/train_step.py                       # CPU: densenet121 at 128 px, ~1-2 min
    python benchmarks/train_step.py --device cuda         # GPU grid: 224 px, batch 16 and 64, 20 steps
    python benchmarks/train_step.py --device cuda --precision bf16 --memory-format channels_last --compile
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


class _Timer:
    """Seconds of one step: CUDA events on a GPU (device time), the wall clock on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000


class _Uint8Images(Dataset):
    """What cxrtl's cache yields: (uint8 [1,S,S], label)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


class _FloatImages(Dataset):
    """What the authors' transforms yield: float32 [3,S,S] normalised with ImageNet mean/std."""

    def __init__(self, x, y):
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        self.x = ((x.float() / 255).expand(-1, 3, -1, -1) - mean) / std
        self.y = y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def reference_step(model, batch, criterion, optimizer, device) -> None:
    """One step of the notebook's training loop (fp32, NCHW)."""
    inputs, labels = batch
    inputs, labels = inputs.to(device), labels.to(device)
    optimizer.zero_grad()
    outputs = model(inputs)
    _, preds = torch.max(outputs, 1)
    loss = criterion(outputs, labels)
    loss.backward()
    optimizer.step()
    _ = loss.item() * inputs.size(0), torch.sum(preds == labels.data).item()


def measure_memory(args) -> dict:
    """Child process: cxrtl training on CPU at the memory settings -> peak RSS."""
    from cxrtl.data.preprocess import Preprocess
    from cxrtl.device import resolve_numerics
    from cxrtl.training.engine import train_one_epoch
    from cxrtl.training.losses import WeightedCrossEntropy
    from cxrtl.transfer import create_model

    torch.manual_seed(0)
    device = torch.device("cpu")
    s, b = args.memory_image_size, args.memory_batch_size
    model = create_model(args.backbone, ["a", "b", "c", "d"], 3, init="none")
    x = torch.randint(0, 256, (b * args.memory_steps, 1, s, s), dtype=torch.uint8)
    y = torch.randint(0, 4, (b * args.memory_steps,))
    loader = DataLoader(_Uint8Images(x, y), batch_size=b)
    opt = torch.optim.NAdam(model.parameters(), lr=b / 1.6e4, betas=(0.9, 0.999))
    t0 = time.perf_counter()
    train_one_epoch(
        model, loader, WeightedCrossEntropy(), opt, Preprocess("raw", 3, s), device, resolve_numerics(device)
    )
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_gb": peak_kb * 1024 / 1e9, "img_s": len(y) / seconds}


def run_setting(args, base, device, size: int, batch: int, precision: str, fmt: str) -> dict:
    """One grid cell: warm-up, then K alternating timed steps of both loops -> images/s and peak memory."""
    from cxrtl.data.preprocess import Preprocess
    from cxrtl.device import Numerics
    from cxrtl.training.engine import train_one_epoch
    from cxrtl.training.losses import WeightedCrossEntropy

    cuda = device.type == "cuda"
    numerics = Numerics(PRECISIONS[precision], FORMATS[fmt])
    ref_model = copy.deepcopy(base).to(device)
    ours = copy.deepcopy(base).to(device, memory_format=FORMATS[fmt])
    net = torch.compile(ours) if args.compile else ours
    lr = batch / 1.6e4
    ref_opt = torch.optim.NAdam(ref_model.parameters(), lr=lr, betas=(0.9, 0.999))
    our_opt = torch.optim.NAdam(ours.parameters(), lr=lr, betas=(0.9, 0.999))
    criterion, loss_fn = torch.nn.CrossEntropyLoss(), WeightedCrossEntropy().to(device)
    pp = Preprocess("raw", 3, size)
    g = torch.Generator().manual_seed(1)
    n = batch * args.iters
    x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    ref_batches = list(DataLoader(_FloatImages(x, y), batch_size=batch))
    our_batches = list(DataLoader(_Uint8Images(x, y), batch_size=batch, pin_memory=cuda))
    timer = _Timer(device)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    ref_times, our_times = [], []
    for step in range(args.warmup + args.iters):
        i = step % args.iters
        t_ref = timer(partial(reference_step, ref_model, ref_batches[i], criterion, ref_opt, device))
        t_our = timer(partial(train_one_epoch, net, [our_batches[i]], loss_fn, our_opt, pp, device, numerics))
        if step >= args.warmup:
            ref_times.append(t_ref)
            our_times.append(t_our)
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else float("nan")
    ref_rate, our_rate = batch / statistics.median(ref_times), batch / statistics.median(our_times)
    return {"batch": batch, "setting": f"{precision} {fmt}", "ours": our_rate, "ref": ref_rate, "peak": peak}


def grid(args, device: torch.device) -> list[tuple[int, str, str]]:
    """(batch, precision, memory format) cells: all given, or the defaults for the device."""
    cuda = device.type == "cuda"
    batches = args.batch_sizes or ([16, 64] if cuda else [16])
    precisions = args.precision or (["fp32", "bf16"] if cuda else ["fp32"])
    formats = args.memory_format or (["nchw", "channels_last"] if cuda else ["nchw"])
    return [(b, p, f) for b in batches for p in precisions for f in formats]


def print_table(rows: list[dict], cuda: bool) -> None:
    print(f"{'batch':>5}  {'setting':<18} {'cxrtl img/s':>11} {'ref img/s':>10} {'ratio':>6}  peak GPU GB")
    for r in rows:
        peak = f"{r['peak']:.2f}" if cuda else "-"
        print(
            f"{r['batch']:>5}  {r['setting']:<18} {r['ours']:>11.1f} {r['ref']:>10.1f} "
            f"{r['ours'] / r['ref']:>5.2f}x  {peak}"
        )


def cpu_memory(args) -> None:
    """Peak RSS of cxrtl training on CPU, measured in a child process (fresh high-water mark)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_memory-child", "--backbone", args.backbone]
    cmd += ["--memory-image-size", str(args.memory_image_size)]
    cmd += ["--memory-batch-size", str(args.memory_batch_size), "--memory-steps", str(args.memory_steps)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    mem = json.loads(out.strip().splitlines()[-1])
    verdict = "ok" if mem["peak_rss_gb"] <= 4.0 else "OVER the 4 GB goal"
    print(
        f"peak RSS training on CPU ({args.backbone}, {args.memory_image_size} px, batch "
        f"{args.memory_batch_size}, {args.memory_steps} steps): {mem['peak_rss_gb']:.2f} GB ({verdict}); "
        f"{mem['img_s']:.1f} img/s"
    )


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--backbone", default="densenet121")
    a("--device", default="auto", choices=("auto", "cpu", "cuda"))
    a("--image-size", type=int, default=None, help="default 128 on CPU, 224 on CUDA")
    a("--batch-sizes", type=int, nargs="+", default=None, help="default 16 64 on CUDA, 16 on CPU")
    a("--precision", nargs="+", choices=tuple(PRECISIONS), help="default fp32 bf16 on CUDA, fp32 on CPU")
    a("--memory-format", nargs="+", choices=tuple(FORMATS), help="default both on CUDA, nchw on CPU")
    a("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True, help="same for every cell")
    a("--iters", type=int, default=None, help="timed steps per cell (default 20 CUDA, 4 CPU)")
    a("--warmup", type=int, default=5, help="untimed steps of each loop first (at least 5)")
    a("--compile", action="store_true", help="torch.compile cxrtl's model")
    a("--memory-image-size", type=int, default=224)
    a("--memory-batch-size", type=int, default=16)
    a("--memory-steps", type=int, default=3)
    a("--no-memory", action="store_true", help="skip the CPU peak-memory measurement")
    a("--_memory-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup < 5:
        p.error("--warmup must be at least 5: the first steps allocate and autotune")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._memory_child:
        print(json.dumps(measure_memory(args)))
        return 0

    from cxrtl.device import resolve_device, resolve_numerics
    from cxrtl.transfer import create_model

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    size = args.image_size or (224 if cuda else 128)
    args.iters = args.iters or (20 if cuda else 4)
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    card = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({card}); torch {torch.__version__}; cudnn.benchmark {args.cudnn_benchmark}")
    print(f"model: {args.backbone}, {size} px, {args.warmup} warm-up + {args.iters} timed steps per cell")
    torch.manual_seed(0)
    base = create_model(args.backbone, ["a", "b", "c", "d"], 3, init="none")
    rows = [run_setting(args, base, device, size, *cell) for cell in grid(args, device)]
    print_table(rows, cuda)
    if not cuda and not args.no_memory:
        cpu_memory(args)
    default = resolve_numerics(device)
    name = f"{'bf16' if default.amp_dtype else 'fp32'} "
    name += "channels_last" if default.memory_format == torch.channels_last else "nchw"
    pick = [r for r in rows if r["setting"] == name and r["batch"] == 16] or rows[:1]
    print(f"headline: cxrtl {pick[0]['setting']} at batch {pick[0]['batch']} vs the reference loop")
    print(f"train step speedup: {pick[0]['ours'] / pick[0]['ref']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
