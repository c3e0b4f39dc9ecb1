"""int8 export: onnxruntime static quantization calibrated on val, compared with fp32 on test, in the card."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow  # one quantization of a tiny model: about 10 s on 2 cores

from cxrtl import machine
from cxrtl.cli import main
from cxrtl.data import load_dataset
from cxrtl.data.splits import read_split_csv
from cxrtl.errors import CxrtlError
from cxrtl.inference.bundle import make_bundle
from cxrtl.inference.predict import Predictor
from test_bundle import card_parts, make_covid_run


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, covid_root):
    root = tmp_path_factory.mktemp("int8")
    run = make_covid_run(root / "run", covid_root)
    bundle = root / "bundle"
    meta = make_bundle(
        run, bundle, int8=True, calibration_data=covid_root, calibration_images=5, exporter="torchscript"
    )
    return run, bundle, meta


def test_int8_model_is_quantized_and_close_to_fp32(quantized, covid_root):
    import onnx

    run, bundle, meta = quantized
    proto = onnx.load(str(bundle / "model.int8.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ form
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["cxrtl.classes"]) == meta["classes"]
    assert (bundle / "model.int8.onnx").stat().st_size < 0.5 * (bundle / "model.onnx").stat().st_size

    # the reported comparison, recomputed independently on the run's test split through the Predictor
    index = load_dataset(covid_root)
    test = read_split_csv(run / "split.csv", index)["test"]
    files = [index.abspath(r.path) for r in test]
    labels = np.array([meta["classes"].index(r.label) for r in test])
    p32 = Predictor.from_checkpoint(bundle / "model.onnx").predict(files)
    p8 = Predictor.from_checkpoint(bundle / "model.int8.onnx").predict(files)
    q = meta["int8"]
    assert q["calibration_images"] == 5 and q["calibration_split"] == "val"
    assert q["test_images"] == len(test)
    assert q["accuracy_fp32"] == pytest.approx(float((p32.argmax(1) == labels).mean()))
    assert q["accuracy_int8"] == pytest.approx(float((p8.argmax(1) == labels).mean()))
    assert q["max_prob_diff"] == pytest.approx(float(np.abs(p32 - p8).max()), abs=1e-6)
    assert q["label_agreement"] == pytest.approx(float((p32.argmax(1) == p8.argmax(1)).mean()))
    assert 0 < q["max_prob_diff"] < 0.1


def test_int8_figures_are_in_the_card(quantized):
    _, bundle, meta = quantized
    _, body = card_parts(bundle)
    q = meta["int8"]
    assert "## int8 model" in body
    assert f"difference {100 * q['accuracy_diff']:+.1f} points" in body
    assert f"Largest probability difference: {q['max_prob_diff']:.4f}" in body
    # the speed-up depends on the CPU (VNNI/AMX or not), so the card names the one it was measured on
    cpu = machine.cpu_summary(machine.describe(gpu=False))
    assert q["speed_cpu"] == cpu and q["speedup"] > 0
    assert f"- Speed: int8 {q['speedup']:.2f}x fp32 over that pass, measured on {cpu}." in body


def test_int8_export_says_what_to_expect_on_a_cpu_without_vnni(
    quantized, covid_root, tmp_path, monkeypatch, capsys
):
    # No CPU without VNNI/AMX can be had on demand, so cxrtl.machine reads an AVX2-only EPYC's /proc/cpuinfo.
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx avx2 fma\n")
    monkeypatch.setattr(machine, "CPUINFO", str(cpuinfo))
    run, _, _ = quantized
    argv = ["export", str(run), "--onnx", str(tmp_path / "m.onnx"), "--int8", "--calibration-data"]
    assert main([*argv, str(covid_root), "--calibration-images", "4", "--exporter", "torchscript"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"int8 \d+\.\d\dx as fast on AMD EPYC 7B12, \d+ cores \(AVX2\)\n", out)
    note = [line for line in out.splitlines() if line.startswith("note: ")]
    assert len(note) == 1
    assert re.fullmatch(
        r"note: this CPU has no VNNI/AMX: int8 will be about as fast as fp32 here; the gain is a "
        r"[3-5]\.\dx smaller file",
        note[0],
    )
    assert (tmp_path / "m.onnx").is_file()


def test_int8_with_other_classes_is_refused(quantized, pneumonia_root, tmp_path, capsys):
    run, _, _ = quantized
    argv = ["export", str(run), "--onnx", str(tmp_path / "m.onnx"), "--int8", "--calibration-data"]
    assert main([*argv, str(pneumonia_root), "--exporter", "torchscript"]) == 2
    err = capsys.readouterr().err
    assert "has classes ['NORMAL', 'PNEUMONIA'], the model" in err and err.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(CxrtlError, match="--calibration-data"):
        make_bundle(run, tmp_path / "b", int8=True)
