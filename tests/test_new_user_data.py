"""Defaults that must not be silent and one syntax everywhere: data split / check / train from a user's seat."""

from __future__ import annotations

import json
import logging

import pytest

from cxrtl.cli import build_parser, main
from cxrtl.commands.train import build_config


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("cxrtl: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err)
    return errors[0]


def test_group_by_patient_without_patient_ids_is_refused(covid_root, tmp_path, capsys):
    out = tmp_path / "split.csv"
    assert main(["data", "split", str(covid_root), "--out", str(out), "--group-by", "patient"]) == 2
    line = _error_line(capsys)
    assert "no patient ids" in line and "patient_id" in line
    assert not out.exists()


@pytest.mark.parametrize("form", [["0.6,0.2,0.2"], ["0.6", "0.2", "0.2"], ["0.6,", "0.2,0.2"]])
def test_data_split_ratios_comma_and_space_forms_agree(pneumonia_root, tmp_path, capsys, form):
    ref, got = tmp_path / "ref.csv", tmp_path / "got.csv"
    assert main(["data", "split", str(pneumonia_root), "--out", str(ref), "--ratios", "0.6,0.2,0.2"]) == 0
    assert main(["data", "split", str(pneumonia_root), "--out", str(got), "--ratios", *form]) == 0
    assert got.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("form", [["0.7,0.2,0.1"], ["0.7", "0.2", "0.1"]])
def test_train_ratios_take_the_comma_form_too(form):
    args = build_parser().parse_args(["train", "--data", "x", "--out", "y", "--ratios", *form])
    cfg, _ = build_config(args)
    assert cfg.ratios == [0.7, 0.2, 0.1]


def test_train_bad_ratios_is_one_line(capsys, tmp_path):
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--ratios", "a,b,c"]) == 2
    assert "not numbers" in _error_line(capsys)


def _image_level_split(root, tmp_path, capsys, *extra) -> str:
    split = tmp_path / "split.csv"
    assert main(["data", "split", str(root), "--out", str(split), "--seed", "1", *extra]) == 0
    capsys.readouterr()
    return str(split)


def test_check_exits_1_with_a_readable_summary_when_patients_straddle(pneumonia_root, tmp_path, capsys):
    split = _image_level_split(pneumonia_root, tmp_path, capsys)
    assert main(["data", "check", str(pneumonia_root), "--split", split]) == 1
    out = capsys.readouterr().out
    assert "patient(s) in more than one split" in out and "--group-by patient" in out
    assert '{"ok"' not in out and '"patients_straddling"' not in out
    assert main(["data", "check", str(pneumonia_root), "--split", split, "--format", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["leakage"]["ok"] is False and report["leakage"]["patients_straddling"]


def test_check_exits_0_on_a_patient_grouped_split(pneumonia_root, tmp_path, capsys):
    split = _image_level_split(pneumonia_root, tmp_path, capsys, "--group-by", "patient")
    assert main(["data", "check", str(pneumonia_root), "--split", split]) == 0
    assert "leakage: none" in capsys.readouterr().out


def test_train_on_a_leaking_split_warns_once_with_the_count(pneumonia_root, tmp_path, capsys, caplog):
    from cxrtl.data.sources import load_dataset
    from cxrtl.data.splits import read_split_csv
    from cxrtl.integrity.leakage import straddling_patients

    split = _image_level_split(pneumonia_root, tmp_path, capsys)
    n = len(straddling_patients(read_split_csv(split, load_dataset(pneumonia_root))))
    assert n > 0
    caplog.set_level(logging.WARNING)
    args = ["--backbone", "test_resnet", "--init", "none", "--image-size", "32", "--epochs", "1"]
    args += ["--device", "cpu", "--split", split]  # no --no-progress: stderr is not a terminal
    assert main(["train", "--data", str(pneumonia_root), "--out", str(tmp_path / "run"), *args]) == 0
    warnings = [r.getMessage() for r in caplog.records if "more than one split" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"{n} patient(s)")
    err = capsys.readouterr().err  # stderr is not a terminal here: no progress bars in the log
    assert "\r" not in err and "batch/s" not in err
