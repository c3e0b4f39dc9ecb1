"""ONNX export: dynamic batch, embedded metadata, parity with PyTorch, no torch at run time, foreign files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cxrtl.cli import main
from cxrtl.data.preprocess import Preprocess
from cxrtl.errors import CxrtlError
from cxrtl.inference.export import export_onnx
from cxrtl.inference.predict import Predictor
from test_predict import CLASSES, make_run, radiograph, save_png

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 1-channel calibrated run exported with the fast TorchScript exporter, and some images."""
    root = tmp_path_factory.mktemp("export")
    run = make_run(root / "run", Preprocess(input="raw", channels=1, image_size=32), seed=3, temperature=1.7)
    out = export_onnx(run, root / "model.onnx", exporter="torchscript")
    files = [save_png(root / "img" / f"i{i}.png", radiograph(40 + 8 * i, 56, seed=i)) for i in range(5)]
    return run, out, files


def test_metadata_and_dynamic_batch(exported):
    _, out, _ = exported
    proto = onnx.load(str(out))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["cxrtl.format"] == "cxrtl-onnx"
    assert json.loads(props["cxrtl.classes"]) == CLASSES
    pp = json.loads(props["cxrtl.preprocess"])
    assert pp == Preprocess(input="raw", channels=1, image_size=32).to_dict()
    assert props["cxrtl.backbone"] == "test_resnet" and json.loads(props["cxrtl.temperature"]) == 1.7
    (inp,) = proto.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # symbolic batch dimension
    assert [d.dim_value for d in dims[1:]] == [1, 32, 32]
    assert [o.name for o in proto.graph.output] == ["logits", "probabilities"]


def test_onnx_probabilities_match_pytorch(exported):
    run, out, files = exported
    torch_probs = Predictor.from_checkpoint(run).predict(files)
    onnx_pred = Predictor.from_checkpoint(out)
    assert onnx_pred.classes == CLASSES and onnx_pred.temperature == 1.7
    for batch_size in (1, 2, 5):  # dynamic batch, including a ragged last batch
        np.testing.assert_allclose(onnx_pred.predict(files, batch_size=batch_size), torch_probs, atol=1e-4)
    # the graph's own probabilities output applies the temperature too
    batch = np.stack([onnx_pred.prepare(f) for f in files])[:, None]
    graph_probs = onnx_pred.backend.session.run(["probabilities"], {"image": batch})[0]
    np.testing.assert_allclose(graph_probs, torch_probs, atol=1e-4)


def test_onnx_runs_without_torch(exported):
    run, out, files = exported
    want = Predictor.from_checkpoint(run).predict(files)
    code = (
        "import json, sys\n"
        "from cxrtl.inference.predict import Predictor\n"
        "from cxrtl.cli import main\n"
        f"p = Predictor.from_checkpoint({str(out)!r})\n"
        f"probs = p.predict({[str(f) for f in files]!r}).tolist()\n"
        f"rc = main(['predict', {str(out)!r}, {str(files[0])!r}, '--format', 'json'])\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(json.dumps(probs))\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert res.returncode == 0, res.stderr[-2000:]
    got = np.array(json.loads(res.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.slow
def test_dynamo_export_matches_with_dynamic_batch(tmp_path, capsys):
    # The default exporter (torch.export based); its fixed cost is several seconds even for a tiny model.
    run = make_run(tmp_path / "run", Preprocess(input="raw", channels=3, image_size=32), seed=4)
    assert main(["export", str(run), "--onnx", str(tmp_path / "d.onnx"), "--exporter", "dynamo"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'd.onnx'}"  # torch's chatter is not printed
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "d.onnx")).metadata_props}
    assert props["cxrtl.exporter"] == "dynamo"
    files = [save_png(tmp_path / f"i{i}.png", radiograph(seed=10 + i)) for i in range(3)]
    want = Predictor.from_checkpoint(run).predict(files)
    got = Predictor.from_checkpoint(tmp_path / "d.onnx")
    for batch_size in (1, 3):
        np.testing.assert_allclose(got.predict(files, batch_size=batch_size), want, atol=1e-4)


def test_foreign_and_corrupt_onnx_are_clear_errors(exported, tmp_path, capsys):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    with pytest.raises(CxrtlError, match="cxrtl did not write"):
        Predictor.from_checkpoint(foreign)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 20)
    with pytest.raises(CxrtlError, match="not a loadable ONNX"):
        Predictor.from_checkpoint(corrupt)
    _, _, files = exported
    assert main(["predict", str(foreign), str(files[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cxrtl: error:") and "did not write" in err and "\n" not in err


def test_export_cli_errors(exported, tmp_path, capsys):
    run, out, _ = exported
    assert main(["export", str(run), "--onnx", str(tmp_path / "x.txt")]) == 2
    assert main(["export", str(tmp_path), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert main(["export", str(out), "--onnx", str(tmp_path / "y.onnx")]) == 2  # an ONNX is not a checkpoint
    err = capsys.readouterr().err
    assert err.count("cxrtl: error:") == 3 and "Traceback" not in err
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()


def test_cam_needs_the_pytorch_checkpoint(exported, tmp_path, capsys):
    _, out, files = exported
    assert main(["predict", str(out), str(files[0]), "--cam", str(tmp_path / "cams")]) == 2
    assert "Grad-CAM" in capsys.readouterr().err
