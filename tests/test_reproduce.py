"""`cxrtl reproduce`: plans, a tiny end-to-end reproduction checked against its report, and bad input."""

from __future__ import annotations

import csv
import json

import pytest

from browser import SKIP_REASON, playwright_or_none, render
from cxrtl.cli import main
from cxrtl.errors import CxrtlError
from cxrtl.paper.experiments import COVID_BEST, plan_runs

TINY = [
    "--profile",
    "quick",
    "--backbone",
    "test_resnet",
    "--image-size",
    "32",
    "--epochs",
    "1",
    "--max-per-class",
    "0",
    "--no-progress",
]


def _args(covid, pneumonia, out, *extra):
    return [
        "reproduce",
        "--covid",
        str(covid),
        "--pneumonia",
        str(pneumonia),
        "--out",
        str(out),
        *TINY,
        *extra,
    ]


def _split_rows(path) -> set[tuple[str, str]]:
    with open(path, newline="") as fh:
        return {(r["path"], r["split"]) for r in csv.DictReader(fh)}


def test_segmenter_step_is_checked_before_training(covid_root):
    from cxrtl.paper.experiments import get_profile
    from cxrtl.paper.reproduce import ReproduceOptions, _plan_segmenter
    from cxrtl.paper.segmenter import segmenter_init

    pytest.importorskip("segmentation_models_pytorch")
    from cxrtl.data import load_dataset

    covid = load_dataset(covid_root)
    opts = ReproduceOptions(covid=str(covid_root), pneumonia=None, out="unused", segmenter_epochs=-1)
    with pytest.raises(CxrtlError, match="--segmenter-epochs -1"):
        _plan_segmenter(opts, get_profile("quick"), covid, None)
    opts.segmenter_epochs = 0
    assert _plan_segmenter(opts, get_profile("quick"), covid, None) is None
    opts.segmenter_epochs = None  # the quick profile trains one, the paper profile does not
    assert _plan_segmenter(opts, get_profile("paper"), covid, "offline") is None
    with pytest.raises(CxrtlError, match="--allow-random-init, or --segmenter-epochs 0"):
        _plan_segmenter(opts, get_profile("quick"), covid, "offline")
    opts.allow_random_init = True
    assert _plan_segmenter(opts, get_profile("quick"), covid, "offline") == {"epochs": 5, "init": "none"}
    assert segmenter_init("tu-mobilenetv3_small_100", True, "no ImageNet weights") == "none"


def test_plan_shares_identical_runs_and_orders_dependencies():
    runs = plan_runs((1, 2, 3))
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 12  # 4 + 4 + 5 minus the run Exp. 1 and Exp. 2 share
    shared = next(r for r in runs if r.name == "covid-raw-3ch-wce-1cf")
    assert shared.experiments == (1, 2)
    first_covid_init = min(i for i, r in enumerate(runs) if r.init == COVID_BEST)
    assert max(i for i, r in enumerate(runs) if r.dataset == "covid") < first_covid_init
    # Exp. 3 alone still trains Exp. 2, whose best model it transfers from; never the masked Exp. 1 runs.
    alone = plan_runs((3,))
    assert {r.loss for r in alone if r.dataset == "covid"} == {"ce", "wce-1cf", "wce-icf", "focal"}
    assert all(r.input == "raw" for r in alone)


def test_a_run_meant_for_imagenet_is_described_as_it_ran():
    from cxrtl.paper.runs import as_ran

    plans = {r.name: r for r in plan_runs((3,))}
    offline = as_ran(plans["pneumonia-imagenet-finetune"], random_init=True)  # the log line's settings
    assert offline["init"] == "none" and offline["planned_init"] == "imagenet"
    assert offline["pretraining"] == "random (ImageNet unavailable)"
    covid = as_ran(plans["pneumonia-covid-extractor"], random_init=True)
    assert covid["init"] == COVID_BEST and covid["pretraining"] == "random (ImageNet unavailable) & COVID"
    online = as_ran(plans["pneumonia-imagenet-finetune"], random_init=False)
    assert (
        online["init"] == "imagenet" and online["pretraining"] == "ImageNet" and "planned_init" not in online
    )
    assert as_ran(plans["pneumonia-none-finetune"], random_init=True)["pretraining"] == "None"


