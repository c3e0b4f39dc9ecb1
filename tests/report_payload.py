"""A demo-like reproduction's results.json, built in a second without training: every configuration of
the three experiments (offline, so the ImageNet runs started from random weights, as in ``make demo``),
test sets of the demo's sizes (34 COVID-like, 10 pneumonia-like images), prediction files, figures and
the comparisons computed from them by the reproduction's own code."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrtl.evaluation import figures as F
from cxrtl.evaluation.metrics import compute_metrics, softmax
from cxrtl.fsutil import write_csv
from cxrtl.paper.comparisons import bootstrap_seed, comparisons
from cxrtl.paper.experiments import COVID_BEST, plan_runs
from cxrtl.paper.seeds import configurations, run_name

COVID = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
PNEU = ["NORMAL", "PNEUMONIA"]
POSITIVE = {"covid": "COVID", "pneumonia": "PNEUMONIA"}


def _test_set(dataset: str):
    classes, n = (COVID, 34) if dataset == "covid" else (PNEU, 10)
    y = np.random.default_rng(7 if dataset == "covid" else 8).integers(0, len(classes), n)
    return classes, y


def _probs(y, k: int, seed: int, strength: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return softmax(rng.normal(size=(len(y), k)) + strength * np.eye(k)[y])


def demo_like_payload(root: Path, seeds: int = 1, figures: bool = True) -> dict:
    """results.json of a demo-like reproduction in ``root`` (run dirs with predictions and figures)."""
    runs = []
    first = 2022
    for i, plan in enumerate(plan_runs((1, 2, 3))):
        classes, y = _test_set(plan.dataset)
        for j, seed in enumerate(range(first, first + seeds)):
            name = run_name(plan.name, seed, first)
            run_dir = root / "runs" / name
            # The two configurations that are the same job offline get the same predictions, as they do.
            same_as = "pneumonia-none-finetune" if plan.name == "pneumonia-imagenet-finetune" else plan.name
            key = sum(map(ord, same_as))
            probs = _probs(y, len(classes), 100 * j + key, 1.0 + 0.15 * (key % 5))
            paths = [f"{classes[c]}/img-{k:03d}.png" for k, c in enumerate(y)]
            write_csv(
                run_dir / "test" / "predictions.csv",
                ["path", "label", "pred"] + [f"prob_{c}" for c in classes],
                [
                    [p, classes[c], classes[int(np.argmax(pr))], *[f"{v:.8g}" for v in pr]]
                    for p, c, pr in zip(paths, y, probs)
                ],
            )
            test = compute_metrics(y, probs, classes, n_boot=50, seed=seed)
            if plan.dataset == "covid":
                test["cam_in_lungs"] = {
                    "overall": {"mean": 0.61, "mask_share": 0.38},
                    "per_class": {c: {"mean": 0.55 + 0.02 * k} for k, c in enumerate(classes)},
                }
            if figures and j == 0 and i in (4, 8):
                F.plot_roc(y, probs, classes, run_dir / "test" / "roc")
                F.plot_confusion(test["confusion_matrix"], classes, run_dir / "test" / "confusion")
            random_init = plan.init in ("imagenet", "none", COVID_BEST)
            init_source = "none" if plan.init in ("imagenet", "none") else "runs/covid/best.safetensors"
            runs.append(
                {
                    "name": name,
                    "configuration": plan.name,
                    "seed": seed,
                    "experiment": list(plan.experiments),
                    "dataset": plan.dataset,
                    "pretraining": plan.pretraining,
                    "protocol": "paper" if plan.dataset == "pneumonia" else None,
                    "config": {
                        **plan.to_config(),
                        "init_source": init_source,
                        "random_init": random_init,
                        "backbone": "densenet121",
                    },
                    "best_epoch": 2 + (i + j) % 3,
                    "best_val_acc": 0.5 + 0.03 * ((i * 7 + j) % 10),
                    "seconds": 60.0 + i,
                    "run_dir": str(run_dir),
                    "precision": {"train": "fp32", "eval": "fp32"},
                    "test": test,
                }
            )
    seed_list = list(range(first, first + seeds))
    return {
        "runs": runs,
        "configurations": configurations(runs, POSITIVE),
        "comparisons": comparisons(runs, (1, 2, 3), 2000, bootstrap_seed(first)),
        "segmenter": None,
        "pneumonia_masks": None,
        "reproduction": {
            "profile": "quick",
            "seed": first,
            "split_protocol": "paper",
            "exclude_overlap": False,
            "backbone": "densenet121",
            "epochs": 4,
            "image_size": 48,
            "batch_size": 16,
            "max_per_class": 70,
            "covid": {"layout": "covid19-radiography"},
            "pneumonia": {"layout": "kermany"},
            "experiments": [1, 2, 3],
            "seeds": seed_list,
            "eval_precision": "fp32",
            "conformal_alpha": 0.1,
            "seconds": 141.0,
            "covid_best": "covid-raw-3ch-wce-icf",
            "synthetic": True,
            "imagenet_unavailable": "no ImageNet weights for densenet121 offline",
            "splits": {},
        },
        "provenance": {"cxrtl": "test"},
    }
