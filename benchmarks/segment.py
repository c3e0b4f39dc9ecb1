"""Lung-mask prediction on CPU at 256 px vs the classifier's own inference, in the same run.

Times, interleaved (``benchmarks/_timing.py``: samples of at least 0.5 s, min and median), one image through
the segmenter, through the classifier (DenseNet-121, 224 px, mask given) and through classify-with-segmenter.
The last line is the overhead of classify-with-segmenter over classify alone (ratio of medians; 1.0 = free).
Untrained weights: speed does not depend on them.
Usage: PYTHONPATH=src python benchmarks/segment.py [--samples N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import Bench, interleaved, positive, ratio, ratio_note  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    bench = Bench("segment")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=positive, default=5, help="interleaved samples per side (default 5)")
    Bench.add_arguments(ap)
    args = ap.parse_args(argv)
    bench.start(args.threads)

    import torch

    from cxrtl.data.preprocess import Preprocess
    from cxrtl.inference.backends import TorchBackend
    from cxrtl.inference.predict import Predictor
    from cxrtl.segmentation.model import DECODER_CHANNELS, DEFAULT_ENCODER, build_segmenter
    from cxrtl.segmentation.predict import Segmenter
    from cxrtl.transfer import create_model

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (512, 512), dtype=np.uint8)
    net = build_segmenter(DEFAULT_ENCODER, 1, False).eval()
    meta = {
        "image_size": 256,
        "in_chans": 1,
        "encoder": DEFAULT_ENCODER,
        "decoder_channels": DECODER_CHANNELS,
    }
    seg = Segmenter(net, meta, torch.device("cpu"))
    model = create_model("densenet121", ["a", "b"], 3, init="none").eval()
    pp = Preprocess("masked", 3, 224)
    backend = TorchBackend(model, pp, "cpu")
    classify = Predictor(backend, ["a", "b"], pp)
    with_segmenter = Predictor(backend, ["a", "b"], pp)
    with_segmenter.segmenter = seg
    mask = np.full(gray.shape, 255, np.uint8)
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    t = interleaved(
        {
            "segmenter": lambda: seg.predict(gray),
            "classifier": lambda: classify.predict([gray], [mask]),
            "classify with segmenter": lambda: with_segmenter.predict([gray]),
        },
        samples=args.samples,
    )
    print(f"segmenter {DEFAULT_ENCODER} U-Net, 256 px: {t['segmenter'].describe(per=1)}")
    print(f"classifier densenet121, 224 px: {t['classifier'].describe(per=1)}")
    print(f"classify with segmenter: {t['classify with segmenter'].describe(per=1)}")
    bench.timings(t)
    both, cls = t["classify with segmenter"], t["classifier"]
    return bench.headline("segment overhead", ratio(both, cls), ratio_note(both, cls), higher_is_better=False)


if __name__ == "__main__":
    sys.exit(main())
