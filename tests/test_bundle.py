"""Bundles: files and checksums, prediction from a bundle, tampering refused, the generated model card."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("onnxruntime")

from cxrtl.bundle_manifest import verify_bundle
from cxrtl.checkpoint import save_checkpoint
from cxrtl.cli import main
from cxrtl.data import load_dataset
from cxrtl.data.preprocess import Preprocess
from cxrtl.data.splits import make_split, write_split_csv
from cxrtl.decisions import Temperature
from cxrtl.errors import CxrtlError
from cxrtl.inference.bundle import make_bundle
from cxrtl.inference.predict import Predictor
from cxrtl.transfer import create_model
from helpers import set_decisions

COVID_CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


def make_covid_run(run: Path, covid_root: Path, seed: int = 0) -> Path:
    """A run directory as train leaves it (best checkpoint, split.csv, summary.json) of an untrained model."""
    torch.manual_seed(seed)
    pp = Preprocess(input="raw", channels=3, image_size=32)
    model = create_model("test_resnet", classes=COVID_CLASSES, in_chans=3, init="none")
    config = {
        "data": str(covid_root),
        "init": "none",
        "seed": 7,
        "backbone": "test_resnet",
        "loss": "wce-1cf",
    }
    run.mkdir(parents=True)
    save_checkpoint(run / "best", model, {"preprocess": pp.to_dict(), "epoch": 1, "config": config})
    write_split_csv(run / "split.csv", make_split(load_dataset(covid_root), seed=7))
    summary = {
        "finished": True,
        "best_epoch": 1,
        "best_val_acc": 0.5,
        "epochs_completed": 1,
        "config": config,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def card_parts(bundle: Path) -> tuple[dict, str]:
    text = (bundle / "README.md").read_text()
    assert text.startswith("---\n")
    _, head, body = text.split("---\n", 2)
    return yaml.safe_load(head), body


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, covid_root):
    """(run, bundle): a calibrated, evaluated run and its bundle."""
    from cxrtl.evaluation.evaluate import evaluate

    root = tmp_path_factory.mktemp("bundle")
    run = make_covid_run(root / "run", covid_root)
    set_decisions(run / "best.safetensors", temperature=Temperature(1.5, fitted_on="val", n=9))
    evaluate(run, covid_root, out=run / "test", progress=False, n_boot=50, figures=False)
    bundle = root / "bundle"
    make_bundle(run, bundle, exporter="torchscript")
    return run, bundle


def test_bundle_files_and_checksums(evaluated):
    run, bundle = evaluated
    names = {p.name for p in bundle.iterdir()}
    want = {"best.safetensors", "best.json", "best.decisions.json", "model.onnx", "config.yaml"}
    assert want | {"metrics.json", "README.md", "bundle.json"} <= names
    meta = json.loads((bundle / "bundle.json").read_text())
    assert set(meta["files"]) == names - {"bundle.json"}
    for name, entry in meta["files"].items():
        assert entry["sha256"] == hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    assert (bundle / "best.safetensors").read_bytes() == (run / "best.safetensors").read_bytes()
    assert json.loads((bundle / "metrics.json").read_text()) == json.loads(
        (run / "test/metrics.json").read_text()
    )
    assert yaml.safe_load((bundle / "config.yaml").read_text())["seed"] == 7
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".bundle")]  # no staging left


def test_predict_from_bundle_matches_run(evaluated, covid_root, capsys):
    run, bundle = evaluated
    files = sorted((covid_root / "COVID" / "images").glob("*.png"))[:3]
    want = Predictor.from_checkpoint(run).predict(files)
    from_bundle = Predictor.from_checkpoint(bundle)
    assert from_bundle.temperature == 1.5
    np.testing.assert_array_equal(from_bundle.predict(files), want)
    np.testing.assert_allclose(
        Predictor.from_checkpoint(bundle / "model.onnx").predict(files), want, atol=1e-4
    )
    assert main(["predict", str(bundle), *map(str, files), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(
        [[r["probabilities"][c] for c in COVID_CLASSES] for r in rows], want, atol=1e-4
    )


@pytest.mark.parametrize("victim", ["best.safetensors", "model.onnx", "README.md"])
def test_tampered_or_truncated_bundle_is_refused(evaluated, covid_root, tmp_path, capsys, victim):
    _, bundle = evaluated
    copy = shutil.copytree(bundle, tmp_path / "copy")
    data = (copy / victim).read_bytes()
    (copy / victim).write_bytes(data[: len(data) // 2] if victim == "model.onnx" else data[:-1] + b"!")
    with pytest.raises(CxrtlError, match=f"{victim} does not match the SHA-256"):
        verify_bundle(copy)
    image = next((covid_root / "COVID" / "images").glob("*.png"))
    assert main(["predict", str(copy), str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "tampered with or truncated" in err
    if victim == "model.onnx":  # the ONNX file of a bundle, given directly, is checked too
        with pytest.raises(CxrtlError, match="model.onnx does not match"):
            Predictor.from_checkpoint(copy / "model.onnx")


def test_missing_file_is_refused(evaluated, tmp_path):
    _, bundle = evaluated
    copy = shutil.copytree(bundle, tmp_path / "copy")
    (copy / "best.json").unlink()
    with pytest.raises(CxrtlError, match="lacks best.json"):
        Predictor.from_checkpoint(copy)


def test_card_of_an_evaluated_run(evaluated):
    run, bundle = evaluated
    head, body = card_parts(bundle)
    metrics = json.loads((run / "test/metrics.json").read_text())
    assert head["library_name"] == "cxrtl" and head["pipeline_tag"] == "image-classification"
    assert head["license"] == "other" and "synthetic-data" in head["tags"]
    (result,) = head["model-index"][0]["results"]
    got = {(m["type"], (m.get("args") or {}).get("average")): m["value"] for m in result["metrics"]}
    assert got[("accuracy", None)] == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert got[("f1", "macro")] == pytest.approx(metrics["macro"]["f1"], abs=1e-6)
    assert got[("f1", "weighted")] == pytest.approx(metrics["weighted"]["f1"], abs=1e-6)
    # warnings come first, before any section
    first_section = body.index("## ")
    assert "Trained on synthetic data" in body[:first_section]
    assert "Started from random weights" in body[:first_section]
    assert "Never evaluated" not in body and "not a medical device" in body
    assert f"{100 * metrics['accuracy']:.1f}% [{100 * metrics['accuracy_ci'][0]:.1f}," in body
    assert "T = 1.500, fitted on the val subset (9 images" in body and "no leakage found" in body
    # class counts per split, counted independently from split.csv
    with open(run / "split.csv", newline="") as fh:
        counts = Counter((r["label"], r["split"]) for r in csv.DictReader(fh))
    for c in COVID_CLASSES:
        row = f"| {c} | {counts[(c, 'train')]} | {counts[(c, 'val')]} | {counts[(c, 'test')]} |"
        assert row in body


def test_card_of_a_never_evaluated_masked_run(tmp_path, covid_root, capsys):
    run = make_covid_run(tmp_path / "run", covid_root)
    meta = json.loads((run / "best.json").read_text())
    model = create_model("test_resnet", classes=COVID_CLASSES, in_chans=1, init="none")
    pp = Preprocess(input="masked", channels=1, image_size=32)
    save_checkpoint(run / "best", model, {"preprocess": pp.to_dict(), "epoch": 1, "config": meta["config"]})
    code = main(["export", str(run), "--bundle", str(tmp_path / "b"), "--exporter", "torchscript"])
    assert code == 0 and "never evaluated" in capsys.readouterr().out
    head, body = card_parts(tmp_path / "b")
    assert "model-index" not in head
    assert "Never evaluated" in body and "| class | precision" not in body
    assert "Lung masks are needed at prediction time" in body
    assert not (tmp_path / "b" / "metrics.json").exists()


def test_export_into_an_existing_bundle_replaces_it(evaluated, tmp_path):
    run, bundle = evaluated
    copy = shutil.copytree(bundle, tmp_path / "b")
    (copy / "stale.txt").write_text("old")
    make_bundle(run, copy, exporter="torchscript", leakage_check=False)
    assert not (copy / "stale.txt").exists() and "Leakage check: not run" in (copy / "README.md").read_text()
    verify_bundle(copy)


def test_bad_bundle_requests(evaluated, tmp_path, capsys):
    run, _ = evaluated
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    no_best = tmp_path / "no-best"
    no_best.mkdir()
    (no_best / "config.yaml").write_text("seed: 1\n")
    cases = {
        ("export", str(run), "--bundle", str(foreign)): "non-empty folder that is not a cxrtl bundle",
        ("export", str(no_best), "--bundle", str(tmp_path / "x")): "no best checkpoint",
        ("export", str(run), "--bundle", str(tmp_path / "y"), "--int8"): "--int8 needs --calibration-data",
        ("export", str(run)): "give --onnx OUT.onnx or --bundle DIR",
        ("push", str(run), "--repo", "a/b"): "not a cxrtl bundle",
    }
    for argv, message in cases.items():
        assert main(list(argv)) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("cxrtl: error: ") and message in err and "\n" not in err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["files"].update({"best.json": "x"}), "no valid 'sha256' and 'bytes'"),
        (lambda m: m["files"].update({"best.json": None}), "no valid 'sha256' and 'bytes'"),
        (lambda m: m.update(files={}), "lists no files"),
        (lambda m: m.update(files=[]), "lists no files"),
        (lambda m: m["files"].update({"../best.json": m["files"]["best.json"]}), "not a plain file name"),
        (lambda m: m["files"].pop("best.safetensors"), "best.safetensors is not listed"),
        (lambda m: m["files"].pop("model.onnx"), "model.onnx is not listed"),
    ],
)
def test_a_malformed_or_incomplete_manifest_is_refused_in_one_line(
    evaluated, tmp_path, capsys, edit, message
):
    _, bundle = evaluated
    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    manifest = json.loads((copy / "bundle.json").read_text())
    edit(manifest)
    (copy / "bundle.json").write_text(json.dumps(manifest))
    image = next((copy.parent).glob("*.png"), None) or _one_png(tmp_path)
    for backend in ("torch", "onnx"):
        capsys.readouterr()
        assert main(["predict", str(copy), str(image), "--backend", backend]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("cxrtl: error:") and message in err and "\n" not in err


def test_unlisted_files_are_never_loaded(evaluated, tmp_path, capsys):
    # "files": {} with altered weights and best.json deleted used to load; an unlisted model.onnx was used.
    _, bundle = evaluated
    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    manifest = json.loads((copy / "bundle.json").read_text())
    del manifest["files"]["best.json"]
    (copy / "best.json").unlink()
    (copy / "bundle.json").write_text(json.dumps(manifest))
    image = _one_png(tmp_path)
    assert main(["predict", str(copy), str(image)]) == 0  # best.json is not needed; nothing unlisted is read
    (copy / "extra.onnx").write_bytes((copy / "model.onnx").read_bytes())  # an unlisted file appears
    assert main(["predict", str(copy), str(image)]) == 2
    assert "extra.onnx is not listed" in capsys.readouterr().err


def _one_png(folder: Path) -> Path:
    from PIL import Image

    path = folder / "one.png"
    Image.fromarray((np.arange(48 * 40) % 251).astype(np.uint8).reshape(48, 40)).save(path)
    return path


def test_the_card_s_code_runs_against_its_bundle(evaluated, tmp_path):
    """Every code block of a generated card runs, with its placeholders filled in (issue: a snippet that failed)."""
    import re
    import subprocess
    import sys

    _, bundle = evaluated
    image = _one_png(tmp_path)
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(image, scans / "a.png")
    text = (bundle / "README.md").read_text()
    blocks = re.findall(r"```(sh|python)\n(.*?)```", text, re.S)
    assert {kind for kind, _ in blocks} == {"sh", "python"}
    for kind, code in blocks:
        code = code.replace("BUNDLE_DIR", str(bundle)).replace("scans/", str(scans) + "/")
        code = code.replace('"a.png"', repr(str(scans / "a.png")))
        if kind == "python":
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, res.stderr[-1500:]
            assert "COVID" in res.stdout
            continue
        for line in code.splitlines():
            cmd = line.split("#")[0].split()
            if not cmd or cmd[0] != "cxrtl" or any(c.startswith("hf://") for c in cmd):
                continue  # pip install and the Hub need a network
            assert main(cmd[1:]) == 0, line


def test_a_bundle_is_not_exported_again_as_if_it_were_a_run(evaluated, tmp_path, capsys):
    run, bundle = evaluated
    assert main(["export", str(bundle), "--bundle", str(tmp_path / "b2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a bundle, not a run directory" in err and str(run.resolve()) in err and "\n" not in err
    assert not (tmp_path / "b2").exists()


def test_a_bundle_is_never_rewritten_in_place(evaluated, tmp_path, covid_root, capsys):
    _, bundle = evaluated
    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    base = [
        "evaluate",
        str(copy),
        "--data",
        str(covid_root),
        "--no-figures",
        "--bootstrap",
        "0",
        "--no-progress",
    ]
    assert main([*base, "--out", str(tmp_path / "e"), "--calibrate"]) == 2
    err = capsys.readouterr().err
    assert "is a bundle, whose files are checksummed" in err and err.count("\n") == 1
    assert (
        main([*base, "--out", str(tmp_path / "e2")]) == 0
    )  # scoring a bundle is fine, and writes nothing there
    assert main(["migrate", str(copy)]) == 2
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before
    assert main(["predict", str(copy), str(_one_png(tmp_path))]) == 0  # still loads: nothing was added
