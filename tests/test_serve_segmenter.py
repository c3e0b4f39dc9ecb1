"""`cxrtl serve MASKED_MODEL --segmenter SEG_RUN`: each upload's lung mask is predicted, then classified."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'cxrtl[serve]'")
pytest.importorskip("httpx", reason="needs httpx (the dev extra)")
pytest.importorskip("segmentation_models_pytorch")
from fastapi.testclient import TestClient
from PIL import Image

from cxrtl.cli import main
from cxrtl.data.preprocess import Preprocess
from cxrtl.errors import CxrtlError
from cxrtl.inference.predict import Predictor
from cxrtl.serve.app import create_app
from helpers import export_masked_bundle, make_segmenter_run
from test_predict import CLASSES, make_run, radiograph, save_png

LOCAL = "http://localhost"  # the server accepts only its bound host and localhost names in Host


@pytest.fixture
def seg_run(tmp_path):
    return make_segmenter_run(tmp_path / "seg")


def test_masked_model_served_with_segmenter_equals_predict_with_its_masks(seg_run, tmp_path, capsys):
    run = make_run(tmp_path / "run", Preprocess(input="masked", channels=1, image_size=32), seed=2)
    files = [save_png(tmp_path / "img" / f"x{i}.png", radiograph(60 + 8 * i, 72, seed=i)) for i in range(3)]
    # The reference: masks written by `segment predict`, then given to `predict` as the user's own masks.
    masks = tmp_path / "masks"
    assert (
        main(["segment", "predict", str(seg_run), *map(str, files), "--out", str(masks), "--no-progress"])
        == 0
    )
    capsys.readouterr()
    pngs = sorted(masks.glob("*.png"))
    assert len(pngs) == 3 and all(0 < (np.asarray(Image.open(p)) > 0).mean() < 1 for p in pngs)  # real masks
    argv = [
        "predict",
        str(run),
        *map(str, files),
        "--mask-dir",
        str(masks),
        "--format",
        "json",
        "--no-progress",
    ]
    assert main(argv) == 0
    want = json.loads(capsys.readouterr().out)

    client = TestClient(create_app(Predictor.from_checkpoint(run, segmenter=seg_run)), base_url=LOCAL)
    assert client.get("/v1/model").json()["segmenter"] == seg_run.name  # its name, never a server path
    got = client.post(
        "/v1/predict", files=[("files", (f.name, f.read_bytes(), "application/octet-stream")) for f in files]
    )
    assert got.status_code == 200
    rows = got.json()
    assert [r.get("error") for r in rows] == [None] * 3
    for r, w in zip(rows, want):
        assert r["label"] == w["label"]
        np.testing.assert_allclose(
            [r["probabilities"][c] for c in CLASSES], [w["probabilities"][c] for c in CLASSES], atol=1e-6
        )


def test_masked_model_without_segmenter_and_a_classifier_as_segmenter_are_refused(tmp_path, capsys):
    run = make_run(tmp_path / "run", Preprocess(input="masked", channels=1, image_size=32))
    with pytest.raises(CxrtlError, match="--segmenter SEG_RUN"):
        create_app(Predictor.from_checkpoint(run))
    assert main(["serve", str(run), "--port", "0", "--segmenter", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a classifier run, not a segmenter" in err[0]


@pytest.mark.slow
def test_a_masked_bundle_serves_on_onnx_without_torch(seg_run, tmp_path):
    """serve --backend onnx on a masked model's bundle: masks from segmenter.onnx, no torch imported."""
    import os
    import subprocess
    import sys

    run = make_run(tmp_path / "run", Preprocess(input="masked", channels=1, image_size=32), seed=2)
    bundle = tmp_path / "bundle"
    export_masked_bundle(run, seg_run, bundle)
    image = save_png(tmp_path / "img" / "x.png", radiograph(64, 72, seed=1))
    code = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from cxrtl.serve.server import load_predictor\n"
        "from cxrtl.serve.app import create_app\n"
        f"p = load_predictor({str(bundle)!r}, backend='onnx')\n"
        "c = TestClient(create_app(p), base_url='http://localhost')\n"
        "info = c.get('/v1/model').json()\n"
        "assert info['backend'] == 'onnx' and info['segmenter'], info\n"
        f"r = c.post('/v1/predict', files=[('files', ('x.png', open({str(image)!r}, 'rb').read(), 'image/png'))])\n"
        "assert r.status_code == 200, r.text\n"
        "row = r.json()[0]\n"
        "assert 'error' not in row and row['label'], row\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=dict(os.environ)
    )
    assert res.returncode == 0, res.stderr[-2000:]
