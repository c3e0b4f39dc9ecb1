"""Splits: seeded, stratified, ratio-checked, patient-grouped, official; the split CSV round-trips byte for byte."""

from __future__ import annotations

import pytest

from cxrtl.data.records import SPLITS, DatasetIndex, Record
from cxrtl.data.sources import load_dataset
from cxrtl.data.splits import default_ratios, make_split, parse_ratios, read_split_csv, write_split_csv
from cxrtl.errors import CxrtlError

THREE = ("train", "val", "test")  # the subsets three ratios fill (no calibration subset)


def _index(n_per_class=(50, 30, 20), patients=False) -> DatasetIndex:
    records = []
    for c, n in enumerate(n_per_class):
        for i in range(n):
            pid = f"p{c}-{i // 3}" if patients else None  # three images per patient
            records.append(Record(f"c{c}/{i:03d}.png", f"c{c}", None, pid))
    return DatasetIndex(
        root=None, layout="class-folders", classes=[f"c{c}" for c in range(len(n_per_class))], records=records
    )


def test_default_ratios_follow_the_paper_text():
    assert default_ratios("covid") == (0.7, 0.15, 0.15)
    assert default_ratios("pneumonia") == default_ratios("generic") == (0.7, 0.2, 0.1)


def test_split_is_stratified_and_follows_ratios():
    index = _index()
    split = make_split(index, ratios=(0.7, 0.2, 0.1), seed=1)
    assert sum(len(v) for v in split.values()) == 100
    assert len({r.path for v in split.values() for r in v}) == 100
    for c, n in (("c0", 50), ("c1", 30), ("c2", 20)):
        counts = [sum(r.label == c for r in split[s]) for s in THREE]
        assert counts == [round(n * 0.7), round(n * 0.2), n - round(n * 0.7) - round(n * 0.2)]


def test_same_seed_same_bytes_other_seed_differs(pneumonia_root, tmp_path):
    index = load_dataset(pneumonia_root)
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    write_split_csv(a, make_split(index, seed=7))
    write_split_csv(b, make_split(load_dataset(pneumonia_root), seed=7))
    write_split_csv(c, make_split(index, seed=8))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    header = a.read_text().splitlines()[0]
    assert header == "path,label,split,patient_id"


def test_split_csv_round_trip(covid_root, tmp_path):
    index = load_dataset(covid_root)
    split = make_split(index, seed=3)
    path = write_split_csv(tmp_path / "split.csv", split)
    assert path.read_text().splitlines()[0] == "path,label,split,mask_path"
    back = read_split_csv(path, index)
    assert {s: [r.path for r in v] for s, v in back.items()} == {
        s: [r.path for r in v] for s, v in split.items()
    }
    assert all(r.mask_path for v in back.values() for r in v)


@pytest.mark.parametrize("ratios", [(0.5, 0.5, 0.5), (0.7, 0.3), (0, 0.5, 0.5), (-0.1, 0.6, 0.5)])
def test_bad_ratios_are_refused(ratios):
    with pytest.raises(CxrtlError, match="ratios"):
        make_split(_index(), ratios=ratios)


