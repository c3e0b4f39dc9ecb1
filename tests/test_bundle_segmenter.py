"""`cxrtl export RUN --bundle DIR --segmenter SEG_RUN`: a masked model's bundle carries its lung segmenter,
so `cxrtl predict DIR IMAGES` works without masks and gives what the user would get with the masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cxrtl.cli import main
from cxrtl.data.preprocess import Preprocess
from helpers import export_masked_bundle, make_segmenter_run
from test_predict import CLASSES, make_run, radiograph, save_png

pytest.importorskip("segmentation_models_pytorch")


@pytest.fixture
def seg_run(tmp_path):
    return make_segmenter_run(tmp_path / "seg")


def _predict_json(capsys, *argv) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", *map(str, argv), "--format", "json", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out)


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    return err[0]


def test_a_masked_bundle_carries_its_segmenter(seg_run, tmp_path, capsys):
    run = make_run(tmp_path / "run", Preprocess(input="masked", channels=1, image_size=32), seed=2)
    files = [save_png(tmp_path / "img" / f"x{i}.png", radiograph(60 + 8 * i, 72, seed=i)) for i in range(3)]
    bundle = tmp_path / "bundle"
    export_masked_bundle(run, seg_run, bundle)
    listed = json.loads((bundle / "bundle.json").read_text())["files"]
    assert {"segmenter.safetensors", "segmenter.json"} <= set(listed)  # checksummed like every file
    assert "Lung masks are predicted for you" in (bundle / "README.md").read_text()

    # The reference: the segmenter's masks written by `segment predict`, given to `predict` as the user's own.
    masks = tmp_path / "masks"
    assert (
        main(["segment", "predict", str(seg_run), *map(str, files), "--out", str(masks), "--no-progress"])
        == 0
    )
    want = _predict_json(capsys, run, *files, "--mask-dir", masks)
    saved = tmp_path / "saved"
    got = _predict_json(capsys, bundle, *files, "--save-masks", saved)  # no --segmenter, no masks
    for g, w in zip(got, want):
        assert g["label"] == w["label"]
        np.testing.assert_allclose(
            [g["probabilities"][c] for c in CLASSES], [w["probabilities"][c] for c in CLASSES], atol=1e-6
        )
    for f in files:  # the masks used are the segmenter's
        np.testing.assert_array_equal(
            np.asarray(Image.open(saved / f"{f.stem}.png")), np.asarray(Image.open(masks / f"{f.stem}.png"))
        )

    # A damaged segmenter file is refused by the bundle's checksums, in one line.
    weights = bundle / "segmenter.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    assert main(["predict", str(bundle), str(files[0]), "--no-progress"]) == 2
    assert "segmenter.safetensors does not match the SHA-256" in _error(capsys)


def test_bad_segmenter_for_a_bundle(seg_run, tmp_path, capsys):
    raw = make_run(tmp_path / "raw", Preprocess(input="raw", channels=1, image_size=32))
    masked = make_run(tmp_path / "masked", Preprocess(input="masked", channels=1, image_size=32))
    cases = [
        ([raw, "--bundle", tmp_path / "b1", "--segmenter", seg_run], "takes raw images, which need no mask"),
        ([masked, "--bundle", tmp_path / "b2", "--segmenter", raw], "is a classifier run, not a segmenter"),
        ([masked, "--onnx", tmp_path / "m.onnx", "--segmenter", seg_run], "add --bundle DIR"),
    ]
    for argv, message in cases:
        assert main(["export", *map(str, argv)]) == 2
        assert message in _error(capsys)
    assert not any((tmp_path / n).exists() for n in ("b1", "b2", "m.onnx"))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 1.0 if not (a.any() or b.any()) else 2 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.mark.slow
def test_a_masked_bundle_runs_on_onnx_without_torch(seg_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import os
    import subprocess
    import sys
    import time

    from cxrtl.inference.predict import Predictor
    from cxrtl.segmentation.predict import Segmenter
    from cxrtl.segmentation.runtime import OnnxSegmenter

    run = make_run(tmp_path / "run", Preprocess(input="masked", channels=1, image_size=32), seed=2)
    files = [save_png(tmp_path / "img" / f"x{i}.png", radiograph(60 + 8 * i, 72, seed=i)) for i in range(4)]
    bundle = tmp_path / "bundle"
    export_masked_bundle(run, seg_run, bundle)
    listed = json.loads((bundle / "bundle.json").read_text())["files"]
    assert "segmenter.onnx" in listed
    record = json.loads((bundle / "best.decisions.json").read_text())
    assert record["segmenter"]["onnx"] == "segmenter.onnx" and len(record["segmenter"]["sha256"]) == 64

    # The ONNX masks match the torch masks (Dice >= 0.99 on each image).
    torch_seg, onnx_seg = (
        Segmenter.load(bundle / "segmenter.safetensors", "cpu"),
        OnnxSegmenter.load(bundle / "segmenter.onnx"),
    )
    grays = [np.asarray(Image.open(f)) for f in files]
    for g in grays:
        assert _dice(torch_seg.predict(g), onnx_seg.predict(g)) >= 0.99

    # Same rows, same keys, through both runtimes; the ONNX one never imports torch.
    want = _predict_json(capsys, bundle, *files, "--backend", "torch")
    got = _predict_json(capsys, bundle, *files, "--backend", "onnx")
    for g, w in zip(got, want):
        assert g.keys() == w.keys() and g["label"] == w["label"]
        np.testing.assert_allclose(
            [g["probabilities"][c] for c in CLASSES], [w["probabilities"][c] for c in CLASSES], atol=1e-4
        )
    code = (
        "import json, sys\n"
        "from cxrtl.cli import main\n"
        f"argv = ['predict', {str(bundle)!r}, *{[str(f) for f in files]!r}]\n"
        "rc = main([*argv, '--backend', 'onnx', '--format', 'json', '--no-progress'])\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(res.stdout)
    assert [r["label"] for r in rows] == [w["label"] for w in want]

    # Single-image latency of segment + classify, each runtime (printed for the record, not asserted).
    for backend in ("torch", "onnx"):
        p = Predictor.from_checkpoint(bundle, backend=backend, device="cpu")
        p.predict([str(files[0])])
        t0 = time.perf_counter()
        for _ in range(5):
            p.predict([str(files[0])])
        print(f"segment+classify {backend}: {(time.perf_counter() - t0) / 5 * 1000:.1f} ms/image")
