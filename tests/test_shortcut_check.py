"""The shortcut check on synthetic Kermany-like data, whose images carry an L/R marker outside the lungs and
ship no masks: a tiny U-Net trained on the synthetic COVID set predicts the lungs, and the Grad-CAM lung
share of a tiny pneumonia classifier is then measured inside those predicted lungs, beside its chance level."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from cxrtl.cli import main


def _model_view(pp: dict):
    """torchvision's resize-shorter-side + centre crop (nearest), independent of cxrtl's own preprocessing."""
    from torchvision import transforms as T

    nearest = T.InterpolationMode.NEAREST
    return T.Compose([T.Resize(pp["resize_size"], interpolation=nearest), T.CenterCrop(pp["image_size"])])


@pytest.mark.slow
def test_cam_lung_share_is_measured_on_kermany_with_predicted_masks(
    covid_root, pneumonia_root, tmp_path, monkeypatch
):
    monkeypatch.setenv("CXRTL_CACHE_DIR", str(tmp_path / "cache"))
    seg, masks, split, run, ev = (tmp_path / n for n in ("seg", "masks", "split.csv", "run", "ev"))
    quiet = ["--no-progress"]
    argv = ["segment", "train", "--data", str(covid_root), "--out", str(seg), "--init", "none"]
    assert main(argv + ["--image-size", "64", "--epochs", "3", *quiet]) == 0
    assert (
        main(["data", "masks", str(pneumonia_root), "--segmenter", str(seg), "--out", str(masks), *quiet])
        == 0
    )
    assert main(["data", "split", str(pneumonia_root), "--out", str(split), "--masks", str(masks)]) == 0
    argv = [
        "train",
        "--data",
        str(pneumonia_root),
        "--out",
        str(run),
        "--split",
        str(split),
        "--init",
        "none",
    ]
    assert main(argv + ["--backbone", "test_resnet", "--image-size", "64", "--epochs", "2", *quiet]) == 0
    argv = ["evaluate", str(run), "--out", str(ev), "--cam-in-lungs", "--bootstrap", "50", *quiet]
    assert main(argv) == 0

    metrics = json.loads((ev / "metrics.json").read_text())
    cam = metrics["cam_in_lungs"]
    with open(split, newline="") as fh:
        rows = list(csv.DictReader(fh))
    test = [r for r in rows if r["split"] == "test"]
    assert test and all(r["mask_path"] for r in rows)  # every Kermany image got a predicted mask
    # Measured, not skipped: a 64 px input gives the classifier a spatial feature map.
    assert "skipped" not in cam and cam["feature_map"][0] >= 2
    assert cam["overall"]["n"] + cam["without_mask"] == len(test) and cam["overall"]["n"] >= 1
    assert 0 <= cam["overall"]["mean"] <= 1
    assert set(cam["per_class"]) == {"NORMAL", "PNEUMONIA"}
    # The chance level is the predicted lungs' share of the model's view, recomputed here from the mask PNGs.
    view = _model_view(metrics["source"]["preprocess"])
    shares = [float((np.asarray(view(Image.open(r["mask_path"]))) >= 128).mean()) for r in test]
    chance = cam["overall"]["mask_share"]
    assert 0 < chance < 1  # the predicted lungs leave room outside them (where the markers are)
    if cam["without_mask"] == 0:
        assert chance == pytest.approx(np.mean(shares), abs=0.03)
    assert min(shares) - 0.03 <= chance <= max(shares) + 0.03
