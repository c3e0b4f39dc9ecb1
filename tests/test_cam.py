"""Grad-CAM maps, overlays and the CAM-energy fraction inside the lungs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cxrtl.cli import main
from cxrtl.data.preprocess import Preprocess, normalize_batch
from cxrtl.data.records import DatasetIndex, Record
from cxrtl.errors import CxrtlError
from cxrtl.evaluation.cam import grad_cam, lung_fraction, lung_fractions, overlay, save_overlay
from cxrtl.transfer import create_model
from test_predict import lung_mask, make_run, radiograph, save_png


class BrightnessBackbone(nn.Module):
    """Feature map = 4x4-pooled first channel; its class-0 Grad-CAM is exactly where the image is bright."""

    num_features = 1

    def forward_features(self, x):
        return nn.functional.avg_pool2d(x[:, :1], 4)

    def forward_head(self, f):
        return f.mean(dim=(2, 3))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class BrightnessModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = BrightnessBackbone()
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.head.bias.zero_()
        self.classes = ["bright", "dark"]

    def forward(self, x):
        return self.head(self.backbone(x))


def half_image(h: int, w: int, left: int, right: int) -> np.ndarray:
    img = np.full((h, w), right, dtype=np.uint8)
    img[:, : w // 2] = left
    return img


def test_grad_cam_shape_range_and_targets():
    torch.manual_seed(0)
    model = create_model("test_resnet", classes=["a", "b", "c"], in_chans=3, init="none").eval()
    pp = Preprocess(channels=3, image_size=64)
    batch = torch.from_numpy(np.stack([radiograph(64, 64, seed=i) for i in range(3)]))
    x = normalize_batch(batch, pp)
    cams, idx = grad_cam(model, x)
    assert cams.shape == (3, 64, 64) and cams.dtype == np.float32
    assert cams.min() >= 0 and cams.max() <= 1 + 1e-6
    with torch.no_grad():
        assert idx == model(x).argmax(1).tolist()
    _, idx2 = grad_cam(model, x, class_index=2)
    assert idx2 == [2, 2, 2]
    assert all(p.grad is None for p in model.parameters())  # no parameter gradients left behind


def test_cam_follows_the_evidence_and_lung_fraction():
    model = BrightnessModel().eval()
    pp = Preprocess(channels=1, image_size=32)
    x = normalize_batch(torch.from_numpy(half_image(32, 32, 250, 0)[None]), pp)
    (cam,), (idx,) = grad_cam(model, x, class_index=0)
    assert idx == 0
    left, right = half_image(32, 32, 255, 0), half_image(32, 32, 0, 255)
    assert lung_fraction(cam, left) > 0.9 and lung_fraction(cam, right) < 0.1
    assert lung_fraction(cam, left) + lung_fraction(cam, right) == pytest.approx(1.0)


def test_lung_fraction_edge_cases():
    cam = np.ones((4, 4), dtype=np.float32)
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[:, :2] = 255
    assert lung_fraction(cam, mask) == pytest.approx(0.5)
    assert lung_fraction(np.zeros((4, 4)), mask) is None
    with pytest.raises(CxrtlError, match="does not match"):
        lung_fraction(cam, np.zeros((5, 5), dtype=np.uint8))


def test_overlay_png(tmp_path):
    gray = radiograph(32, 32)
    cold = overlay(gray, np.zeros((32, 32)))
    assert cold.shape == (32, 32, 3) and (cold == gray[..., None]).all()  # no CAM: the radiograph itself
    cam = np.zeros((32, 32))
    cam[8:16, 8:16] = 1.0
    out = save_overlay(tmp_path / "o.cam.png", gray, cam)
    with Image.open(out) as im:
        assert im.mode == "RGB" and im.size == (32, 32)
        arr = np.asarray(im)
    assert not (arr[10, 10] == gray[10, 10]).all() and (arr[0, 0] == gray[0, 0]).all()
    assert [p.name for p in tmp_path.iterdir()] == ["o.cam.png"]  # no temporary left behind


def test_lung_fractions_uses_mask_geometry_of_the_image(tmp_path):
    # Image 60x80 bright on the left; its mask is stored at half size (as COVID-DB masks are 256 vs 299).
    root = tmp_path / "ds"
    save_png(root / "a.png", half_image(60, 80, 250, 0))
    save_png(root / "a_mask.png", half_image(30, 40, 255, 0))
    save_png(root / "b_mask.png", half_image(30, 40, 0, 255))
    save_png(root / "c.png", half_image(60, 80, 250, 0))
    records = [Record("a.png", "x", "a_mask.png"), Record("c.png", "x", "b_mask.png"), Record("c.png", "x")]
    index = DatasetIndex(root=root, layout="class-folders", classes=["x"], records=records)
    fr = lung_fractions(
        BrightnessModel(), index, records, Preprocess(channels=1, image_size=32), "cpu", class_index=0
    )
    assert fr[0] > 0.9 and fr[1] < 0.1 and fr[2] is None


def test_predict_cli_writes_overlays_and_lung_fractions(tmp_path, capsys):
    run = make_run(tmp_path / "run", Preprocess(input="raw", channels=3, image_size=64), seed=5)
    for sub in ("p", "q"):  # the same file name in two folders must not overwrite one overlay
        save_png(tmp_path / "in" / sub / "x.png", radiograph(72, 80, seed=len(sub)))
    save_png(tmp_path / "masks" / "x.png", lung_mask(72, 80))
    cams = tmp_path / "cams"
    rc = main(
        [
            "predict",
            str(run),
            str(tmp_path / "in"),
            "--cam",
            str(cams),
            "--mask-dir",
            str(tmp_path / "masks"),
            "--cam-class",
            "Normal",
            "--format",
            "json",
        ]
    )
    rows = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(rows) == 2
    assert sorted(Path(r["cam"]).name for r in rows) == ["x-2.cam.png", "x.cam.png"]
    for r in rows:
        assert Path(r["cam"]).is_file() and r["cam_class"] == "Normal"
        assert 0.0 <= r["lung_fraction"] <= 1.0
    assert main(["predict", str(run), str(tmp_path / "in"), "--cam", str(cams)]) == 0
    assert "lung_fraction" in capsys.readouterr().out.splitlines()[0]


def test_one_by_one_feature_map_is_refused_not_reported_as_a_flat_cam():
    """densenet121 at 48 px ends in a 1x1 map: its 'CAM' would be flat, and every lung fraction the mask area."""
    model = create_model("densenet121", classes=["a", "b"], in_chans=3, init="none").eval()
    x = normalize_batch(torch.from_numpy(np.stack([radiograph(48, 48, seed=0)])), Preprocess(image_size=48))
    with pytest.raises(CxrtlError, match="at least 2x2.*1x1 at 48 px.*--image-size") as e:
        grad_cam(model, x)
    assert "\n" not in str(e.value)
