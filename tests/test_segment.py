"""`cxrtl segment ...`, `data masks` and `data split --masks`: what a user sees, on the synthetic sets."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from cxrtl.cli import main

pytest.importorskip("segmentation_models_pytorch")


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def random_seg(tmp_path):
    """A segmenter run dir with untrained weights (fast): enough for shapes, files and refusals."""
    from cxrtl.segmentation.model import build_segmenter, save_segmenter

    run = tmp_path / "seg"
    run.mkdir()
    model = build_segmenter(init := "tu-mobilenetv3_small_100", 1, False)
    meta = {"encoder": init, "in_chans": 1, "decoder_channels": [64, 32, 16, 8, 8], "image_size": 64}
    save_segmenter(run / "best", model, meta)
    return run


def test_predict_writes_binary_masks_at_image_size_mirroring_folders(random_seg, pneumonia_root, tmp_path):
    out = tmp_path / "masks"
    assert main(["segment", "predict", str(random_seg), str(pneumonia_root / "test"), "--out", str(out)]) == 0
    images = sorted(p for p in (pneumonia_root / "test").rglob("*.jpeg"))
    assert images
    for img in images:
        mask = out / img.relative_to(pneumonia_root / "test").with_suffix(".png")
        with Image.open(mask) as m, Image.open(img) as i:
            assert m.mode == "L" and m.size == i.size
            assert set(np.unique(np.asarray(m))) <= {0, 255}


def test_train_on_dataset_without_masks_names_the_ones_that_have_them(pneumonia_root, tmp_path, capsys):
    argv = ["segment", "train", "--data", str(pneumonia_root), "--out", str(tmp_path / "s"), "--init", "none"]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert "has no lung masks" in line and "COVID-19 Radiography Database" in line
    assert not (tmp_path / "s").exists()


def test_classifier_run_refused_as_segmenter(tmp_path, pneumonia_root, capsys):
    from cxrtl.checkpoint import save_checkpoint
    from cxrtl.transfer import create_model

    run = tmp_path / "clf"
    run.mkdir()
    save_checkpoint(run / "best", create_model("test_resnet", ["a", "b"], 3, init="none"), {})
    assert main(["segment", "predict", str(run), str(pneumonia_root), "--out", str(tmp_path / "m")]) == 2
    assert "is a classifier run, not a segmenter" in _error_line(capsys)


def test_split_with_a_mask_folder_that_does_not_match(pneumonia_root, tmp_path, capsys):
    (tmp_path / "masks").mkdir()
    argv = [
        "data",
        "split",
        str(pneumonia_root),
        "--masks",
        str(tmp_path / "masks"),
        "--out",
        str(tmp_path / "s.csv"),
    ]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert "17 of 17 images have no mask" in line or " images have no mask in " in line
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.slow
def test_train_evaluate_masks_split_end_to_end(covid_root, pneumonia_root, tmp_path, capsys):
    """Train a tiny U-Net, check its Dice against sklearn's pixel F1, then mask Kermany and split with it."""
    from sklearn.metrics import f1_score

    run = tmp_path / "seg"
    argv = ["segment", "train", "--data", str(covid_root), "--out", str(run), "--init", "none"]
    argv += ["--image-size", "32", "--epochs", "2", "--batch-size", "8", "--no-progress"]
    assert main(argv) == 0
    with open(run / "history.csv") as fh:
        hist = list(csv.DictReader(fh))
    assert [int(h["epoch"]) for h in hist] == [1, 2] and all(0 <= float(h["val_dice"]) <= 1 for h in hist)
    best = json.loads((run / "best.json").read_text())
    assert best["metrics"]["val_dice"] == max(float(h["val_dice"]) for h in hist)
    # resume a finished run is refused with one line
    assert main(["segment", "train", "--resume", str(run)]) == 2
    assert "finished run" in _error_line(capsys)

    ev = tmp_path / "ev"
    assert main(["segment", "evaluate", str(run), "--data", str(covid_root), "--out", str(ev)]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert (ev / "overlays.png").is_file() and len(metrics["worst"]) == min(5, metrics["n_images"])
    # Independent Dice: predict the test images' masks, compare with the true masks as sklearn's pixel F1.
    test = [r for r in _rows(run / "split.csv") if r["split"] == "test"]
    pred_dir = tmp_path / "pred"
    assert (
        main(
            [
                "segment",
                "predict",
                str(run),
                *[str(covid_root / r["path"]) for r in test],
                "--out",
                str(pred_dir),
            ]
        )
        == 0
    )
    f1s = []
    for r in test:
        img = Image.open(covid_root / r["path"])
        true = (
            np.asarray(Image.open(covid_root / r["mask_path"]).convert("L").resize(img.size, Image.NEAREST))
            > 127
        )
        pred = np.asarray(Image.open(pred_dir / (r["path"].rsplit("/", 1)[1].rsplit(".", 1)[0] + ".png"))) > 0
        f1s.append(1.0 if not (true.any() or pred.any()) else f1_score(true.ravel(), pred.ravel()))
    assert metrics["dice"]["mean"] == pytest.approx(np.mean(f1s), abs=1e-6)
    assert metrics["dice"]["ci_low"] <= metrics["dice"]["mean"] <= metrics["dice"]["ci_high"]

    masks = tmp_path / "kmasks"
    assert main(["data", "masks", str(pneumonia_root), "--segmenter", str(run), "--out", str(masks)]) == 0
    split = tmp_path / "k.csv"
    assert main(["data", "split", str(pneumonia_root), "--masks", str(masks), "--out", str(split)]) == 0
    rows = _rows(split)
    assert rows and all(r["mask_path"].startswith(str(masks)) for r in rows)


def test_masked_model_predicts_with_segmenter_and_user_mask_wins(
    random_seg, pneumonia_root, tmp_path, capsys
):
    from cxrtl.checkpoint import save_checkpoint
    from cxrtl.data.preprocess import Preprocess
    from cxrtl.transfer import create_model

    clf = tmp_path / "masked"
    clf.mkdir()
    model = create_model("test_resnet", ["NORMAL", "PNEUMONIA"], 3, init="none")
    save_checkpoint(clf / "best", model, {"preprocess": Preprocess("masked", 3, 32).to_dict()})
    images = sorted((pneumonia_root / "test").rglob("*.jpeg"))[:2]
    assert main(["predict", str(clf), str(images[0]), "--format", "json"]) == 1
    assert "--segmenter SEG_RUN" in json.loads(capsys.readouterr().out)[0]["error"]

    saved = tmp_path / "used"
    argv = [
        "predict",
        str(clf),
        *map(str, images),
        "--segmenter",
        str(random_seg),
        "--save-masks",
        str(saved),
    ]
    assert main([*argv, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r.get("error") for r in rows] == [None, None]
    assert sorted(p.name for p in saved.iterdir()) == sorted(i.stem + ".png" for i in images)

    own = tmp_path / "own"
    user_mask = tmp_path / "mask.png"
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(user_mask)
    argv = ["predict", str(clf), str(images[0]), "--mask", str(user_mask), "--segmenter", str(random_seg)]
    assert main([*argv, "--save-masks", str(own)]) == 0
    assert not own.exists()  # the user's mask was used, no mask was predicted

    assert main(["predict", str(clf), str(images[0]), "--segmenter", str(clf)]) == 2
    assert "is a classifier run, not a segmenter" in _error_line(capsys)