def test_parse_ratios():
    assert parse_ratios("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    with pytest.raises(CxrtlError, match="not numbers"):
        parse_ratios("a,b,c")


def test_group_by_patient_keeps_each_patient_in_one_split():
    index = _index(patients=True)
    split = make_split(index, ratios=(0.6, 0.2, 0.2), seed=5, group_by="patient")
    where = {}
    for s, recs in split.items():
        for r in recs:
            assert where.setdefault(r.patient_id, s) == s
    sizes = {s: len(v) for s, v in split.items()}
    assert abs(sizes["train"] - 60) <= 6 and sizes["val"] > 0 and sizes["test"] > 0


def test_group_by_patient_on_kermany(pneumonia_root):
    split = make_split(load_dataset(pneumonia_root), group_by="patient", seed=2022)
    owners = {}
    for s, recs in split.items():
        for r in recs:
            owners.setdefault(r.patient_id, set()).add(s)
    assert all(len(v) == 1 for v in owners.values())
    index = load_dataset(pneumonia_root)
    assert {r.label for r in split["train"]} == set(index.classes)  # grouping keeps every class in training


def test_official_uses_kermany_folders(pneumonia_root, covid_root):
    index = load_dataset(pneumonia_root)
    split = make_split(index, official=True)
    assert all(r.source_split == s for s, recs in split.items() for r in recs)
    assert sum(len(v) for v in split.values()) == len(index.records)
    with pytest.raises(CxrtlError, match="official"):
        make_split(load_dataset(covid_root), official=True)


def test_reading_a_split_whose_files_vanished_names_them(covid_copy, tmp_path):
    index = load_dataset(covid_copy)
    path = write_split_csv(tmp_path / "split.csv", make_split(index))
    gone = index.records[0].path
    index.abspath(gone).unlink()
    with pytest.raises(CxrtlError, match="no longer exist") as err:
        read_split_csv(path, load_dataset(covid_copy))
    assert gone in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CxrtlError, match="does not exist"):
        read_split_csv(tmp_path / "nope.csv", index)


def test_four_ratios_make_a_calibration_subset_that_round_trips(tmp_path):
    index = _index()
    split = make_split(index, ratios=(0.7, 0.1, 0.05, 0.15), seed=1)
    assert list(split) == list(SPLITS) == ["train", "val", "calibration", "test"]
    # per class, by hand: largest-remainder counts of n * (0.7, 0.1, 0.05, 0.15)
    for c, want in (("c0", [35, 5, 3, 7]), ("c1", [21, 3, 2, 4]), ("c2", [14, 2, 1, 3])):
        got = [sum(r.label == c for r in split[s]) for s in SPLITS]
        assert sum(got) == sum(want) and all(abs(g - w) <= 1 for g, w in zip(got, want)), (c, got)
        assert got[2] >= 1
    path = write_split_csv(tmp_path / "split.csv", split)
    assert ",calibration" in path.read_text()
    for r in index.records:  # the files must exist for the split to be read back
        (tmp_path / r.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / r.path).write_bytes(b"")
    back = read_split_csv(path, DatasetIndex(tmp_path, "csv", index.classes, index.records))
    assert {s: [r.path for r in v] for s, v in back.items()} == {
        s: [r.path for r in v] for s, v in split.items()
    }


@pytest.mark.parametrize("patients", [False, True])
def test_calibration_fraction_comes_from_training_and_leaves_val_and_test(patients):
    index = _index((60, 30, 30), patients=patients)
    group_by = "patient" if patients else None
    plain = make_split(index, ratios=(0.7, 0.15, 0.15), seed=4, group_by=group_by)
    split = make_split(index, ratios=(0.7, 0.15, 0.15), seed=4, group_by=group_by, calibration_fraction=0.2)
    assert split["val"] == plain["val"] and split["test"] == plain["test"]
    assert sorted(r.path for r in split["train"] + split["calibration"]) == sorted(
        r.path for r in plain["train"]
    )
    for c in index.classes:
        n_train = sum(r.label == c for r in plain["train"])
        n_cal = sum(r.label == c for r in split["calibration"])
        assert abs(n_cal - 0.2 * n_train) <= (3 if patients else 0.5), (c, n_cal, n_train)
    if patients:
        where = {}
        for s in SPLITS:
            for r in split[s]:
                where.setdefault(r.patient_id, set()).add(s)
        assert all(len(v) == 1 for v in where.values())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"calibration_fraction": 1.0}, "--calibration-fraction must be in (0, 1)"),
        ({"calibration_fraction": 0.0}, "--calibration-fraction must be in (0, 1)"),
        ({"calibration_fraction": 0.1, "ratios": (0.7, 0.1, 0.05, 0.15)}, "four ratios already give"),
        ({"ratios": (0.5, 0.2, 0.1, 0.1, 0.1)}, "three values (train,val,test) or four"),
    ],
)
def test_bad_calibration_requests_are_refused(kwargs, message):
    with pytest.raises(CxrtlError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_split(_index(), seed=1, **kwargs)
