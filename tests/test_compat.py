"""Run directories written by cxrtl 0.1.0 still load and predict the same (tests/data/run-v0.1.0).

The fixture is a real 0.1.0 run (test_resnet, 32 px, 1 epoch, with a temperature from
``evaluate --calibrate``) and the probabilities 0.1.0's ``cxrtl predict --format json`` printed for two images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cxrtl.cli import main

FIXTURE = Path(__file__).parent / "data" / "run-v0.1.0"


@pytest.fixture
def old_run(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "run"))


def _expected() -> dict[str, dict[str, float]]:
    rows = json.loads((FIXTURE / "expected_predictions.json").read_text())
    return {Path(r["path"]).name: r["probabilities"] for r in rows}


def test_cli_predicts_an_old_run_as_0_1_0_did(old_run, capsys):
    assert (
        main(["predict", str(old_run), str(old_run / "images"), "--format", "json", "--device", "cpu"]) == 0
    )
    rows = json.loads(capsys.readouterr().out)
    expected = _expected()
    assert {Path(r["path"]).name for r in rows} == set(expected)
    for row in rows:
        want = expected[Path(row["path"]).name]
        assert row["probabilities"] == pytest.approx(want, abs=1e-6)


def test_public_api_loads_an_old_run(old_run):
    import cxrtl

    predictor = cxrtl.Predictor.from_checkpoint(old_run, device="cpu")
    assert predictor.classes == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    assert predictor.temperature == pytest.approx(
        json.loads((old_run / "best.calibration.json").read_text())["temperature"]
    )
    images = sorted((old_run / "images").iterdir())
    probs = predictor.predict_proba([str(p) for p in images])
    expected = _expected()
    for image, row in zip(images, probs):
        assert dict(zip(predictor.classes, row.tolist())) == pytest.approx(expected[image.name], abs=1e-6)
    model, meta = cxrtl.load_checkpoint(old_run)
    assert meta["preprocess"]["image_size"] == 32 and model.classes == predictor.classes
