"""cxrtl in one screen, through the public API only: data -> split -> train -> evaluate -> predict.

    python examples/quickstart.py [WORKDIR]

It synthesises a tiny COVID-19-Radiography-like set (no download, no network), trains DenseNet-121 from
random weights for one epoch at 32 px on the CPU, evaluates it on its test split and predicts two images.
The numbers mean nothing (synthetic data, one epoch); the calls are the ones a real study makes.
Runs in well under a minute on a 2-core CPU.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import cxrtl


def main(workdir: Path) -> dict:
    # 1. Data: a dataset root in the real Kaggle layout, indexed into records, split by a seed.
    covid_root, _ = cxrtl.synthesize(
        workdir / "data", count=48, kermany_count=8, image_size=64, mask_size=64, workers=1, progress=False
    )
    index = cxrtl.load_dataset(covid_root)
    split = cxrtl.make_split(index, seed=2022)
    print("classes:", index.classes, "| split sizes:", {name: len(rows) for name, rows in split.items()})

    # 2. Train: the paper's model and loss, shrunk to one epoch of 32 px images from random weights.
    config = cxrtl.TrainConfig(
        data=str(covid_root),
        out=str(workdir / "run"),
        init="none",
        loss="wce-1cf",
        image_size=32,
        epochs=1,
        batch_size=8,
        device="cpu",
        progress=False,
        cache_dir=str(workdir / "cache"),
    )
    summary = cxrtl.train(config)
    print(f"best epoch {summary['best_epoch']}, validation accuracy {summary['best_val_acc']:.3f}")

    # 3. Evaluate on the run's own test split; out=None returns the metrics without writing files.
    metrics = cxrtl.evaluate(
        summary["run_dir"],
        covid_root,
        out=None,
        device="cpu",
        progress=False,
        cache_dir=str(workdir / "cache"),
        n_boot=0,
    )
    print(
        f"test accuracy {metrics['accuracy']:.3f} on {metrics['n']} images, macro F1 {metrics['macro']['f1']:.3f}"
    )

    # 4. Predict new images: the checkpoint carries its classes and preprocessing.
    predictor = cxrtl.Predictor.from_checkpoint(summary["run_dir"], device="cpu")
    images = [str(index.abspath(r.path)) for r in split["test"][:2]]
    probabilities = predictor.predict_proba(images)
    for image, row in zip(images, probabilities):
        print(Path(image).name, "->", predictor.classes[int(row.argmax())], f"(p = {row.max():.2f})")
    return {
        "summary": summary,
        "metrics": metrics,
        "probabilities": probabilities,
        "classes": predictor.classes,
    }


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory(prefix="cxrtl-quickstart-") as tmp:
            main(Path(tmp))
