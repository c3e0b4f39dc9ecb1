"""Training throughput: cxrtl's trainer step vs a plain reference loop written the authors' way.

Both train the same model (same initial weights) with NAdam + cross-entropy on the same images, in one
process, alternating step by step so machine noise hits both alike. The reference is the notebook's loop:
float32 NCHW batches already normalised on the CPU, per-step ``.item()`` bookkeeping. cxrtl's step is
``engine.train_one_epoch``: uint8 batches normalised on the device, bf16 autocast + channels_last on CUDA
(fp32 NCHW on CPU). A child process then measures peak RSS of cxrtl training on CPU at 224 px, batch 16.

Last line: ``train step speedup: <X>x`` (cxrtl images/s over reference images/s).

    python benchmarks/train_step.py                       # CPU: densenet121 at 128 px, ~1-2 min
    python benchmarks/train_step.py --image-size 224 --iters 10 --rounds 3
    python benchmarks/train_step.py --device cuda         # GPU defaults: 224 px, batch 64, 20 iters
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

import torch
from torch.utils.data import DataLoader, Dataset


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def reference_epoch(model, loader, criterion, optimizer, device) -> float:
    """The notebook's training loop (fp32, NCHW); returns seconds."""
    _sync(device)
    t0 = time.perf_counter()
    model.train()
    running_loss, running_corrects = 0.0, 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        outputs = model(inputs)
        _, preds = torch.max(outputs, 1)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * inputs.size(0)
        running_corrects += torch.sum(preds == labels.data).item()
    _sync(device)
    return time.perf_counter() - t0


def cxrtl_epoch(model, loader, loss_fn, optimizer, pp, device, numerics) -> float:
    """cxrtl's trainer pass (engine.train_one_epoch); returns seconds."""
    from cxrtl.training.engine import train_one_epoch

    _sync(device)
    t0 = time.perf_counter()
    train_one_epoch(model, loader, loss_fn, optimizer, pp, device, numerics)
    _sync(device)
    return time.perf_counter() - t0


def measure_memory(args) -> dict:
    """Child process: cxrtl training on CPU at the memory settings -> peak RSS."""
    from cxrtl.data.preprocess import Preprocess
    from cxrtl.device import resolve_numerics
    from cxrtl.model import create_model
    from cxrtl.training.engine import train_one_epoch
    from cxrtl.training.losses import WeightedCrossEntropy

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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="densenet121")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--image-size", type=int, default=None, help="default 128 on CPU, 224 on CUDA")
    p.add_argument("--batch-size", type=int, default=None, help="default 16 on CPU, 64 on CUDA")
    p.add_argument("--iters", type=int, default=None, help="timed batches per round (default 4 CPU, 20 CUDA)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each loop first")
    p.add_argument("--rounds", type=int, default=2, help="passes over the timed batches (median step kept)")
    p.add_argument("--compile", action="store_true", help="torch.compile cxrtl's model")
    p.add_argument("--memory-image-size", type=int, default=224)
    p.add_argument("--memory-batch-size", type=int, default=16)
    p.add_argument("--memory-steps", type=int, default=3)
    p.add_argument("--no-memory", action="store_true", help="skip the CPU peak-memory measurement")
    p.add_argument("--_memory-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._memory_child:
        print(json.dumps(measure_memory(args)))
        return 0

    from cxrtl.data.preprocess import Preprocess
    from cxrtl.device import resolve_device, resolve_numerics
    from cxrtl.model import create_model
    from cxrtl.training.losses import WeightedCrossEntropy

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    size = args.image_size or (224 if cuda else 128)
    batch = args.batch_size or (64 if cuda else 16)
    iters = args.iters or (20 if cuda else 4)
    numerics = resolve_numerics(device)
    card = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({card}); torch {torch.__version__}")
    print(f"model: {args.backbone}, {size} px, batch {batch}, {iters} timed batches x {args.rounds} rounds")

    torch.manual_seed(0)
    base = create_model(args.backbone, ["a", "b", "c", "d"], 3, init="none")
    ref_model = copy.deepcopy(base).to(device)
    ours = copy.deepcopy(base).to(device)
    if numerics.memory_format == torch.channels_last:
        ours = ours.to(memory_format=torch.channels_last)
    our_net = torch.compile(ours) if args.compile else ours
    lr = batch / 1.6e4
    ref_opt = torch.optim.NAdam(ref_model.parameters(), lr=lr, betas=(0.9, 0.999))
    our_opt = torch.optim.NAdam(ours.parameters(), lr=lr, betas=(0.9, 0.999))
    criterion, loss_fn = torch.nn.CrossEntropyLoss(), WeightedCrossEntropy().to(device)
    pp = Preprocess("raw", 3, size)

    g = torch.Generator().manual_seed(1)
    n = batch * iters
    x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    # Batches as each loop's DataLoader would deliver them; steps alternate one by one (reference, cxrtl,
    # reference, ...) so load from other processes on the machine hits both alike; medians are kept.
    ref_batches = list(DataLoader(_FloatImages(x, y), batch_size=batch, shuffle=False))
    our_batches = list(DataLoader(_Uint8Images(x, y), batch_size=batch, shuffle=False, pin_memory=cuda))
    ref_times, our_times = [], []
    for step in range(args.warmup + iters * args.rounds):
        i = step % iters
        torch.backends.cudnn.benchmark = False  # the notebook never turned it on
        t_ref = reference_epoch(ref_model, [ref_batches[i]], criterion, ref_opt, device)
        torch.backends.cudnn.benchmark = cuda
        t_our = cxrtl_epoch(our_net, [our_batches[i]], loss_fn, our_opt, pp, device, numerics)
        if step >= args.warmup:
            ref_times.append(t_ref)
            our_times.append(t_our)
    ref_rates = [batch / t for t in ref_times]
    our_rates = [batch / t for t in our_times]
    print(f"per-step img/s, reference: {' '.join(f'{r:.1f}' for r in ref_rates)}")
    print(f"per-step img/s, cxrtl:     {' '.join(f'{r:.1f}' for r in our_rates)}")
    ref, ours_rate = statistics.median(ref_rates), statistics.median(our_rates)
    mode = (
        ("bf16 autocast" if numerics.amp_dtype is not None else "fp32")
        + (" + channels_last" if numerics.memory_format == torch.channels_last else ", NCHW")
        + (" + torch.compile" if args.compile else "")
    )
    print(f"reference loop (fp32, NCHW): {ref:.1f} img/s")
    print(f"cxrtl trainer ({mode}): {ours_rate:.1f} img/s")
    if cuda:
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 1e9:.2f} GB")

    if not args.no_memory:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--_memory-child",
            "--backbone",
            args.backbone,
            "--memory-image-size",
            str(args.memory_image_size),
            "--memory-batch-size",
            str(args.memory_batch_size),
            "--memory-steps",
            str(args.memory_steps),
        ]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        mem = json.loads(out.strip().splitlines()[-1])
        verdict = "ok" if mem["peak_rss_gb"] <= 4.0 else "OVER the 4 GB goal"
        print(
            f"peak RSS training on CPU ({args.backbone}, {args.memory_image_size} px, batch "
            f"{args.memory_batch_size}, {args.memory_steps} steps): {mem['peak_rss_gb']:.2f} GB ({verdict}); "
            f"{mem['img_s']:.1f} img/s"
        )
    print(f"train step speedup: {ours_rate / ref:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
