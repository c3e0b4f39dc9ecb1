"""Exp. 3's lung-attention check: `reproduce` segments the pneumonia split with its COVID-trained U-Net (or
takes `--pneumonia-masks`) and measures Grad-CAM inside those lungs, as it does for Exp. 1."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from cxrtl.cli import main

SMALL = ["--profile", "quick", "--backbone", "test_resnet", "--epochs", "1", "--max-per-class", "0"]


def _args(covid, pneumonia, out, *extra):
    return ["reproduce", "--covid", str(covid), "--pneumonia", str(pneumonia), "--out", str(out)] + [
        *SMALL,
        "--no-progress",
        "--allow-random-init",
        *extra,
    ]


def _model_view(pp: dict):
    """torchvision's resize-shorter-side + centre crop (nearest), independent of cxrtl's own preprocessing."""
    from torchvision import transforms as T

    nearest = T.InterpolationMode.NEAREST
    return T.Compose([T.Resize(pp["resize_size"], interpolation=nearest), T.CenterCrop(pp["image_size"])])


def _files(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_exp3_measures_cam_inside_predicted_lungs(tmp_path, synth_roots, monkeypatch):
    covid, pneumonia = synth_roots
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CXRTL_CACHE_DIR", str(tmp_path / "cache"))
    before = _files(pneumonia)
    out = tmp_path / "out"
    # 64 px: the smallest size where the classifier's feature map is more than 1x1, so a CAM exists.
    argv = _args(covid, pneumonia, out, "--experiments", "3", "--image-size", "64", "--segmenter-epochs", "1")
    assert main(argv) == 0
    assert _files(pneumonia) == before  # the dataset folder is never written to
    results = json.loads((out / "results.json").read_text())
    masks = results["pneumonia_masks"]
    assert masks["source"] == "segmenter" and masks["dir"] == str((out / "pneumonia_masks").resolve())
    with open(out / "splits" / "pneumonia_masked.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and masks["written"] == len(rows)
    pp = json.loads((out / "runs" / "pneumonia-covid-finetune" / "test" / "metrics.json").read_text())
    crop = _model_view(pp["source"]["preprocess"])
    shares = {}
    for row in rows:  # one 0/255 mask per split image, at the image's own size
        image, mask = Image.open(pneumonia / row["path"]), np.asarray(Image.open(row["mask_path"]))
        assert mask.shape == image.size[::-1] and set(np.unique(mask)) <= {0, 255}
        shares[row["path"]] = float((np.asarray(crop(Image.fromarray(mask))) >= 128).mean())
    test = [row["path"] for row in rows if row["split"] == "test"]
    pneu_runs = [r for r in results["runs"] if r["dataset"] == "pneumonia"]
    assert len(pneu_runs) == 5
    test_shares, measured = [shares[p] for p in test], 0
    for r in pneu_runs:
        cam = r["test"]["cam_in_lungs"]
        # Every test image has a mask; an image whose CAM is all zero (an untrained model) has no fraction.
        assert "skipped" not in cam and cam["overall"]["n"] + cam["without_mask"] == len(test)
        if cam["overall"]["n"] == 0:
            continue
        measured += 1
        assert 0 <= cam["overall"]["mean"] <= 1
        # The chance level is the predicted masks' share of the model's view (resize, centre crop).
        share = cam["overall"]["mask_share"]
        if cam["without_mask"] == 0:
            assert share == pytest.approx(np.mean(test_shares), abs=0.03)
        assert min(test_shares) - 0.03 <= share <= max(test_shares) + 0.03
    assert measured >= 1
    md = (out / "report.md").read_text()
    assert "Grad-CAM energy inside the lungs on the pneumonia set, Exp. 3" in md
    assert all(r["name"] in md.split("on the pneumonia set, Exp. 3")[1] for r in pneu_runs)
    assert "never saw a pneumonia image" in md


def test_pneumonia_masks_are_checked_before_training(tmp_path, synth_roots, capsys):
    covid, pneumonia = synth_roots
    empty = tmp_path / "masks"
    (empty / "train").mkdir(parents=True)
    out = tmp_path / "out"
    assert main(_args(covid, pneumonia, out, "--experiments", "3", "--pneumonia-masks", str(empty))) == 2
    err = capsys.readouterr().err.strip()
    assert "images have no mask in" in err and "cxrtl data masks" in err and len(err.splitlines()) == 1
    assert not (out / "runs").exists()  # nothing trained
    argv = _args(covid, pneumonia, tmp_path / "o2", "--experiments", "1,2", "--pneumonia-masks", str(empty))
    assert main(argv) == 2
    assert "--pneumonia-masks is for experiment 3" in capsys.readouterr().err
