"""Lung-mask prediction on CPU at 256 px vs the classifier's own inference, in the same run.

Prints images/s of the segmenter and of the classifier (DenseNet-121, 224 px), then the overhead of
classify-with-segmenter over classify alone for one image. Untrained weights: speed does not depend on them.
Usage: PYTHONPATH=src python benchmarks/segment.py [--repeats N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    from cxrtl.data.preprocess import Preprocess
    from cxrtl.inference.backends import TorchBackend
    from cxrtl.inference.predict import Predictor
    from cxrtl.segmentation.model import DECODER_CHANNELS, DEFAULT_ENCODER, build_segmenter
    from cxrtl.segmentation.predict import Segmenter
    from cxrtl.transfer import create_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
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
    predictor = Predictor(TorchBackend(model, pp, "cpu"), ["a", "b"], pp)
    mask = np.full(gray.shape, 255, np.uint8)
    t_seg = _best(lambda: seg.predict(gray), args.repeats)
    t_cls = _best(lambda: predictor.predict([gray], [mask]), args.repeats)
    predictor.segmenter = seg
    t_both = _best(lambda: predictor.predict([gray]), args.repeats)
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"segmenter {DEFAULT_ENCODER} U-Net, 256 px: {1 / t_seg:.2f} images/s ({t_seg * 1000:.1f} ms)")
    print(f"classifier densenet121, 224 px: {1 / t_cls:.2f} images/s ({t_cls * 1000:.1f} ms)")
    print(f"classify with segmenter: {t_both * 1000:.1f} ms")
    print(f"segment overhead: {t_both / t_cls:.2f}")


if __name__ == "__main__":
    main()
