"""External validation: a manifest from a collection's metadata table, evaluate through a class map, the
overlap check, and `cxrtl compare` of internal beside external."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrtl.cli import main
from cxrtl.data.manifest import build_manifest
from cxrtl.errors import CxrtlError
from cxrtl.evaluation.external import parse_class_map

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]  # the synthetic COVID set's
# The covid-chestxray-dataset's metadata.csv columns (Cohen et al.), in its order
COHEN_COLUMNS = [
    "patientid",
    "offset",
    "sex",
    "age",
    "finding",
    "RT_PCR_positive",
    "survival",
    "intubated",
    "went_icu",
    "needed_supplemental_O2",
    "extubated",
    "temperature",
    "pO2_saturation",
    "leukocyte_count",
    "neutrophil_count",
    "lymphocyte_count",
    "view",
    "modality",
    "date",
    "location",
    "folder",
    "filename",
    "doi",
    "url",
    "license",
    "clinical_notes",
    "other_notes",
]


def cohen_table(folder: Path, images: Path, rows: list[tuple[str, str, str, str, str]]) -> Path:
    """metadata.csv in the covid-chestxray-dataset's format: (patientid, finding, view, modality, filename)."""
    table = folder / "metadata.csv"
    with open(table, "w", newline="") as fh:
        w = csv.DictWriter(fh, COHEN_COLUMNS)
        w.writeheader()
        for pid, finding, view, modality, filename in rows:
            w.writerow(
                {
                    "patientid": pid,
                    "finding": finding,
                    "view": view,
                    "modality": modality,
                    "folder": images.name,
                    "filename": filename,
                    "license": "CC BY",
                }
            )
    return table


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _image(path: Path, seed: int, size: int = 48) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = (
        80
        + 90 * np.exp(-(((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2))
        + rng.normal(0, 10, (size, size))
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def collection(tmp_path):
    """An external collection: images/ and a Cohen-format metadata.csv, with lateral views, a CT, a missing
    file and labels of the collection's own names."""
    images = tmp_path / "covid-chestxray-dataset" / "images"
    rows = []
    findings = (
        ["Pneumonia/Viral/COVID-19"] * 6
        + ["No Finding"] * 5
        + ["Pneumonia/Viral/SARS"] * 3
        + ["Pneumonia/Bacterial/Streptococcus"] * 2
    )
    for i, finding in enumerate(findings):
        name = f"img{i:02d}.png"
        _image(images / name, seed=100 + i)
        rows.append((f"p{i // 2}", finding, "PA" if i % 4 else "AP", "X-ray", name))
    rows.append(("p90", "Pneumonia/Viral/COVID-19", "L", "X-ray", "lateral.png"))  # a lateral view
    _image(images / "lateral.png", seed=7)
    rows.append(("p91", "Pneumonia/Viral/COVID-19", "Axial", "CT", "ct.png"))
    rows.append(("p92", "No Finding", "PA", "X-ray", "gone.png"))  # listed, never downloaded
    return cohen_table(images.parent, images, rows), images


def manifest(table, images, path_column: str, out, *options: str) -> int:
    """``cxrtl data manifest`` on ``table`` with label column ``finding``; its exit code."""
    return main(
        ["data", "manifest", str(table), "--images", str(images), "--path-column", path_column]
        + ["--label-column", "finding", *options, "--out", str(out)]
    )


def test_manifest_from_a_cohen_table(collection, tmp_path, capsys):
    table, images = collection
    out = tmp_path / "external.csv"
    code = manifest(
        table,
        images,
        "filename",
        out,
        "--patient-column",
        "patientid",
        "--where",
        "view=PA,AP",
        "--where",
        "modality=X-ray",
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert (
        "wrote" in printed
        and "16 of 19 rows" in printed
        and "1 row(s) name a file that is not there" in printed
    )
    rows = _rows(out)
    assert len(rows) == 16 and set(rows[0]) == {"path", "label", "patient_id"}
    assert {r["label"] for r in rows} == {
        "Pneumonia/Viral/COVID-19",
        "No Finding",
        "Pneumonia/Viral/SARS",
        "Pneumonia/Bacterial/Streptococcus",
    }  # source names kept
    assert (out.parent / rows[0]["path"]).resolve() == (images / "img00.png").resolve()
    from cxrtl.data import load_dataset

    assert len(load_dataset(out).records) == 16  # a manifest the dataset loader reads


def test_manifest_from_an_excel_table(collection, tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    table, images = collection
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["patientid", "imagename", "finding"])  # the Figure1/Actualmed layout
    for i in range(4):
        sheet.append([f"p{i}", f"img{i:02d}.png", "COVID-19" if i % 2 else "No finding"])
    sheet.append(["p9", "absent.png", "COVID-19"])
    book.save(tmp_path / "figure1.xlsx")
    report = build_manifest(tmp_path / "figure1.xlsx", images, tmp_path / "m.csv", "imagename", "finding")
    assert report["written"] == 4 and report["missing_files"] == 1
    assert report["labels"] == {"COVID-19": 2, "No finding": 2}


def test_manifest_bad_input_is_one_line(collection, tmp_path, capsys):
    table, images = collection
    code = manifest(table, images, "imagename", tmp_path / "m.csv")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "no column --path-column 'imagename'" in err[0] and "patientid, offset, sex" in err[0]
    assert not (tmp_path / "m.csv").exists()
    code = manifest(table, images, "filename", tmp_path / "m.csv", "--where", "view")
    assert code == 2 and "COLUMN=VALUE" in capsys.readouterr().err


def test_class_map_inline_yaml_and_unknown_class(tmp_path):
    assert parse_class_map("COVID-19=COVID, No finding = Normal", CLASSES) == {
        "COVID-19": "COVID",
        "No finding": "Normal",
    }
    (tmp_path / "map.yaml").write_text("Pneumonia/Viral/COVID-19: COVID\nNo Finding: Normal\n")
    assert parse_class_map(str(tmp_path / "map.yaml"), CLASSES)["No Finding"] == "Normal"
    with pytest.raises(
        CxrtlError,
        match="'Pneumonia', which the model does not have; its classes are COVID, "
        "Lung_Opacity, Normal, Viral Pneumonia",
    ):
        parse_class_map("Pneumonia/Bacterial=Pneumonia", CLASSES)
    with pytest.raises(CxrtlError, match="SOURCE=CLASS"):
        parse_class_map("COVID-19", CLASSES)


# -------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def run(tmp_path_factory, covid_root):
    """An untrained 4-class test_resnet run at 32 px on the synthetic COVID set (config records the data)."""
    import torch

    from cxrtl.checkpoint import save_checkpoint
    from cxrtl.data import Preprocess, load_dataset, make_split, write_split_csv
    from cxrtl.transfer import create_model

    run = tmp_path_factory.mktemp("ext") / "run"
    run.mkdir()
    write_split_csv(run / "split.csv", make_split(load_dataset(covid_root), ratios=(0.5, 0.25, 0.25), seed=0))
    torch.manual_seed(0)
    model = create_model("test_resnet", CLASSES, in_chans=3, init="none")
    pp = Preprocess("raw", 3, 32)
    save_checkpoint(
        run / "best",
        model,
        {"preprocess": pp.to_dict(), "epoch": 1, "config": {"seed": 0, "data": str(covid_root)}},
    )
    return run


def _manifest(collection, tmp_path) -> Path:
    table, images = collection
    build_manifest(
        table,
        images,
        tmp_path / "external.csv",
        "filename",
        "finding",
        "patientid",
        ["view=PA,AP", "modality=X-ray"],
    )
    return tmp_path / "external.csv"


MAP = "Pneumonia/Viral/COVID-19=COVID,No Finding=Normal,Pneumonia/Viral/SARS=Viral Pneumonia"


@pytest.mark.slow
def test_external_evaluation_through_a_class_map_and_compare(run, collection, tmp_path, capsys):
    manifest = _manifest(collection, tmp_path)
    internal, external = tmp_path / "internal", tmp_path / "external"
    assert main(["evaluate", str(run), "--out", str(internal), "--bootstrap", "50", "--no-progress"]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                str(run),
                "--data",
                str(manifest),
                "--class-map",
                MAP,
                "--out",
                str(external),
                "--bootstrap",
                "50",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert printed.startswith("external: n=14") and "Pneumonia/Bacterial/Streptococcus 2" in printed
    m = json.loads((external / "metrics.json").read_text())
    ext = m["external"]
    assert m["source"]["subset"] == "external" and m["n"] == 14
    assert ext["dropped_per_label"] == {"Pneumonia/Bacterial/Streptococcus": 2}
    assert ext["kept_per_class"] == {"COVID": 6, "Lung_Opacity": 0, "Normal": 5, "Viral Pneumonia": 3}
    assert ext["absent_classes"] == ["Lung_Opacity"] and "Lung_Opacity" in ext["note"]
    assert ext["overlap"]["checked"] and ext["overlap"]["overlap"] == 0
    # nothing averaged over the absent class
    assert m["per_class"]["Lung_Opacity"]["recall"] is None and m["roc_auc"]["Lung_Opacity"] is None
    assert m["macro"]["over"] == ["COVID", "Normal", "Viral Pneumonia"]
    f1 = [m["per_class"][c]["f1"] for c in ("COVID", "Normal", "Viral Pneumonia")]
    assert m["macro"]["f1"] == pytest.approx(np.mean(f1))
    rows = _rows(external / "predictions.csv")
    assert {(r["source_label"], r["label"]) for r in rows} == {
        ("Pneumonia/Viral/COVID-19", "COVID"),
        ("No Finding", "Normal"),
        ("Pneumonia/Viral/SARS", "Viral Pneumonia"),
    }
    report = (external / "report.md").read_text()
    assert (
        "## External set" in report
        and "Dropped (label not mapped): Pneumonia/Bacterial/Streptococcus 2" in report
    )

    out = tmp_path / "cmp"
    assert main(["compare", str(internal), str(external), "--out", str(out), "--bootstrap", "200"]) == 0
    cmp = json.loads((out / "comparison.json").read_text())
    assert cmp["shared_classes"] == ["COVID", "Normal", "Viral Pneumonia"]
    names = [r["metric"] for r in cmp["metrics"]]
    assert names[:2] == ["accuracy", "macro F1"] and "recall COVID" in names and "auc Normal" in names
    acc = cmp["metrics"][0]
    lo, hi = acc["differences"][0]["ci"]
    assert lo <= acc["differences"][0]["difference"] <= hi and all(v["ci"] for v in acc["values"])
    text = (out / "report.md").read_text()
    assert "| accuracy |" in text and "roc_shared.png" in text and (out / "roc_shared.png").is_file()
    assert "not paired" in text


def test_compare_refuses_the_same_images_twice_and_other_models(run, tmp_path, capsys):
    a = tmp_path / "a"
    assert (
        main(["evaluate", str(run), "--out", str(a), "--bootstrap", "0", "--no-figures", "--no-progress"])
        == 0
    )
    shutil.copytree(a, tmp_path / "b")
    capsys.readouterr()
    assert main(["compare", str(a), str(tmp_path / "b"), "--out", str(tmp_path / "c")]) == 2
    assert "scored the same images" in capsys.readouterr().err
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    m["source"]["weights_sha256"] = "0" * 64
    m["source"]["data"] = "elsewhere"
    (tmp_path / "b" / "metrics.json").write_text(json.dumps(m))
    assert main(["compare", str(a), str(tmp_path / "b"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different models" in err[0] and "--allow-different-models" in err[0]
    assert not (tmp_path / "c").exists()


def test_overlap_with_training_is_refused_unless_allowed(run, covid_root, collection, tmp_path, capsys):
    table, images = collection
    split = _rows(run / "split.csv")
    train = next(r for r in split if r["split"] == "train")
    shutil.copy(covid_root / train["path"], images / "img00.png")  # a training image re-published
    manifest = _manifest(collection, tmp_path)
    args = [
        "evaluate",
        str(run),
        "--data",
        str(manifest),
        "--class-map",
        MAP,
        "--bootstrap",
        "0",
        "--no-figures",
        "--no-progress",
        "--out",
    ]
    assert main([*args, str(tmp_path / "e1")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 image(s) of the external set duplicate images the model was trained" in err[0]
    assert not (tmp_path / "e1" / "metrics.json").exists()
    assert main([*args, str(tmp_path / "e2"), "--allow-overlap"]) == 0
    m = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert m["external"]["overlap"]["overlap"] == 1 and m["external"]["overlap"]["allowed"]
    assert "not a clean external validation" in (tmp_path / "e2" / "report.md").read_text()


def test_class_map_bad_input_is_one_line(run, collection, tmp_path, capsys):
    manifest = _manifest(collection, tmp_path)
    base = ["evaluate", str(run), "--data", str(manifest), "--out", str(tmp_path / "e"), "--no-progress"]
    for cmap, message in (
        ("COVID-19=Pneumonia", "which the model does not have; its classes are COVID, Lung_Opacity"),
        ("Pneumonia/Fungal=COVID", "the class map leaves no image"),
    ):
        assert main([*base, "--class-map", cmap]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    assert main(base) == 2  # labels the model does not have, without a map
    assert "map them with --class-map" in capsys.readouterr().err
