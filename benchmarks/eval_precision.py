"""How far do CUDA evaluations drift from CPU fp32, and what does fp32 evaluation cost against bf16?

`cxrtl evaluate` (and `reproduce`) run the test pass in fp32 by default, with TF32 off, because the
paper's numbers are fp32. This benchmark evaluates one densenet121 checkpoint (224 px, random init with a
sharpened head so that probabilities spread) on a synthetic COVID-like set:

* on the CPU in fp32: the reference;
* on CUDA with ``precision="fp32"`` (cxrtl's default: TF32 off) and with ``precision="bf16"`` (autocast);
* on CUDA in fp32 with TF32 left on (PyTorch's cuDNN default), through the engine directly.

It prints the largest probability difference from the CPU reference and the argmax disagreements for each,
then the time of the bf16 test pass against the fp32 one (the baseline, same run, same machine).
Needs a CUDA GPU; on a machine without one it says so and exits 0.
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import Bench  # noqa: E402

DEVICE = os.environ.get("CXRTL_BENCH_DEVICE", "cuda")  # "cpu" only to dry-run this script without a GPU


def _probs(out: Path) -> np.ndarray:
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return np.array([[float(v) for k, v in r.items() if k.startswith("prob_")] for r in rows])


def main() -> int:
    bench = Bench("eval_precision")
    bench.start()
    import torch

    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to compare (this benchmark needs a GPU)")
        return 0
    from cxrtl.checkpoint import save_checkpoint
    from cxrtl.data import Preprocess, load_dataset, make_split, write_split_csv
    from cxrtl.data.synthetic import synthesize
    from cxrtl.evaluation.evaluate import evaluate
    from cxrtl.transfer import create_model

    tmp = Path(tempfile.mkdtemp(prefix="cxrtl-evalprec-"))
    synthesize(tmp / "data", count=int(sys.argv[1]) if len(sys.argv) > 1 else 400, seed=0)
    root = tmp / "data" / "COVID-19_Radiography_Dataset"
    run = tmp / "run"
    run.mkdir()
    index = load_dataset(root)
    write_split_csv(run / "split.csv", make_split(index, ratios=(0.1, 0.1, 0.8), seed=0))
    torch.manual_seed(0)
    model = create_model("densenet121", index.classes, in_chans=3, init="none")
    with torch.no_grad():
        for p in list(model.parameters())[-2:]:  # the last layer: logits of a few units, as a trained model's
            p.mul_(30.0)
    pp = Preprocess("raw", 3, 224)
    save_checkpoint(run / "best", model, {"preprocess": pp.to_dict(), "epoch": 1, "config": {"seed": 0}})
    kw = {"cache_dir": tmp / "cache", "progress": False, "n_boot": 0, "figures": False, "batch_size": 64}

    evaluate(run, root, out=tmp / "cpu", device="cpu", precision="fp32", **kw)
    ref = _probs(tmp / "cpu")
    evaluate(run, root, out=tmp / "warm", device=DEVICE, precision="fp32", **kw)  # warm-up, cuDNN autotune
    seconds = {}
    for prec in ("fp32", "bf16"):
        _sync()
        start = time.perf_counter()
        m = evaluate(run, root, out=tmp / prec, device=DEVICE, precision=prec, **kw)
        _sync()
        seconds[prec] = time.perf_counter() - start
        p = _probs(tmp / prec)
        flips = int(np.sum(p.argmax(1) != ref.argmax(1)))
        print(
            f"{DEVICE} {prec:5s} (source.precision={m['source']['precision']}): max |p - p_cpu| "
            f"{np.abs(p - ref).max():.2e}, argmax changed on {flips} of {len(ref)}, {seconds[prec]:.2f} s"
        )
    _tf32_drift(model, index, run, root, pp, ref, tmp)
    bench.figure("seconds", seconds)
    return bench.headline(
        "bf16 test pass vs fp32 test pass (time ratio, fp32 = 1)",
        seconds["bf16"] / seconds["fp32"],
        "one timed pass each after a warm-up pass, not interleaved samples",
        higher_is_better=False,
    )


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _tf32_drift(model, index, run, root, pp, ref, tmp) -> None:
    """fp32 with TF32 convolutions (PyTorch's default on CUDA), which cxrtl's fp32 evaluation turns off."""
    import torch

    from cxrtl.data import CachedDataset, prepare_data
    from cxrtl.device import Numerics
    from cxrtl.evaluation.metrics import softmax
    from cxrtl.training.engine import predict_logits

    data = prepare_data(
        root, pp, index=index, split_csv=run / "split.csv", cache_dir=tmp / "cache", progress=False
    )
    ds = CachedDataset(data.cache, list(data.split["test"]), {c: i for i, c in enumerate(index.classes)})
    torch.backends.cudnn.allow_tf32 = True
    logits, _ = predict_logits(model, ds, pp, device=DEVICE, batch_size=64, numerics=Numerics())
    p = softmax(np.asarray(logits, np.float64))
    print(
        f"{DEVICE} fp32 with TF32 on: max |p - p_cpu| {np.abs(p - ref).max():.2e}, "
        f"argmax changed on {int(np.sum(p.argmax(1) != ref.argmax(1)))} of {len(ref)}"
    )


if __name__ == "__main__":
    sys.exit(main())