@pytest.fixture(scope="module")
def tiny_reproduction(tmp_path_factory, synth_roots):
    covid, pneumonia = synth_roots
    out = tmp_path_factory.mktemp("repro") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("CXRTL_CACHE_DIR", str(out.parent / "cache"))
        argv = _args(
            covid,
            pneumonia,
            out,
            "--allow-random-init",
            "--exclude-overlap",
            "--segmenter-epochs",
            "1",
            "--external",
            str(pneumonia),
            "--external-class-map",
            "NORMAL=Normal,PNEUMONIA=Viral Pneumonia",
        )
        assert main(argv) == 0
    return out


@pytest.mark.slow
def test_tiny_reproduction_report_matches_results(tiny_reproduction):
    out = tiny_reproduction
    results = json.loads((out / "results.json").read_text())
    runs = {r["name"]: r for r in results["runs"]}
    assert len(runs) == 12
    assert results["provenance"]["cxrtl"] and results["provenance"]["torch"]  # what produced them
    for r in runs.values():
        assert set(r) >= {"name", "experiment", "dataset", "config", "best_epoch", "seconds", "test"}
        assert r["dataset"] in ("covid", "pneumonia")
        assert {"accuracy", "per_class", "confusion_matrix", "roc_auc"} <= set(r["test"])
    # The best COVID model on an external set (here the Kermany set through a class map), beside its test.
    ext = results["external"]
    assert ext["external"]["class_map"] == {"NORMAL": "Normal", "PNEUMONIA": "Viral Pneumonia"}
    assert ext["external"]["absent_classes"] == ["COVID", "Lung_Opacity"]
    assert [r["metric"] for r in ext["comparison"]["metrics"]][:2] == ["accuracy", "macro F1"]
    assert "## External validation" in (out / "report.md").read_text()
    # Exp. 3's COVID model is the best Exp. 2 run by validation accuracy.
    exp2 = [r for r in runs.values() if 2 in r["experiment"]]
    best = max(exp2, key=lambda r: r["best_val_acc"])
    assert results["reproduction"]["covid_best"] == best["name"]
    assert runs["pneumonia-covid-finetune"]["config"]["init_source"].startswith(best["run_dir"])

    # The tables say what results.json says.
    with open(out / "tables" / "table_iv.csv", newline="") as fh:
        table_iv = list(csv.DictReader(fh))
    by_loss = {r["config"]["loss"]: r for r in exp2}
    assert len(table_iv) == 4
    for row in table_iv:
        run = by_loss[row["loss"]]
        assert float(row["accuracy"]) == pytest.approx(run["test"]["accuracy"], abs=1e-4)
        assert int(row["best_epoch"]) == run["best_epoch"]
    with open(out / "tables" / "table_runs.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            assert float(row["accuracy"]) == pytest.approx(runs[row["run"]]["test"]["accuracy"], abs=1e-4)

    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    first = md.splitlines()[0]
    assert "random weights" in first and "pneumonia-imagenet-finetune" in first
    assert "NOT comparable" in md and "NOT comparable" in html
    for name in runs:
        assert name in md and name in html
    assert "data:image/png;base64," in html and "src='/" not in html and 'src="http' not in html
    dropped = results["reproduction"]["splits"]["overlap_dropped"]
    assert f"`--exclude-overlap`: {len(dropped)} pneumonia test image(s)" in md
    # No test-chosen "best": the report's best COVID model is the best configuration by validation.
    best_covid = max(
        (c for c in results["configurations"] if c["dataset"] == "covid"),
        key=lambda c: c["best_val_acc"]["mean"],
    )
    assert f"Best COVID model (`{best_covid['name']}`, chosen on validation)" in md
    # Table III compares macro averages; the focal run has the paper's settings.
    with open(out / "tables" / "table_iii.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["run"]:
                assert float(row["macro_f1"]) == pytest.approx(
                    runs[row["run"]]["test"]["macro"]["f1"], abs=1e-4
                )
    focal = runs["covid-raw-3ch-focal"]["config"]
    assert (focal["focal_gamma"], focal["focal_alpha"]) == (3.0, "1cf")
    assert all(r["test"]["source"]["precision"] == "fp32" for r in runs.values())

    # The lung segmenter trained on the reproduction's own COVID split, so no classifier test image trained
    # it; the report shows its test Dice and IoU with intervals and the overlay figure.
    seg = results["segmenter"]
    assert _split_rows(out / "segmenter" / "split.csv") == _split_rows(out / "splits" / "covid.csv")
    assert seg["random_init"] and seg["epochs"] == 1 and seg["image_size"] == 64
    metrics = json.loads((out / "segmenter" / "test" / "metrics.json").read_text())
    test_paths = {p for p, s in _split_rows(out / "splits" / "covid.csv") if s == "test"}
    assert metrics["n_images"] == len(test_paths)
    for key in ("dice", "iou"):
        m = metrics[key]
        assert 0 <= m["ci_low"] <= m["mean"] <= m["ci_high"] <= 1
        assert (
            f"| {key.replace('dice', 'Dice').replace('iou', 'IoU')} | {m['mean']:.3f} [{m['ci_low']:.3f}"
            in md
        )
    assert "](segmenter/test/overlays.png)" in md and html.count("data:image/png;base64,") >= 1
    # Offline, ImageNet fine-tune started from random weights like the no-pre-training run: the same job,
    # named as such and not tested.
    same = [(c["a"], c["b"]) for c in results["comparisons"] if c.get("identical")]
    assert same == [("pneumonia-none-finetune", "pneumonia-imagenet-finetune")]
    assert "pneumonia-imagenet-finetune: both started from random weights: the same configuration" in md
    assert "seed variance is not measured" in md and ", Holm = " in md
    # A run meant to start from ImageNet that started from random weights is named so in results.json.
    offline = runs["pneumonia-imagenet-finetune"]
    assert offline["pretraining"] == "random (ImageNet unavailable)"
    assert offline["config"]["init"] == "none" and offline["config"]["planned_init"] == "imagenet"
    assert runs["pneumonia-covid-finetune"]["pretraining"] == "random (ImageNet unavailable) & COVID"
    assert runs["pneumonia-none-finetune"]["pretraining"] == "None"


@pytest.mark.slow
@pytest.mark.skipif(playwright_or_none() is None, reason=SKIP_REASON)
def test_tiny_reproduction_report_fits_a_laptop_screen(tiny_reproduction):
    found = render(tiny_reproduction / "report.html", 1280, 800)
    assert found["wide"] == [] and found["scrollWidth"] <= 1280, found["wide"][:5]


@pytest.mark.slow
def test_rerun_skips_complete_runs_and_refuses_a_different_reproduction(tiny_reproduction, synth_roots):
    out = tiny_reproduction
    weights = sorted(out.glob("runs/*/best.safetensors"))
    before = {p: p.stat().st_mtime_ns for p in weights}
    assert main(_args(*synth_roots, out, "--allow-random-init", "--exclude-overlap")) == 0
    assert {p: p.stat().st_mtime_ns for p in weights} == before  # nothing retrained
    # Different options against the same directory: refused before anything is touched.
    assert main(_args(*synth_roots, out, "--allow-random-init", "--exclude-overlap", "--seed", "7")) == 2
    assert {p: p.stat().st_mtime_ns for p in weights} == before


def test_bad_input_fails_before_training(tmp_path, synth_roots, capsys):
    covid, pneumonia = synth_roots
    cases = [
        (_args(pneumonia, pneumonia, tmp_path / "a"), "not the COVID-19 Radiography Database"),
        (_args(covid, covid, tmp_path / "b"), "not the Kermany"),
        (_args(covid, pneumonia, tmp_path / "c", "--experiments", "1,4"), "unknown experiment"),
        (_args(covid, pneumonia, tmp_path / "d"), "--allow-random-init"),  # offline, no weights file
    ]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("someone else's work")
    cases.append((_args(covid, pneumonia, foreign, "--allow-random-init"), "is not empty"))
    cases.append(
        (_args(covid, pneumonia, tmp_path / "e", "--allow-random-init", "--seeds", "0"), "--seeds must be")
    )
    cases.append(
        (_args(covid, pneumonia, tmp_path / "f", "--conformal", "1.5"), "--conformal must be in (0, 1)")
    )
    cases.append(
        (
            _args(covid, pneumonia, tmp_path / "g", "--allow-random-init", "--external-class-map", "A=COVID"),
            "give that too",
        )
    )
    cases.append(
        (
            _args(
                covid,
                pneumonia,
                tmp_path / "h",
                "--allow-random-init",
                "--external",
                str(pneumonia),
                "--external-class-map",
                "PNEUMONIA=Pneumonia",
            ),
            "which the model does not have; its classes are COVID, Lung_Opacity, Normal, Viral Pneumonia",
        )
    )
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("cxrtl: error:") and message in err and len(err.splitlines()) == 1, err
    for name in "adefgh":
        assert not (tmp_path / name).exists()
    assert (foreign / "notes.txt").read_text() == "someone else's work"


def test_masked_experiment_needs_masks(tmp_path, pneumonia_root):
    from cxrtl.paper.reproduce import ReproduceOptions, reproduce

    plain = tmp_path / "COVID-19_Radiography_Dataset"
    images = sorted((pneumonia_root / "train").rglob("*.jpeg"))
    for k, cls in enumerate(("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")):
        src = images[3 * k : 3 * k + 3]  # distinct images: copies would be skipped as duplicates
        (plain / cls / "images").mkdir(parents=True)
        for i, f in enumerate(src):
            (plain / cls / "images" / f"{cls}-{i}.jpeg").write_bytes(f.read_bytes())
    opts = ReproduceOptions(
        covid=str(plain),
        pneumonia=str(pneumonia_root),
        out=str(tmp_path / "o"),
        experiments="1",
        allow_random_init=True,
    )
    with pytest.raises(CxrtlError, match="masked inputs"):
        reproduce(opts)
    assert not (tmp_path / "o").exists()


def test_a_reproduction_without_pneumonia_may_be_extended_but_not_changed(tmp_path):
    from cxrtl.fsutil import write_json
    from cxrtl.paper.reproduce import MANIFEST, _check_out

    covid = {"layout": "covid-radiography", "classes": ["COVID"], "counts": {"COVID": 3}}
    pneu = {"layout": "kermany", "classes": ["NORMAL", "PNEUMONIA"], "counts": {"NORMAL": 1, "PNEUMONIA": 2}}
    old = {
        "format": "cxrtl-reproduction",
        "profile": "quick",
        "seed": 1,
        "split_protocol": "paper",
        "exclude_overlap": False,
        "covid": covid,
        "pneumonia": None,
    }
    write_json(tmp_path / MANIFEST, old)
    # Exp. 1-2 only before: Exp. 3 may be added with any pneumonia protocol.
    _check_out(tmp_path, {**old, "pneumonia": pneu, "split_protocol": "patient", "exclude_overlap": True})
    with pytest.raises(CxrtlError, match="different reproduction.*seed"):
        _check_out(tmp_path, {**old, "seed": 2})
    write_json(tmp_path / MANIFEST, {**old, "pneumonia": pneu})
    with pytest.raises(CxrtlError, match="split_protocol"):
        _check_out(tmp_path, {**old, "pneumonia": pneu, "split_protocol": "patient"})


def test_exclude_overlap_drops_exactly_the_planted_copies(tmp_path):
    """Kermany images planted (decoded, as PNG) in COVID Normal: exactly those of the pneumonia test split
    whose copy fell into COVID train or validation are dropped."""
    from PIL import Image

    from cxrtl.data import load_dataset
    from cxrtl.data.synthetic import synthesize
    from cxrtl.paper.reproduce import ReproduceOptions, _write_splits

    synthesize(
        tmp_path / "d",
        count=60,
        seed=0,
        kermany_count=40,
        image_size=96,
        mask_size=80,
        kermany_size=(64, 112),
        cross_duplicates=0,
    )
    covid_root, pneu_root = tmp_path / "d" / "COVID-19_Radiography_Dataset", tmp_path / "d" / "chest_xray"
    planted = {}
    for i, f in enumerate(sorted(pneu_root.rglob("*.jpeg"))[::2]):
        name = f"Normal/images/Normal-9{i:03d}.png"
        with Image.open(f) as im:
            im.convert("L").save(covid_root / name)
        planted[name] = f.relative_to(pneu_root).as_posix()
    out = tmp_path / "out"
    out.mkdir()
    opts = ReproduceOptions(str(covid_root), str(pneu_root), str(out), exclude_overlap=True, progress=False)
    notes = _write_splits(opts, load_dataset(covid_root), load_dataset(pneu_root), out, None)

    def rows(name):
        with open(out / "splits" / name, newline="") as fh:
            return list(csv.DictReader(fh))

    seen = {r["path"] for r in rows("covid.csv") if r["split"] in ("train", "val")}
    test_before = {r["path"] for r in rows("pneumonia.csv") if r["split"] == "test"} | set(
        notes["overlap_dropped"]
    )
    expected = sorted({k for c, k in planted.items() if c in seen} & test_before)
    assert expected and notes["overlap_dropped"] == expected
    assert not {r["path"] for r in rows("pneumonia.csv") if r["split"] == "test"} & set(expected)


@pytest.mark.slow
def test_seeds_give_configurations_and_comparisons(tmp_path, synth_roots):
    covid, pneumonia = synth_roots
    out = tmp_path / "out"
    argv = [*_args(covid, pneumonia, out, "--allow-random-init", "--seeds", "2", "--experiments", "1")]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert len(runs) == 8 and sorted({r["seed"] for r in runs}) == [2022, 2023]
    assert (out / "runs" / "covid-raw-1ch-wce-1cf-seed2023" / "summary.json").is_file()
    by_config = {c["name"]: c for c in results["configurations"]}
    assert len(by_config) == 4
    for name, cfg in by_config.items():
        accs = [r["test"]["accuracy"] for r in runs if r["configuration"] == name]
        assert cfg["seeds"] == [2022, 2023] and cfg["accuracy"]["mean"] == pytest.approx(sum(accs) / 2)
        assert cfg["accuracy"]["sd"] == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5)
        assert set(cfg) >= {"name", "experiment", "dataset", "seeds", "accuracy", "macro_f1"}
    comps = results["comparisons"]
    assert [(c["a"], c["b"]) for c in comps] == [
        ("covid-masked-1ch-wce-1cf", "covid-raw-1ch-wce-1cf"),
        ("covid-masked-3ch-wce-1cf", "covid-raw-3ch-wce-1cf"),
        ("covid-raw-1ch-wce-1cf", "covid-raw-3ch-wce-1cf"),
        ("covid-masked-1ch-wce-1cf", "covid-masked-3ch-wce-1cf"),
    ]
    from statsmodels.stats.multitest import multipletests

    holm = multipletests([c["p_value"] for c in comps], method="holm")[1]
    seed_holm = multipletests([c["seed_level"]["p_value"] for c in comps], method="holm")[1]
    mean_acc = {name: cfg["accuracy"]["mean"] for name, cfg in by_config.items()}
    boot = results["reproduction"]["bootstrap"]
    assert boot["resamples"] >= 2000 and boot["derived_from_seed"] == 2022 and boot["seed"] != 0
    for c, p_adj, s_adj in zip(comps, holm, seed_holm):
        assert set(c) >= {"a", "b", "metric", "difference", "ci95", "p_value", "method", "p_adjusted"}
        assert c["ci95"][0] <= c["difference"] <= c["ci95"][1] and 0 <= c["p_value"] <= 1
        assert c["adjustment"] == "holm" and c["family"] == 4 and c["p_adjusted"] == pytest.approx(p_adj)
        # The headline with 2 seeds: the difference of the tables' mean accuracies, seeds in its interval.
        seed = c["seed_level"]
        assert c["headline"] == "seed_level" and seed["p_adjusted"] == pytest.approx(s_adj)
        assert seed["difference"] == pytest.approx(mean_acc[c["a"]] - mean_acc[c["b"]])
        assert (
            seed["resamples"] == boot["resamples"]
            and seed["ci95"][0] <= seed["difference"] <= seed["ci95"][1]
        )
        better = seed["p_adjusted"] < 0.05 and seed["difference"] != 0
        assert ("is better" in c["verdict"]) == better
    md = (out / "report.md").read_text()
    assert md.count(" pp [") >= 8 and ("is better" in md or "not distinguishable" in md)
    assert (
        md.count("mean accuracy over 2 and 2 seeds") == 4
        and md.count("the ensemble test of the seed-averaged") == 4
    )
    assert "Holm: each p-value adjusted by Holm's step-down method over the 4 comparisons" in md
    assert ", Holm = " in md and "two-level bootstrap" in md
    assert "± " in (out / "tables" / "table_iii.md").read_text()
    # A rerun skips every finished seed.
    weights = sorted(out.glob("runs/*/best.safetensors"))
    before = {p: p.stat().st_mtime_ns for p in weights}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in weights} == before
