"""The out-of-distribution guard: the Mahalanobis fit, its place in the decision record, every prediction row
carrying it, torch and ONNX agreeing, and evaluate measuring it on images no one here drew."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cxrtl.cli import main
from cxrtl.decisions import Decisions, OutOfDistribution, read_decisions
from cxrtl.errors import CxrtlError
from cxrtl.evaluation.ood import detection_report, fit_guard

CLASSES = ["COVID", "Normal", "Viral Pneumonia"]


# ------------------------------------------------------------------------------------------- the fit
def _gaussians(n: int, d: int = 8, seed: int = 0):
    """``n`` draws of one fixed mixture of three Gaussians with a correlated shared covariance."""
    fixed = np.random.default_rng(123)
    means = fixed.normal(0, 3, (3, d))
    mix = fixed.normal(0, 1, (d, d)) / np.sqrt(d) + np.eye(d)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return means[y] + rng.normal(0, 1, (n, d)) @ mix.T, y


def test_score_is_the_smallest_mahalanobis_distance_and_the_threshold_flags_the_percentile():
    x, y = _gaussians(3000)
    val, _ = _gaussians(2000, seed=1)
    test, _ = _gaussians(4000, seed=2)
    guard = fit_guard(x, y, val, 3, percentile=95)
    # the stored whitening reproduces min_c (f - mu_c)^T S^-1 (f - mu_c) with the fitted covariance
    w = np.asarray(guard.whiten)
    cov = np.linalg.inv(w.T @ w)
    means = np.stack([x[y == c].mean(axis=0) for c in range(3)])
    inv = np.linalg.inv(cov)
    want = np.min([np.einsum("nd,de,ne->n", test - m, inv, test - m) for m in means], axis=0)
    np.testing.assert_allclose(guard.score(test), want, rtol=1e-6)
    # about 5% of fresh in-distribution images are flagged, far-away points all are
    report = detection_report(guard, guard.score(test), guard.score(test + 25.0))
    lo, hi = report["false_flag_rate_ci"]
    assert lo <= 0.05 <= hi and abs(report["false_flag_rate"] - 0.05) < 0.015
    assert report["ood_data"]["auroc"] > 0.99 and report["ood_data"]["true_flag_rate"] == 1.0
    assert guard.fitted_on == "train" and guard.n == 3000 and guard.n_threshold == 2000


def test_fewer_images_than_dimensions_still_fit():
    """Pooled DenseNet features are 1024-d and a small run has fewer images: shrinkage keeps it invertible."""
    x, y = _gaussians(20, d=64)
    guard = fit_guard(x, y, _gaussians(10, d=64, seed=1)[0], 3)
    assert np.isfinite(guard.score(x)).all() and guard.threshold > 0 and 0 < guard.shrinkage <= 1


def test_bad_settings_are_one_line_errors():
    x, y = _gaussians(50)
    with pytest.raises(CxrtlError, match="percentile"):
        fit_guard(x, y, x, 3, percentile=100)
    with pytest.raises(CxrtlError, match="hidden, pooled"):
        fit_guard(x, y, x, 3, layer="logits")
    with pytest.raises(CxrtlError, match="validation"):
        fit_guard(x, y, x[:0], 3)


# ------------------------------------------------------------------------------------------ the record
def _guard(d: int = 4, k: int = 3) -> OutOfDistribution:
    return OutOfDistribution(
        layer="hidden", whiten=np.eye(d).tolist(), means=np.zeros((k, d)).tolist(), threshold=2.0, n=10
    )


def test_the_guard_round_trips_in_the_record_and_a_damaged_one_is_refused(tmp_path):
    record = Decisions(tuple(CLASSES), ood=_guard())
    again = Decisions.from_json(record.to_json())
    assert again == record and again.summary()["ood"]["threshold"] == 2.0
    assert again.decide([0.2, 0.3, 0.5], ood_score=3.0)["ood"] == {
        "score": 3.0,
        "threshold": 2.0,
        "flag": True,
    }
    assert again.decide([0.2, 0.3, 0.5], ood_score=1.0)["ood"]["flag"] is False
    assert "ood" not in Decisions(tuple(CLASSES)).decide([0.2, 0.3, 0.5], ood_score=9.0)  # no guard, no flag
    bad = record.to_dict()
    bad["ood"]["means"] = [[0.0] * 4]  # one class mean for three classes
    with pytest.raises(CxrtlError, match="damaged out-of-distribution guard"):
        Decisions.from_dict(bad)
    older = record.to_dict()
    del older["ood"]  # a record written before the guard existed
    assert Decisions.from_dict(older).ood is None


# ------------------------------------------------------------------------------------- prediction rows
def _run_with_guard(root: Path, images: list[Path]) -> Path:
    """An untrained test_resnet run whose guard is fitted on the hidden features of ``images``."""
    import torch

    from cxrtl.checkpoint import load_checkpoint
    from cxrtl.data.preprocess import Preprocess
    from cxrtl.decisions import write_decisions
    from cxrtl.evaluation.ood import extract_features
    from cxrtl.inference.predict import Predictor
    from test_predict import make_run

    run = make_run(root, Preprocess(input="raw", channels=1, image_size=32), seed=5)
    weights = run / "best.safetensors"
    model, meta = load_checkpoint(weights)
    prepared = np.stack([Predictor.from_checkpoint(run).prepare(p) for p in images])[:, None]
    feats, _ = extract_features(
        model, [(torch.from_numpy(x), i % 3) for i, x in enumerate(prepared)], model_pp(meta), "cpu"
    )
    guard = fit_guard(feats, np.arange(len(feats)) % 3, feats, 3)
    write_decisions(weights, read_decisions(weights, meta).replace(ood=guard))
    return run


def model_pp(meta):
    from cxrtl.data.preprocess import Preprocess

    return Preprocess.from_dict(meta["preprocess"])


def _radiographs(folder: Path, n: int) -> list[Path]:
    from test_predict import radiograph, save_png

    return [save_png(folder / f"r{i}.png", radiograph(48, 56, seed=i)) for i in range(n)]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    root = tmp_path_factory.mktemp("guarded")
    images = _radiographs(root / "img", 24)
    return _run_with_guard(root / "run", images), images, root


def test_every_answered_row_carries_ood_and_a_run_without_a_guard_predicts_unflagged(guarded, tmp_path):
    from cxrtl.data.preprocess import Preprocess
    from cxrtl.inference.predict import Predictor
    from test_predict import make_run

    run, images, root = guarded
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(noise)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    rows = Predictor.from_checkpoint(run).predict_files([images[0], noise, broken])
    ok = [r.to_dict() for r in rows[:2]]
    assert all(set(r["ood"]) == {"score", "threshold", "flag"} for r in ok)
    assert ok[1]["ood"]["score"] > ok[0]["ood"]["score"]
    predictor = Predictor.from_checkpoint(run)
    np.testing.assert_allclose(
        predictor.ood_scores([images[0], noise]), [r["ood"]["score"] for r in ok], rtol=1e-9
    )
    assert "ood" not in rows[2].to_dict() and rows[2].error  # an unreadable file has no score
    old = make_run(tmp_path / "old", Preprocess(input="raw", channels=1, image_size=32))
    (row,) = Predictor.from_checkpoint(old).predict_files([images[0]])
    assert row.to_dict()["ood"] is None and row.probabilities is not None


def test_predict_cli_prints_the_flag_and_a_warning(guarded, tmp_path, capsys):
    run, images, _ = guarded
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)).save(noise)
    assert main(["predict", str(run), str(images[0]), str(noise), "--format", "json"]) == 0
    out = capsys.readouterr()
    rows = json.loads(out.out)
    assert [r["ood"]["flag"] for r in rows] == [False, True]
    assert "1 of 2 image(s) are unlike the chest radiographs" in out.err
    assert main(["predict", str(run), str(noise), "--format", "csv"]) == 0
    header, line = capsys.readouterr().out.splitlines()
    assert header.split(",")[-3:] == ["ood_score", "ood_flag", "error"] and line.split(",")[-2] == "yes"


def test_onnx_computes_the_same_score_in_its_graph(guarded, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from cxrtl.inference.export import export_onnx
    from cxrtl.inference.predict import Predictor

    run, images, _ = guarded
    out = export_onnx(run, tmp_path / "m.onnx", exporter="torchscript")
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["logits", "probabilities", "ood_score"]
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 40), dtype=np.uint8)).save(noise)
    files = [*images[:5], noise]
    a = Predictor.from_checkpoint(run).predict_files(files, batch_size=4)
    b = Predictor.from_checkpoint(out).predict_files(files, batch_size=4)
    for ra, rb in zip(a, b):
        assert ra.ood["flag"] == rb.ood["flag"] and ra.ood["threshold"] == rb.ood["threshold"]
        assert abs(ra.ood["score"] - rb.ood["score"]) <= 1e-4 * max(1.0, abs(ra.ood["score"]))
    # the ONNX path scores and flags without torch
    import os
    import subprocess
    import sys

    code = (
        "import sys, json\n"
        "from cxrtl.inference.predict import Predictor\n"
        f"rows = Predictor.from_checkpoint({str(out)!r}).predict_files({[str(f) for f in files]!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(json.dumps([r.ood for r in rows]))\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [r["flag"] for r in json.loads(res.stdout.strip().splitlines()[-1])] == [r.ood["flag"] for r in a]


# --------------------------------------------------------------------------------- images no one drew
# scikit-image's photographs used as images that are not chest radiographs
PHOTOGRAPHS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "coins",
    "moon",
    "brick",
    "clock",
    "page",
)


def out_of_distribution_images(folder: Path, radiograph: Path) -> dict[str, Path]:
    """scikit-image's photographs, plus generated ones: a screenshot of text, uniform noise, a flipped and a
    rotated radiograph, and a crop of a single lung."""
    skdata = pytest.importorskip("skimage.data")
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in PHOTOGRAPHS:
        out[name] = folder / f"{name}.png"
        Image.fromarray(getattr(skdata, name)()).save(out[name])
    text = Image.new("L", (320, 200), 255)
    draw = ImageDraw.Draw(text)
    for i in range(9):
        draw.text((8, 8 + 20 * i), f"$ cxrtl predict run/ image_{i}.png --format json  # line {i}", fill=0)
    out["screenshot"] = folder / "screenshot.png"
    text.save(out["screenshot"])
    out["noise"] = folder / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)).save(out["noise"])
    cxr = Image.open(radiograph).convert("L")
    out["flipped"] = folder / "flipped.png"
    cxr.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(out["flipped"])
    out["rotated"] = folder / "rotated.png"
    cxr.rotate(90, expand=True).save(out["rotated"])
    out["one_lung"] = folder / "one_lung.png"
    w, h = cxr.size
    cxr.crop((w // 8, h // 5, w // 2, 4 * h // 5)).save(out["one_lung"])
    return out


@pytest.mark.slow
def test_a_trained_run_gets_a_guard_that_evaluate_measures(tmp_path, covid_root, capsys):
    """Training fits the guard; evaluate reports its false-flag rate on test and, on scikit-image's
    photographs, its AUROC; predict flags the photographs."""
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(covid_root),
                "--out",
                str(run),
                "--backbone",
                "test_resnet",
                "--init",
                "none",
                "--image-size",
                "32",
                "--epochs",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["ood"]["layer"] == "hidden" and summary["ood"]["percentile"] == 99.0
    guard = json.loads((run / "best.decisions.json").read_text())["ood"]
    assert guard["fitted_on"] == "train" and guard["n"] == summary["split_sizes"]["train"]
    some = sorted((covid_root / "COVID" / "images").glob("*.png"))[0]
    photos = out_of_distribution_images(tmp_path / "ood", some)
    capsys.readouterr()
    photo_dir = tmp_path / "photos"
    photo_dir.mkdir()
    for name in PHOTOGRAPHS:
        photos[name].rename(photo_dir / photos[name].name)
    assert (
        main(
            [
                "evaluate",
                str(run),
                "--out",
                str(tmp_path / "eval"),
                "--ood-data",
                str(photo_dir),
                "--bootstrap",
                "0",
                "--no-figures",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "OOD guard (hidden" in printed and "--ood-data: AUROC" in printed
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())["ood"]
    assert report["n"] == json.loads((tmp_path / "eval" / "metrics.json").read_text())["n"]
    assert (
        report["false_flag_rate_ci"][0] <= 0.01 <= report["false_flag_rate_ci"][1] or report["flagged"] <= 2
    )
    assert report["ood_data"]["n"] == 10 and report["ood_data"]["auroc"] >= 0.8
    assert "## Out-of-distribution guard" in (tmp_path / "eval" / "report.md").read_text()
    # refit on the pooled features at another percentile: the record says so
    assert (
        main(
            [
                "evaluate",
                str(run),
                "--out",
                str(tmp_path / "eval2"),
                "--fit-ood",
                "--ood-layer",
                "pooled",
                "--ood-percentile",
                "95",
                "--bootstrap",
                "0",
                "--no-figures",
                "--no-progress",
            ]
        )
        == 0
    )
    refit = json.loads((run / "best.decisions.json").read_text())["ood"]
    assert refit["layer"] == "pooled" and refit["percentile"] == 95.0 and refit["fitted_utc"]
    again = json.loads((tmp_path / "eval2" / "metrics.json").read_text())["ood"]
    assert again["layer"] == "pooled" and again["threshold"] == refit["threshold"]


def test_ood_data_without_a_readable_image_is_one_line(guarded, tmp_path, capsys):
    run, _, root = guarded
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not a png")
    for folder, message in ((empty, "has no PNG/JPEG/DICOM image"), (bad, "no readable image")):
        code = main(
            [
                "evaluate",
                str(run),
                "--data",
                str(_dataset(root)),
                "--subset",
                "all",
                "--out",
                str(tmp_path / "e"),
                "--ood-data",
                str(folder),
                "--no-progress",
            ]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0] and err[0].startswith("cxrtl: error:")


def _dataset(root: Path) -> Path:
    """A class-folder set with the run's classes (made once per module folder)."""
    from test_predict import radiograph

    data = root / "data"
    if not data.exists():
        for k, c in enumerate(CLASSES):
            (data / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(radiograph(40, 40, seed=10 * k + i)).save(data / c / f"{i}.png")
    return data


def test_the_server_answers_with_ood_and_the_page_warns(guarded, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from cxrtl.inference.predict import Predictor
    from cxrtl.serve.app import create_app

    run, images, _ = guarded
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)).save(noise)
    client = TestClient(create_app(Predictor.from_checkpoint(run)), base_url="http://localhost")
    files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in (images[0], noise)]
    rows = client.post("/v1/predict", files=files).json()
    assert [r["ood"]["flag"] for r in rows] == [False, True]
    script = client.get("/static/app.js")  # the page's script shows the warning on a flagged row
    assert script.status_code == 200 and "row.ood && row.ood.flag" in script.text
    assert (
        "unlike the chest radiographs the model was trained on; its prediction is not meaningful"
        in script.text
    )
