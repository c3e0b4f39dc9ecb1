"""One decision record per model: written once, read once, applied the same by torch and onnxruntime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrtl.checkpoint import read_meta, save_checkpoint
from cxrtl.cli import main
from cxrtl.data.preprocess import Preprocess
from cxrtl.decisions import (
    Conformal,
    Decisions,
    OperatingPoint,
    Temperature,
    decisions_path,
    read_decisions,
    write_decisions,
)
from cxrtl.errors import CxrtlError
from cxrtl.inference.predict import Predictor
from cxrtl.transfer import create_model
from helpers import set_decisions

CLASSES = ["COVID", "Normal", "Viral Pneumonia"]
COMPAT = Path(__file__).parent / "data" / "run-v0.1.0"


def _run(root: Path, seed: int = 0, size: int = 32) -> Path:
    torch.manual_seed(seed)
    model = create_model("test_resnet", classes=CLASSES, in_chans=1, init="none")
    root.mkdir(parents=True, exist_ok=True)
    pp = Preprocess("raw", 1, size)
    save_checkpoint(root / "best", model, {"preprocess": pp.to_dict(), "epoch": 1})
    return root


def _images(folder: Path, n: int = 6) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        arr = (rng.random((40, 44)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"x{i}.png")
        paths.append(str(folder / f"x{i}.png"))
    return paths


def _full_record(run: Path, images: list[str]) -> None:
    """A temperature, an operating point in the middle of the P(COVID) range, and sets of mixed sizes."""
    set_decisions(run, temperature=Temperature(0.2, fitted_on="val", n=30, fitted_utc="2026-12-03T00:00:00Z"))
    probs = Predictor.from_checkpoint(run, device="cpu").predict_proba(images)
    p_covid = np.sort(probs[:, 0])
    set_decisions(
        run,
        operating_point=OperatingPoint(
            "COVID", float((p_covid[2] + p_covid[3]) / 2), temperature=0.2, target_sensitivity=0.9, n=30
        ),
        conformal=Conformal(alpha=0.1, threshold=float(1 - np.median(probs)), temperature=0.2, n=30),
    )


def test_record_round_trips_and_names_its_fits(tmp_path):
    run = _run(tmp_path / "run")
    weights = run / "best.safetensors"
    meta = read_meta(weights)
    empty = read_decisions(weights, meta)
    assert empty.temperature is None and empty.decide([0.2, 0.5, 0.3]) == {}
    record = empty.replace(
        temperature=Temperature(1.7, fitted_on="val", n=12),
        conformal=Conformal(alpha=0.2, threshold=0.6, temperature=1.7),
    )
    path = write_decisions(weights, record)
    assert path == tmp_path / "run" / "best.decisions.json"
    again = read_decisions(weights, meta)
    assert again == record
    body = json.loads(path.read_text())
    assert body["format"] == "cxrtl-decisions" and body["temperature"]["fitted_on"] == "val"
    assert body["weights_sha256"] == meta["weights_sha256"]


def test_weights_with_other_names_keep_their_own_record(tmp_path):
    # Two weights files in one folder never share a record (model.v2 -> model.v2.decisions.json).
    run = _run(tmp_path / "run")
    for name in ("model.v2", "model.v3"):
        shutil.copy(run / "best.safetensors", tmp_path / name)
    assert decisions_path(tmp_path / "model.v2") == tmp_path / "model.v2.decisions.json"
    meta = read_meta(run / "best.safetensors")
    write_decisions(tmp_path / "model.v2", Decisions(tuple(CLASSES), temperature=Temperature(2.0)))
    assert read_decisions(tmp_path / "model.v2", meta).t == 2.0
    assert read_decisions(tmp_path / "model.v3", meta).temperature is None


def test_a_record_for_other_weights_is_not_applied(tmp_path, caplog):
    run = _run(tmp_path / "run")
    set_decisions(run, temperature=Temperature(3.0))
    _run(tmp_path / "run", seed=5)  # retrained in place: new weights, old record
    record = read_decisions(run / "best.safetensors", read_meta(run / "best.safetensors"))
    assert record.temperature is None
    assert "fitted for other weights" in caplog.text


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(classes=["a", "b", "c"]), "is for classes"),
        (lambda d: d.update(temperature={"value": -1}), "no valid positive temperature"),
        (lambda d: d.update(operating_point={"positive": "Cat", "threshold": 0.5}), "not one of"),
        (lambda d: d.update(conformal={"alpha": 0.1, "threshold": 7}), "threshold' in [0, 1]"),
        (lambda d: d.update(conformal="0.5"), "is damaged"),
        (lambda d: d.update(version=99), "upgrade cxrtl"),
    ],
)
def test_a_damaged_record_is_one_line(tmp_path, capsys, edit, message):
    run = _run(tmp_path / "run")
    path = set_decisions(run, temperature=Temperature(1.2))
    body = json.loads(path.read_text())
    edit(body)
    path.write_text(json.dumps(body))
    with pytest.raises(CxrtlError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Predictor.from_checkpoint(run, device="cpu")
    image = _images(tmp_path / "img", 1)[0]
    assert main(["predict", str(run), image]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cxrtl: error:") and "\n" not in err


def test_today_s_three_sidecars_load_predict_the_same_and_migrate(tmp_path, capsys):
    run = _run(tmp_path / "run")
    images = _images(tmp_path / "img")
    probs = Predictor.from_checkpoint(run, device="cpu").predict_proba(images)
    p_covid = np.sort(probs[:, 0])
    # The files a cxrtl 0.1 + evaluate --calibrate/--positive/--conformal run had beside its weights.
    (run / "best.calibration.json").write_text(
        json.dumps({"format": "cxrtl-calibration", "method": "temperature", "temperature": 1.0, "n": 30})
    )
    threshold = float((p_covid[2] + p_covid[3]) / 2)
    (run / "best.operating_point.json").write_text(
        json.dumps({"format": "cxrtl-operating-point", "positive": "COVID", "threshold": threshold})
    )
    (run / "best.conformal.json").write_text(
        json.dumps(
            {"format": "cxrtl-conformal", "alpha": 0.1, "method": "lac", "threshold": 0.7, "temperature": 1.0}
        )
    )
    assert main(["predict", str(run), *images, "--format", "json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert all("positive" in r and "prediction_set" in r for r in before)
    assert {r["positive"]["flag"] for r in before} == {True, False}

    assert main(["migrate", str(run)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in run.glob("best.*.json")) == ["best.decisions.json"]
    record = json.loads((run / "best.decisions.json").read_text())
    assert record["operating_point"]["threshold"] == threshold and record["conformal"]["threshold"] == 0.7
    assert main(["predict", str(run), *images, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == before
    assert main(["migrate", str(run)]) == 0
    assert "already" in capsys.readouterr().out


def test_the_v0_1_run_migrates_and_predicts_the_same(tmp_path, capsys):
    run = Path(shutil.copytree(COMPAT, tmp_path / "run"))
    expected = {
        Path(r["path"]).name: r["probabilities"]
        for r in json.loads((run / "expected_predictions.json").read_text())
    }
    t = json.loads((run / "best.calibration.json").read_text())["temperature"]
    assert main(["migrate", str(run)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert not (run / "best.calibration.json").exists()
    assert json.loads((run / "best.decisions.json").read_text())["temperature"]["value"] == t
    assert main(["predict", str(run), str(run / "images"), "--format", "json", "--device", "cpu"]) == 0
    for row in json.loads(capsys.readouterr().out):
        assert row["probabilities"] == pytest.approx(expected[Path(row["path"]).name], abs=1e-6)


@pytest.mark.slow
def test_torch_and_onnx_give_the_same_rows(tmp_path):
    pytest.importorskip("onnxruntime")
    from cxrtl.inference.export import export_onnx
    from cxrtl.inference.quantize import quantize_onnx

    run = _run(tmp_path / "run")
    images = _images(tmp_path / "img", 8)
    _full_record(run, images)
    onnx_path = export_onnx(run, tmp_path / "model.onnx", exporter="torchscript")
    torch_rows = [r.to_dict() for r in Predictor.from_checkpoint(run, device="cpu").predict_files(images)]
    onnx_pred = Predictor.from_checkpoint(onnx_path)
    assert onnx_pred.decisions == read_decisions(
        run / "best.safetensors", read_meta(run / "best.safetensors")
    )
    onnx_rows = [r.to_dict() for r in onnx_pred.predict_files(images)]
    sizes = {len(r["prediction_set"]) for r in torch_rows}
    assert len(sizes) > 1 and {r["positive"]["flag"] for r in torch_rows} == {True, False}  # a real test
    for t_row, o_row in zip(torch_rows, onnx_rows):
        assert t_row.keys() == o_row.keys()
        assert o_row["probabilities"] == pytest.approx(t_row["probabilities"], abs=1e-5)
        assert o_row["prediction_set"] == t_row["prediction_set"] and o_row["positive"] == t_row["positive"]
        assert o_row["label"] == t_row["label"]

    # int8 carries the same record: same keys, flags and sets from its own probabilities.
    calib = np.stack([Predictor.from_checkpoint(onnx_path).prepare(p) for p in images])[:, None]
    int8 = quantize_onnx(onnx_path, tmp_path / "model.int8.onnx", calib)
    int8_pred = Predictor.from_checkpoint(int8)
    assert int8_pred.decisions == onnx_pred.decisions
    for t_row, q_row in zip(torch_rows, (r.to_dict() for r in int8_pred.predict_files(images))):
        assert t_row.keys() == q_row.keys()
        assert q_row["prediction_set"] == int8_pred.decisions.prediction_set(
            list(q_row["probabilities"].values())
        )
