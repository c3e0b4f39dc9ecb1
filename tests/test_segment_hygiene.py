"""Test-set hygiene: a segmenter that trained on a classifier's test images is named, once, with the overlap."""

from __future__ import annotations

import csv
import logging

import pytest

from cxrtl.cli import main
from helpers import make_segmenter_run

pytest.importorskip("segmentation_models_pytorch")


def _rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _segmenter(tmp_path, data_root, seen: list[str]):
    """An untrained segmenter whose metadata says it trained on ``seen`` (paths relative to ``data_root``)."""
    run = tmp_path / "seg"
    run.mkdir(parents=True)
    split = run / "split.csv"
    with open(split, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        w.writerows([p, "x", "train"] for p in seen)
    return make_segmenter_run(run, data_root=str(data_root), split_csv=str(split))


def _warnings(caplog) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if "the segmenter trained on" in r.getMessage()]
    caplog.clear()
    return lines


def test_split_masks_warns_once_naming_the_overlap(pneumonia_root, covid_root, tmp_path, capsys, caplog):
    caplog.set_level(logging.WARNING)
    images = sorted(p.relative_to(pneumonia_root).as_posix() for p in pneumonia_root.rglob("*.jpeg"))
    seg = _segmenter(tmp_path, pneumonia_root, images[::2])  # saw every other image
    masks = tmp_path / "masks"
    assert main(["data", "masks", str(pneumonia_root), "--segmenter", str(seg), "--out", str(masks)]) == 0
    split = tmp_path / "split.csv"
    assert main(["data", "split", str(pneumonia_root), "--masks", str(masks), "--out", str(split)]) == 0
    test = {r["path"] for r in _rows(split) if r["split"] == "test"}
    expected = len(test & set(images[::2]))
    assert expected > 0
    lines = _warnings(caplog)
    assert len(lines) == 1 and f"trained on {expected} test image(s) of the split of" in lines[0]

    # A segmenter trained on another dataset shares no image: no warning.
    other = _segmenter(tmp_path / "o", covid_root, images[::2])
    masks2 = tmp_path / "masks2"
    assert main(["data", "masks", str(pneumonia_root), "--segmenter", str(other), "--out", str(masks2)]) == 0
    assert main(["data", "split", str(pneumonia_root), "--masks", str(masks2), "--out", str(split)]) == 0
    assert _warnings(caplog) == []


def test_predict_with_a_segmenter_that_saw_the_classifier_test_images(
    pneumonia_root, tmp_path, capsys, caplog
):
    caplog.set_level(logging.WARNING)
    from cxrtl.checkpoint import save_checkpoint
    from cxrtl.data.preprocess import Preprocess
    from cxrtl.transfer import create_model

    images = sorted(p.relative_to(pneumonia_root).as_posix() for p in pneumonia_root.rglob("*.jpeg"))
    clf = tmp_path / "masked"
    clf.mkdir()
    model = create_model("test_resnet", ["NORMAL", "PNEUMONIA"], 3, init="none")
    meta = {"preprocess": Preprocess("masked", 3, 32).to_dict(), "config": {"data": str(pneumonia_root)}}
    save_checkpoint(clf / "best", model, meta)
    with open(clf / "split.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        w.writerows(
            [[p, "NORMAL", "test"] for p in images[:3]] + [[p, "NORMAL", "train"] for p in images[3:6]]
        )
    one = str(pneumonia_root / images[0])

    seg = _segmenter(tmp_path / "a", pneumonia_root, images[1:5])  # 2 of the 3 test images
    assert main(["predict", str(clf), one, "--segmenter", str(seg)]) == 0
    lines = _warnings(caplog)
    assert len(lines) == 1 and "trained on 2 test image(s) of classifier" in lines[0]

    clean = _segmenter(tmp_path / "b", pneumonia_root, images[3:6])  # only the classifier's training images
    assert main(["predict", str(clf), one, "--segmenter", str(clean)]) == 0
    assert _warnings(caplog) == []
