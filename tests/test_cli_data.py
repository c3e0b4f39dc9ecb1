"""`cxrtl data ...` from a user's seat: outputs, JSON report, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cxrtl.cli import main


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("cxrtl: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err)
    return errors[0]


def test_synth_then_check_json(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "out"), "--count", "12", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "COVID-19_Radiography_Dataset" in out and "chest_xray" in out
    assert main(["data", "check", str(tmp_path / "out" / "chest_xray"), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "kermany" and report["classes"] == ["NORMAL", "PNEUMONIA"]
    assert sum(report["counts"].values()) == report["total"] and report["with_mask"] == 0
    assert report["patients"] >= 2 and report["skipped"] == []


def test_check_text_lists_skipped(covid_root, capsys):
    assert main(["data", "check", str(covid_root)]) == 0
    out = capsys.readouterr().out
    assert "covid-radiography layout" in out and "Viral Pneumonia" in out
    assert "COVID.metadata.xlsx: not an image" in out


def test_check_json_counts_masks_and_split(covid_root, tmp_path, capsys):
    split = tmp_path / "split.csv"
    assert main(["data", "split", str(covid_root), "--out", str(split), "--seed", "5"]) == 0
    capsys.readouterr()
    assert main(["data", "check", str(covid_root), "--format", "json", "--split", str(split)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["with_mask"] == report["total"] == 60 and report["patients"] is None
    assert {s["reason"] for s in report["skipped"]} == {"not an image"}
    assert sum(sum(v.values()) for v in report["split"].values()) == 60


def test_split_is_byte_identical_and_options_work(pneumonia_root, tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    args = [
        "data",
        "split",
        str(pneumonia_root),
        "--ratios",
        "0.6,0.2,0.2",
        "--seed",
        "3",
        "--group-by",
        "patient",
    ]
    assert main(args + ["--out", str(a)]) == 0 and main(args + ["--out", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_text().splitlines()[0] == "path,label,split,patient_id"
    assert main(["data", "split", str(pneumonia_root), "--official", "--out", str(a)]) == 0
    rows = [line.split(",") for line in a.read_text().splitlines()[1:]]
    assert all(path.startswith(split + "/") for path, _, split, *_ in rows)


def test_cache_builds_then_reuses(covid_root, tmp_path, capsys):
    split = tmp_path / "split.csv"
    assert main(["data", "split", str(covid_root), "--out", str(split)]) == 0
    args = [
        "data",
        "cache",
        str(covid_root),
        "--split",
        str(split),
        "--input",
        "masked",
        "--channels",
        "1",
        "--image-size",
        "24",
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    assert main(args) == 0
    assert "built cache" in capsys.readouterr().out
    assert main(args) == 0
    assert "reused cache" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["no-layout", "empty-class", "ratios", "vanished", "unwritable", "masked"])
def test_bad_input_is_one_line_exit_2_nothing_written(case, covid_copy, pneumonia_root, tmp_path, capsys):
    out = tmp_path / "split.csv"
    if case == "no-layout":
        (tmp_path / "empty").mkdir()
        argv, expect = ["data", "check", str(tmp_path / "empty")], "no recognisable dataset layout"
    elif case == "empty-class":
        for f in (covid_copy / "COVID" / "images").iterdir():
            f.unlink()
        argv, expect = ["data", "split", str(covid_copy), "--out", str(out)], "no usable images"
    elif case == "ratios":
        argv, expect = (
            ["data", "split", str(covid_copy), "--out", str(out), "--ratios", "0.7,0.2,0.2"],
            "sum to",
        )
    elif case == "vanished":
        assert main(["data", "split", str(covid_copy), "--out", str(tmp_path / "s.csv")]) == 0
        (covid_copy / "Normal" / "images" / "Normal-3.png").unlink()
        argv = ["data", "cache", str(covid_copy), "--split", str(tmp_path / "s.csv")]
        expect = "Normal/images/Normal-3.png"
    elif case == "unwritable":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "split.csv"
        argv, expect = ["data", "split", str(covid_copy), "--out", str(out)], "cannot "
    else:
        argv = ["data", "cache", str(pneumonia_root), "--input", "masked", "--cache-dir", str(tmp_path / "c")]
        expect = "masked input needs lung masks"
    capsys.readouterr()
    assert main(argv) == 2
    assert expect in _error_line(capsys)
    assert not out.exists() and not (tmp_path / "c").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".split.csv")]


def test_real_process_reports_errors_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "cxrtl", "data", "check", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("cxrtl: error: no recognisable dataset layout")
    assert "Traceback" not in proc.stderr


def test_split_with_a_calibration_subset(pneumonia_root, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert (
        main(["data", "split", str(pneumonia_root), "--ratios", "0.7,0.1,0.05,0.15", "--out", str(out)]) == 0
    )
    assert "calibration" in capsys.readouterr().out
    assert {line.split(",")[2] for line in out.read_text().splitlines()[1:]} == {
        "train",
        "val",
        "calibration",
        "test",
    }
    # the official folders stay as they are; a tenth of the training images become calibration images
    assert (
        main(
            [
                "data",
                "split",
                str(pneumonia_root),
                "--official",
                "--calibration-fraction",
                "0.1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    assert all(
        path.startswith("train/" if split == "calibration" else split + "/") for path, _, split, *_ in rows
    )
    assert sum(split == "calibration" for _, _, split, *_ in rows) >= 1
    assert (
        main(
            [
                "data",
                "split",
                str(pneumonia_root),
                "--calibration-fraction",
                "1.5",
                "--out",
                str(tmp_path / "x.csv"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("cxrtl: error: --calibration-fraction must be in (0, 1)") and "\n" not in err
    assert not (tmp_path / "x.csv").exists()
