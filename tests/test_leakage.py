"""Leakage checks on a split: cross-split duplicates and patients that straddle splits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxrtl.data.records import Record
from cxrtl.data.sources import load_dataset
from cxrtl.data.splits import make_split
from cxrtl.integrity import leakage
from test_dedup import cxr_like, save


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRTL_CACHE_DIR", str(tmp_path / "cache"))


def kermany(root, patients=4, per_patient=3):
    """A tiny Kermany-layout dataset: several images per patient, file names carrying the patient."""
    ds = root / "chest_xray"
    seed = 0
    for p in range(patients):
        for k in range(per_patient):
            seed += 1
            save(cxr_like(1000 + seed, 64), ds / "train" / "NORMAL" / f"IM-{p:04d}-{k:04d}.jpeg", quality=95)
            save(
                cxr_like(2000 + seed, 64),
                ds / "train" / "PNEUMONIA" / f"person{p}_bacteria_{k}.jpeg",
                quality=95,
            )
    return load_dataset(root)


def by_path(index):
    return {r.path: r for r in index.records}


def test_clean_grouped_split_is_ok(tmp_path):
    index = kermany(tmp_path)
    split = make_split(index, ratios=(0.5, 0.25, 0.25), seed=1, group_by="patient")
    result = leakage.check_split(index, split)
    assert result["ok"] is True
    assert result["exact"] == [] and result["near"] == [] and result["patients_straddling"] == []
    assert result["patients_known"] is True and result["images"] == len(index.records)


def test_image_level_split_straddles_patients(tmp_path):
    index = kermany(tmp_path)
    recs = by_path(index)
    split = {"train": [], "val": [], "test": []}
    for i, (_path, r) in enumerate(sorted(recs.items())):
        split[("train", "val", "test")[i % 3]].append(r)  # round robin: every patient lands in 3 splits
    result = leakage.check_split(index, split)
    assert result["ok"] is False
    patients = {p["patient"]: p["splits"] for p in result["patients_straddling"]}
    assert set(patients) == {f"IM-{p:04d}" for p in range(4)} | {f"person{p}" for p in range(4)}
    assert all(sum(s.values()) == 3 for s in patients.values())


def test_cross_split_duplicates_are_reported_with_their_splits(tmp_path):
    root = tmp_path / "ds"
    for label, s0 in (("A", 10), ("B", 20)):
        for i in range(4):
            save(cxr_like(s0 + i, 64), root / label / f"{label}{i}.png")
    save(cxr_like(10, 64), root / "A" / "A0-copy.png", compress_level=1)  # exact (same pixels)
    big = np.asarray(Image.fromarray(cxr_like(21, 64)).resize((128, 128), Image.BICUBIC))
    save(big, root / "B" / "B1-big.jpeg", quality=90)  # near
    save(cxr_like(12, 64), root / "A" / "A2-twin.png", compress_level=1)  # within train only: not leakage
    index = load_dataset(root)
    r = by_path(index)
    split = {
        "train": [r["A/A0.png"], r["B/B1-big.jpeg"], r["A/A2.png"], r["A/A2-twin.png"], r["B/B0.png"]],
        "val": [r["B/B1.png"], r["A/A1.png"]],
        "test": [r["A/A0-copy.png"], r["A/A3.png"], r["B/B2.png"], r["B/B3.png"]],
    }
    result = leakage.check_split(index, split)
    assert result["exact"] == [["A/A0.png", "A/A0-copy.png", "train", "test"]]
    assert [n[:2] + n[3:] for n in result["near"]] == [["B/B1-big.jpeg", "B/B1.png", "train", "val"]]
    assert result["pairs_by_splits"] == {"train-test": 1, "train-val": 1}
    assert result["patients_known"] is False and result["ok"] is False


def test_straddling_patients_on_records_in_memory():
    split = {
        "train": [Record("a", "X", patient_id="p1"), Record("b", "X", patient_id="p2")],
        "val": [Record("c", "X", patient_id="p1")],
        "test": [Record("d", "X", patient_id="p1"), Record("e", "X"), Record("f", "X", patient_id="p2")],
    }
    assert leakage.straddling_patients(split) == [
        {"patient": "p1", "splits": {"train": 1, "val": 1, "test": 1}},
        {"patient": "p2", "splits": {"train": 1, "test": 1}},
    ]


def test_data_check_with_split_reports_leakage(tmp_path, capsys):
    import json

    from cxrtl import cli
    from cxrtl.data.splits import write_split_csv

    index = kermany(tmp_path)
    recs = sorted(index.records, key=lambda r: r.path)
    split = {"train": recs[::3], "val": recs[1::3], "test": recs[2::3]}
    csv_path = tmp_path / "split.csv"
    write_split_csv(csv_path, split)
    assert (
        cli.main(["data", "check", str(tmp_path), "--split", str(csv_path), "--format", "json"]) == 1
    )  # leakage found: exit 1, like a linter
    report = json.loads(capsys.readouterr().out)
    assert report["leakage"]["ok"] is False and len(report["leakage"]["patients_straddling"]) == 8
