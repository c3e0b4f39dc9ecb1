"""Grad-CAM read with its chance level: lung share beside CAM share, coarse-map warning, full-size overlays."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from cxrtl.cli import main
from cxrtl.data.preprocess import Preprocess
from cxrtl.evaluation.cam import cam_to_original
from cxrtl.evaluation.markdown import evaluation_markdown
from cxrtl.evaluation.metrics import compute_metrics, softmax
from test_predict import make_run, radiograph, save_png


def test_cam_is_placed_back_on_the_original_geometry():
    pp = Preprocess(image_size=32)  # resize the shorter side to 37 (32 / 0.875, rounded), crop 32
    full = cam_to_original(np.ones((32, 32), np.float32), (90, 180), pp)
    assert full.shape == (90, 180)
    # the crop covers 32/37 of the short side, centred: about rows 5..82 and columns 51..129 of the original
    assert full[45, 90] == 1.0 and full[45, 55] == 1.0 and full[45, 124] == 1.0
    assert full[45, 0] == 0.0 and full[45, 179] == 0.0 and full[45, 40] == 0.0 and full[45, 140] == 0.0


def test_predict_cam_overlay_has_the_original_size_and_the_lung_share(tmp_path, capsys, caplog):
    run = make_run(tmp_path / "run", Preprocess(input="raw", channels=3, image_size=64), seed=5)
    image = save_png(tmp_path / "in" / "x.png", radiograph(72, 96, seed=1))
    mask = np.zeros((72, 96), np.uint8)
    mask[:, :48] = 255  # the left half is "lung": half of any centred crop
    save_png(tmp_path / "masks" / "x.png", mask)
    caplog.set_level(logging.WARNING)
    args = ["predict", str(run), str(image), "--cam", str(tmp_path / "cams"), "--format", "json"]
    assert main([*args, "--mask-dir", str(tmp_path / "masks"), "--no-progress"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert Image.open(row["cam"]).size == Image.open(image).size == (96, 72)
    assert abs(row["lung_share"] - 0.5) < 0.02  # the chance level; lung_fraction is None for an empty CAM
    coarse = [r.getMessage() for r in caplog.records if "feature map is only" in r.getMessage()]
    assert len(coarse) == 1 and "2x2 at 64 px" in coarse[0]


def test_report_shows_the_lung_share_beside_the_cam_share_and_the_coarse_map():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 20)
    m = compute_metrics(y, softmax(rng.normal(size=(20, 2))), ["NORMAL", "PNEUMONIA"], n_boot=0)
    m["cam_in_lungs"] = {
        "by": "true class",
        "per_class": {
            "NORMAL": {"mean": 0.188, "n": 9, "mask_share": 0.145},
            "PNEUMONIA": {"mean": 0.3, "n": 11, "mask_share": 0.15},
        },
        "overall": {"mean": 0.25, "n": 20, "mask_share": 0.148},
        "feature_map": [2, 2],
        "warning": "the feature map is only 2x2 at 64 px",
    }
    md = evaluation_markdown(m)
    assert "NORMAL 0.188 vs 0.145 lung area (n=9)" in md
    assert "Caution: the feature map is only 2x2 at 64 px" in md
    assert "CAM of the predicted class, grouped by true class" in md
    m["cam_in_lungs"]["per_class"]["NORMAL"]["ci"] = [0.1234, 0.25]
    assert "NORMAL 0.188 [0.123, 0.250] vs 0.145 lung area (n=9)" in evaluation_markdown(m)


def test_lung_share_interval_is_the_t_interval_of_the_mean():
    from scipy.stats import ttest_1samp

    from cxrtl.evaluation.metrics import mean_interval

    shares = np.random.default_rng(2).beta(2, 5, size=37)
    lo, hi = ttest_1samp(shares, 0.0).confidence_interval(0.95)
    assert mean_interval(shares) == pytest.approx([lo, hi], abs=1e-12)
    assert mean_interval([0.99, 0.97, 1.0])[1] == 1.0  # a share's interval stays within [0, 1]
    assert mean_interval([0.4]) is None
