"""Noise a user should not see: progress bars in redirected logs, exporter INFO lines, doubled messages."""

from __future__ import annotations

import logging
import re
import types

import pytest

from cxrtl.cli import main


def test_data_synth_draws_no_bars_when_stderr_is_not_a_terminal(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "a"), "--count", "12"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "img/s" not in err


def test_bars_on_a_terminal_unless_no_progress(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(["data", "synth", str(tmp_path / "a"), "--count", "12"]) == 0
    assert "img/s" in capsys.readouterr().err
    assert main(["data", "synth", str(tmp_path / "b"), "--count", "12", "--no-progress"]) == 0
    assert "img/s" not in capsys.readouterr().err


def test_data_cache_says_built_or_reused_once(covid_root, capsys, caplog):
    caplog.set_level(logging.INFO)
    for state in ("built", "reused"):
        assert main(["data", "cache", str(covid_root), "--image-size", "16"]) == 0
        out = capsys.readouterr()
        said = [line for line in (out.out + out.err).splitlines() if " cache " in line]
        said += [r.getMessage() for r in caplog.records if r.name == "cxrtl.data.cache"]
        assert len(said) == 1 and said[0].startswith(state), said
        caplog.clear()


@pytest.mark.parametrize(("verbose", "shown"), [([], False), (["-v"], True)])
def test_export_keeps_onnxscript_info_for_verbose(tmp_path, caplog, verbose, shown):
    import torch

    from cxrtl.checkpoint import save_checkpoint
    from cxrtl.data import Preprocess
    from cxrtl.transfer import create_model

    torch.manual_seed(0)
    model = create_model("test_resnet", ["NORMAL", "PNEUMONIA"], in_chans=3, init="none")
    save_checkpoint(tmp_path / "best", model, {"preprocess": Preprocess("raw", 3, 32).to_dict()})
    caplog.set_level(logging.DEBUG)
    assert (
        main([*verbose, "export", str(tmp_path / "best.safetensors"), "--onnx", str(tmp_path / "m.onnx")])
        == 0
    )
    chatty = [
        r
        for r in caplog.records
        if r.name.startswith(("onnxscript", "onnx_ir")) and r.levelno <= logging.INFO
    ]
    assert bool(chatty) is shown
    for name in ("onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_class_weights_are_logged_with_four_significant_digits(caplog):
    from cxrtl.config import TrainConfig
    from cxrtl.training.losses import training_loss

    labels = [0] * 3616 + [1] * 6012 + [2] * 10192 + [3] * 1345  # the COVID database's counts
    classes = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    caplog.set_level(logging.INFO)
    training_loss(TrainConfig(loss="wce-1cf"), types.SimpleNamespace(labels=labels), classes)
    text = next(r.getMessage() for r in caplog.records if "class weights" in r.getMessage())
    total = len(labels)
    expected = [f"{c} {1 - labels.count(i) / total:.4g}" for i, c in enumerate(classes)]
    assert text.endswith("class weights " + ", ".join(expected)), text
    assert not re.search(r"\d\.\d{5,}", text)
