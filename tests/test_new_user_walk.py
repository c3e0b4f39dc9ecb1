"""A new user's second walk (issue 27): relative paths, another split, and messages that give a working fix."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from cxrtl.cli import main
from test_train_cli import FAST, _error


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory, synth_roots):
    """A run trained from its project folder with a relative --data, as a user types it."""
    project = tmp_path_factory.mktemp("project")
    shutil.copytree(synth_roots[0], project / "DATA" / "covid")
    here = os.getcwd()
    os.chdir(project)
    try:
        assert main(["train", "--data", "DATA/covid", "--out", "runs/a", *FAST]) == 0
    finally:
        os.chdir(here)
    return project, project / "runs" / "a"


def test_a_run_records_absolute_paths_and_evaluates_from_anywhere(relative_run, tmp_path, monkeypatch):
    project, run = relative_run
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (
        Path(config["data"]).is_absolute() and Path(config["data"]) == (project / "DATA" / "covid").resolve()
    )
    monkeypatch.chdir(tmp_path)  # another folder: no --data, the run knows its dataset
    assert (
        main(["evaluate", str(run), "--out", "e", "--no-figures", "--bootstrap", "0", "--no-progress"]) == 0
    )
    assert (tmp_path / "e" / "metrics.json").is_file()


def test_an_older_run_s_relative_root_is_found_beside_the_run(relative_run, tmp_path, monkeypatch):
    project, run = relative_run
    old = Path(shutil.copytree(run, project / "runs" / "old"))
    config = yaml.safe_load((old / "config.yaml").read_text())
    config["data"] = "DATA/covid"  # as 0.1 wrote it: relative to the folder training ran in
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    assert (
        main(["evaluate", str(old), "--out", "e", "--no-figures", "--bootstrap", "0", "--no-progress"]) == 0
    )


def test_another_split_warns_about_trained_images_and_refuses_to_fit_on_them(
    relative_run, tmp_path, capsys, caplog
):
    _, run = relative_run
    with open(run / "split.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    swapped = [{**r, "split": {"train": "test", "test": "train", "val": "val"}[r["split"]]} for r in rows]
    for r in swapped:  # and the training images become validation images too
        if r["split"] == "test" and hash(r["path"]) % 2:
            r["split"] = "val"
    other = tmp_path / "other.csv"
    with open(other, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(swapped)
    args = ["evaluate", str(run), "--split", str(other), "--no-figures", "--bootstrap", "0", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "e")]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["trained_on"]["trained_on"] == metrics["trained_on"]["n"] > 0
    assert "were training images of this run" in caplog.text
    capsys.readouterr()
    record = run / "best.decisions.json"  # training wrote the OOD guard there; a refused fit changes nothing
    before = record.read_bytes() if record.exists() else None
    assert main([*args, "--out", str(tmp_path / "f"), "--calibrate"]) == 2
    err = _error(capsys)
    assert "--calibrate would be fitted on" in err and "that the run trained on" in err
    assert (record.read_bytes() if record.exists() else None) == before
    assert not (tmp_path / "f" / "metrics.json").exists()


def test_a_missing_model_names_the_closest_run(relative_run, tmp_path, capsys):
    project, run = relative_run
    image = next((project / "DATA" / "covid").rglob("*.png"))
    assert main(["predict", str(project / "runs" / "aa"), str(image)]) == 2
    err = _error(capsys)
    assert f"did you mean {run}" in err and "hf://OWNER/NAME" in err


def test_a_misspelt_option_gets_the_command_s_usage_and_a_suggestion(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "runs/a", "--out", "x", "--positve", "COVID"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "usage: cxrtl evaluate" in err and "did you mean --positive?" in err


def test_a_smaller_dataset_gets_the_right_fix(relative_run, tmp_path, capsys):
    project, run = relative_run
    smaller = Path(shutil.copytree(project / "DATA" / "covid", tmp_path / "smaller"))
    removed = sorted(smaller.rglob("*.png"))[::3]
    for p in removed:
        p.unlink()
    args = ["evaluate", str(run), "--data", str(smaller), "--out", str(tmp_path / "e"), "--no-progress"]
    assert main(args) == 2
    err = _error(capsys)
    assert "the run's split names" in err and "--data should point at the run's dataset" in err
    assert "regenerate it with `cxrtl data split`" not in err  # the wrong fix for a trained run


def test_same_names_other_content_is_warned(relative_run, tmp_path, caplog):
    import numpy as np
    from PIL import Image

    project, run = relative_run
    other = Path(shutil.copytree(project / "DATA" / "covid", tmp_path / "other"))
    for p in other.rglob("*.png"):  # another version of the data: same names, other pixels
        if "mask" not in str(p).lower():
            a = np.asarray(Image.open(p))
            Image.fromarray(np.ascontiguousarray(a[::-1])).save(p)
    args = ["evaluate", str(run), "--data", str(other), "--out", str(tmp_path / "e"), "--no-progress"]
    assert main([*args, "--no-figures", "--bootstrap", "0"]) == 0
    assert "sampled training files of this run have other content" in caplog.text
    assert (run / "data_fingerprint.json").is_file()


@pytest.mark.parametrize("command", ["train", "segment"])
def test_offline_imagenet_init_is_one_line_in_seconds_before_any_cache(
    command, synth_roots, tmp_path, capsys
):
    """No network here is the real condition: the default --init imagenet fails fast, before decoding images."""
    import time

    pytest.importorskip("segmentation_models_pytorch")
    cache = tmp_path / "cache"
    if command == "train":
        argv = [
            "train",
            "--data",
            str(synth_roots[0]),
            "--out",
            str(tmp_path / "r"),
            "--backbone",
            "resnet18",
        ]
    else:
        argv = ["segment", "train", "--data", str(synth_roots[0]), "--out", str(tmp_path / "r")]
    start = time.monotonic()
    assert main([*argv, "--cache-dir", str(cache)] if command == "train" else argv) == 2
    assert time.monotonic() - start < 15
    err = _error(capsys)
    assert "ImageNet weights" in err and "--init none" in err
    assert not (tmp_path / "r").exists() and not cache.exists()


def test_a_folder_walk_says_what_it_skipped(tmp_path, caplog):
    from cxrtl.data.inputs import collect_inputs

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    assert collect_inputs([tmp_path / "in"]) == [tmp_path / "in" / "a.png"]
    assert "skipped 1 file(s)" in caplog.text and "notes.txt" in caplog.text


def test_a_conformal_refusal_gives_the_fix_that_works_after_the_other_fits(relative_run, tmp_path, capsys):
    project, run = relative_run
    run = Path(shutil.copytree(run, tmp_path / "run"))
    args = [
        "evaluate",
        str(run),
        "--out",
        str(tmp_path / "e"),
        "--no-figures",
        "--bootstrap",
        "0",
        "--no-progress",
    ]
    assert main([*args, "--calibrate", "--conformal", "0.1"]) == 2
    err = _error(capsys)
    assert "needs at least 20 validation images" in err and "--ratios" in err and "cxrtl train --split" in err
    assert "larger alpha" not in err  # at alpha 0.1 the minimum of 20 does not depend on alpha
    assert "--calibrate fitted and stored" in err
    record = json.loads((run / "best.decisions.json").read_text())
    assert record["temperature"] and record["conformal"] is None
    assert (tmp_path / "e" / "metrics.json").is_file()
