"""`cxrtl train` picks the checkpoint by the chosen number, and a transfer inherits its source's input."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from cxrtl.cli import main

TINY = ["--backbone", "test_resnet", "--batch-size", "8", "--no-progress", "--device", "cpu"]


def _train(*args) -> int:
    return main(["train", *map(str, args), *TINY])


HISTORY = [  # validation accuracy ties on a small set while the loss differs a lot
    {"epoch": 1, "val_acc": 0.75, "val_loss": 1.90},
    {"epoch": 2, "val_acc": 0.75, "val_loss": 0.40},
    {"epoch": 3, "val_acc": 0.50, "val_loss": 0.35},
    {"epoch": 4, "val_acc": 0.50, "val_loss": 0.35},
]


@pytest.mark.parametrize(("select_by", "expected"), [("val_acc", 1), ("val_loss", 3)])
def test_select_by_picks_the_best_epoch_of_that_number(select_by, expected):
    from cxrtl.training.resume import FitState

    state = FitState(history=[])
    best = [row["epoch"] for row in HISTORY if state.record(dict(row), 1.0, by_loss=select_by == "val_loss")][
        -1
    ]
    assert best == state.best_epoch == expected  # highest accuracy / lowest loss; a tie keeps the earlier


def test_select_by_is_a_train_option_and_config_key(tmp_path):
    from cxrtl.cli import build_parser
    from cxrtl.commands.train import build_config

    cfg, _ = build_config(build_parser().parse_args(["train", "--data", "x", "--select-by", "val_loss"]))
    assert cfg.select_by == "val_loss"
    (tmp_path / "c.yaml").write_text("select_by: val_acc\n")
    cfg, _ = build_config(build_parser().parse_args(["train", "--config", str(tmp_path / "c.yaml")]))
    assert cfg.select_by == "val_acc"


def test_select_by_rejects_other_names(tmp_path, pneumonia_root, capsys):
    with pytest.raises(SystemExit) as exc:
        _train("--data", pneumonia_root, "--out", tmp_path / "r", "--select-by", "test_acc")
    assert exc.value.code == 2 and "val_acc" in capsys.readouterr().err


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, covid_root):
    run = tmp_path_factory.mktemp("src") / "covid-1ch-40"
    args = ["--init", "none", "--image-size", "40", "--channels", "1", "--epochs", "1"]
    assert _train("--data", covid_root, "--out", run, *args) == 0
    return run


def test_transfer_inherits_image_size_and_channels_from_its_source(source_run, pneumonia_root, tmp_path):
    out = tmp_path / "pneu"
    assert _train("--data", pneumonia_root, "--out", out, "--init", source_run, "--epochs", "1") == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["image_size"], cfg["channels"], cfg["input"]) == (40, 1, "raw")
    pp = json.loads((out / "best.json").read_text())["preprocess"]
    assert (pp["image_size"], pp["channels"]) == (40, 1)


def test_transfer_with_other_settings_says_so_once(source_run, pneumonia_root, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "pneu"
    args = ["--init", source_run, "--epochs", "1", "--image-size", "32"]
    assert _train("--data", pneumonia_root, "--out", out, *args) == 0
    differ = [
        r.getMessage() for r in caplog.records if "other input settings than its source" in r.getMessage()
    ]
    assert len(differ) == 1 and "--image-size 32 (source: 40)" in differ[0]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["image_size"], cfg["channels"]) == (32, 1)  # given kept, the rest inherited
