"""Training throughput: cxrtl's trainer step over a grid of settings vs the authors' plain loop.

Settings: fp32 / bf16 autocast x NCHW / channels_last (each a flag), at batch 16 (the paper's) and 64, all
with the same cudnn.benchmark setting, the reference included. For each (batch, setting) both loops train
the same model (same initial weights) with NAdam + cross-entropy on the same images; after at least 5
warm-up steps each, the two loops are timed interleaved (``benchmarks/_timing.py``: K samples each, every
sample at least 0.5 s of steps, synchronised on a GPU), so machine noise hits both alike; medians are kept.
Peak GPU memory is reset for each setting. The reference is the
notebook's loop: float32 NCHW batches already normalised on the CPU, per-step ``.item()`` bookkeeping.
cxrtl's step is ``engine.train_one_epoch`` on uint8 batches normalised on the device. On CPU only fp32
NCHW at batch 16 runs by default (CPU bf16 is emulated and slower; ask with --precision/--memory-format);
a child process then measures peak RSS of cxrtl training on CPU at 224 px, batch 16.

Last line: ``train step speedup: <X>x``: cxrtl at the device's default setting (bf16 + channels_last on a
GPU with native bf16, fp32 NCHW on CPU), batch 16: the reference's median step time over cxrtl's.

    python benchmarks/train_step.py                       # CPU: densenet121 at 128 px, ~1-2 min
    python benchmarks/train_step.py --device cuda         # GPU grid: 224 px, batch 16 and 64, 10 samples
    python benchmarks/train_step.py --device cuda --precision bf16 --memory-format channels_last --compile
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import Bench, interleaved, positive, ratio, ratio_note  # noqa: E402

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


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
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)

    def stepper(fn, batches):
        state = {"i": 0}

        def op() -> None:
            state["i"] = (state["i"] + 1) % len(batches)
            fn(batches[state["i"]])
            if cuda:
                torch.cuda.synchronize(device)

        return op

    t = interleaved(
        {
            "reference": stepper(
                lambda b: reference_step(ref_model, b, criterion, ref_opt, device), ref_batches
            ),
            "cxrtl": stepper(
                lambda b: train_one_epoch(net, [b], loss_fn, our_opt, pp, device, numerics), our_batches
            ),
        },
        samples=args.iters,
        warmup=args.warmup,
    )
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else float("nan")
    return {
        "batch": batch,
        "setting": f"{precision} {fmt}",
        "ours": batch / t["cxrtl"].median,
        "ref": batch / t["reference"].median,
        "peak": peak,
        "timings": t,
    }


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
    a(
        "--iters",
        type=positive,
        default=None,
        help="interleaved samples per loop and cell (default 10 CUDA, 5 CPU)",
    )
    a("--warmup", type=int, default=5, help="untimed steps of each loop first (at least 5)")
    a("--compile", action="store_true", help="torch.compile cxrtl's model")
    a("--memory-image-size", type=int, default=224)
    a("--memory-batch-size", type=int, default=16)
    a("--memory-steps", type=int, default=3)
    a("--no-memory", action="store_true", help="skip the CPU peak-memory measurement")
    a("--_memory-child", action="store_true", help=argparse.SUPPRESS)
    Bench.add_arguments(p)
    args = p.parse_args(argv)
    if args.warmup < 5:
        p.error("--warmup must be at least 5: the first steps allocate and autotune")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._memory_child:
        print(json.dumps(measure_memory(args)))
        return 0
    bench = Bench("train_step")
    bench.start(args.threads)

    from cxrtl.device import resolve_device, resolve_numerics
    from cxrtl.transfer import create_model

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    size = args.image_size or (224 if cuda else 128)
    args.iters = args.iters or (10 if cuda else 5)
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    threads = "" if cuda else f", {torch.get_num_threads()} torch threads"
    print(f"device: {device}{threads}; cudnn.benchmark {args.cudnn_benchmark}")
    print(
        f"model: {args.backbone}, {size} px, {args.warmup} warm-up steps + {args.iters} interleaved samples "
        "(>= 0.5 s of steps each) per loop and cell"
    )
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
    for r in rows:
        bench.timings(r["timings"], prefix=f"batch{r['batch']} {r['setting']} ")
    t = pick[0]["timings"]
    print(f"headline: cxrtl {pick[0]['setting']} at batch {pick[0]['batch']} vs the reference loop")
    return bench.headline(
        "train step speedup", ratio(t["reference"], t["cxrtl"]), ratio_note(t["reference"], t["cxrtl"])
    )


if __name__ == "__main__":
    sys.exit(main())
