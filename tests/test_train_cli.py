"""`cxrtl train` end to end on synthetic data: RUN_DIR layout, YAML config, refusals, transfer, resume."""

import csv
import json
import pickle

import pytest
import torch
import yaml

from cxrtl.cli import main
from cxrtl.commands.train import build_config
from cxrtl.config import TrainConfig, config_from_dict, load_config
from cxrtl.errors import CxrtlError
from cxrtl.training import resume

FAST = [
    "--backbone",
    "test_resnet",
    "--init",
    "none",
    "--image-size",
    "32",
    "--epochs",
    "2",
    "--batch-size",
    "8",
    "--no-progress",
    "--device",
    "cpu",
]
RUN_FILES = [
    "best.decisions.json",  # the OOD guard fitted at the end of training
    "best.json",
    "best.safetensors",
    "config.yaml",
    "data_fingerprint.json",
    "history.csv",
    "last.json",
    "last.safetensors",
    "split.csv",
    "state.safetensors",
    "summary.json",
]


def _train(*args):
    return main(["train", *map(str, args)])


def _snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def _error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("cxrtl: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, synth_roots):
    """One finished COVID run, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("runs") / "covid"
    import os

    os.environ.setdefault("CXRTL_CACHE_DIR", str(out.parent / "cache"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _train("--data", synth_roots[0], "--out", out, *FAST, "--loss", "wce-1cf") == 0
    finally:
        torch.set_num_threads(n)
    return out


def test_run_dir_layout_history_and_summary(finished_run):
    assert sorted(p.name for p in finished_run.iterdir()) == RUN_FILES
    with open(finished_run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    assert [r["epoch"] for r in rows] == ["1", "2"]
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["finished"] and 1 <= summary["best_epoch"] <= 2
    assert summary["best_val_acc"] == max(float(r["val_acc"]) for r in rows)
    cfg = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert (
        cfg["backbone"] == "test_resnet"
        and cfg["lr"] == pytest.approx(8 / 1.6e4)
        and cfg["loss"] == "wce-1cf"
    )
    assert cfg["split"].endswith("split.csv")
    meta = json.loads((finished_run / "best.json").read_text())
    assert meta["classes"] == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    assert meta["preprocess"]["image_size"] == 32 and meta["epoch"] == summary["best_epoch"]


def test_every_run_file_follows_the_umask(finished_run):
    """Weights and resume state are as readable as the rest (a lab's shared folder can read the model)."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in finished_run.iterdir()}
    assert {"best.safetensors", "last.safetensors", "state.safetensors"} <= set(modes)
    assert modes == {name: 0o666 & ~mask for name in modes}


def test_existing_run_is_not_overwritten_without_overwrite(finished_run, synth_roots, capsys):
    before = _snapshot(finished_run)
    assert _train("--data", synth_roots[0], "--out", finished_run, *FAST) == 2
    assert "--overwrite" in _error(capsys)
    assert _train("--resume", finished_run) == 2
    assert "finished" in _error(capsys)
    assert _snapshot(finished_run) == before


def test_bad_inputs_leave_nothing_behind(tmp_path, synth_roots, finished_run, capsys):
    covid, kermany = synth_roots
    cases = [
        ["--data", covid, "--out", tmp_path / "a", *FAST, "--backbone", "densenet12"],
        ["--data", kermany, "--out", tmp_path / "b", *FAST, "--input", "masked"],
        ["--data", covid, "--out", tmp_path / "c", *FAST, "--init", tmp_path / "missing.safetensors"],
        ["--data", covid, "--out", tmp_path / "d", *FAST, "--epochs", "0"],
        ["--resume", tmp_path],
    ]
    for args in cases:
        assert _train(*args) == 2, args
        _error(capsys)
    assert not any((tmp_path / n).exists() for n in "abcd")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _train("--data", covid, "--out", blocker / "run", *FAST) == 2
    assert "cannot be written" in _error(capsys)
    assert _train("--resume", finished_run, "--epochs", "5") == 2
    assert "resuming" in _error(capsys)


def test_pickle_init_is_refused_and_never_run(tmp_path, synth_roots, capsys):
    flag = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (open, (str(flag), "w"))

    evil = tmp_path / "model.pth"
    evil.write_bytes(pickle.dumps(Boom()))
    assert _train("--data", synth_roots[1], "--out", tmp_path / "run", *FAST, "--init", evil) == 2
    assert "never loads" in _error(capsys)
    assert not flag.exists() and not (tmp_path / "run").exists()


def test_yaml_config_and_cli_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\nbatch-size: 32\nloss: focal\nfocal_gamma: 1\nmilestones: [3, 4]\n")
    cfg = load_config(path)
    assert (cfg.epochs, cfg.batch_size, cfg.loss, cfg.focal_gamma, cfg.milestones) == (
        5,
        32,
        "focal",
        1.0,
        [3, 4],
    )
    from cxrtl.cli import build_parser

    args = build_parser().parse_args(["train", "--config", str(path), "--epochs", "7", "--data", "x"])
    cfg, resume = build_config(args)
    assert cfg.epochs == 7 and cfg.batch_size == 32 and cfg.data == "x" and not resume
    assert cfg.init == "imagenet" and cfg.lr is None  # untouched defaults
    for text, match in (
        ("epochs: [1\n", "not valid YAML"),
        ("epochz: 3\n", "unknown config key"),
        ("- 1\n- 2\n", "mapping"),
        ("epochs: three\n", "wrong type"),
    ):
        path.write_text(text)
        with pytest.raises(CxrtlError, match=match):
            load_config(path)
    with pytest.raises(CxrtlError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    assert config_from_dict(TrainConfig().to_dict()) == TrainConfig()  # config.yaml round-trips


def test_cli_yaml_errors_exit_2(tmp_path, synth_roots, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("loss: hinge\n")
    assert _train("--data", synth_roots[0], "--out", tmp_path / "r", "--config", path) == 2
    assert "loss" in _error(capsys)
    assert not (tmp_path / "r").exists()


def test_transfer_keep_hidden_to_pneumonia(tmp_path, finished_run, synth_roots):
    out = tmp_path / "pneu"
    assert (
        _train(
            "--data",
            synth_roots[1],
            "--out",
            out,
            "--init",
            finished_run,
            "--keep-hidden",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--no-progress",
            "--scheme",
            "extractor",
        )
        == 0
    )
    meta = json.loads((out / "best.json").read_text())
    assert meta["classes"] == ["NORMAL", "PNEUMONIA"] and meta["backbone"] == "test_resnet"
    from safetensors.torch import load_file

    src, dst = load_file(finished_run / "best.safetensors"), load_file(out / "best.safetensors")
    # the kept hidden layer starts from the COVID weights (then trains a little); the backbone stays frozen
    assert (src["head.0.weight"] - dst["head.0.weight"]).abs().max() < 0.02
    assert dst["head.2.weight"].shape == (2, 64)
    assert torch.equal(src["backbone.conv1.0.weight"], dst["backbone.conv1.0.weight"])  # frozen backbone


def test_interrupted_cli_run_resumes_to_same_result(tmp_path, synth_roots, monkeypatch, capsys):
    args = ["--data", synth_roots[1], *FAST, "--epochs", "3", "--milestones", "2"]
    assert _train("--out", tmp_path / "full", *args) == 0
    real = resume.write_state

    def crash(path, model, opt, sched, info):
        real(path, model, opt, sched, info)
        if info["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(resume, "write_state", crash)
    assert _train("--out", tmp_path / "cut", *args) == 130
    monkeypatch.setattr(resume, "write_state", real)
    assert not (tmp_path / "cut" / "summary.json").exists()
    assert _train("--resume", tmp_path / "cut", "--no-progress") == 0
    assert "best epoch" in capsys.readouterr().out

    def history(d):
        with open(d / "history.csv") as fh:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]

    assert history(tmp_path / "cut") == history(tmp_path / "full")
    assert (tmp_path / "cut" / "split.csv").read_bytes() == (tmp_path / "full" / "split.csv").read_bytes()
    from safetensors.torch import load_file

    for name in ("best", "last"):  # same weights (metadata differs only by the run dir path)
        a, b = (
            load_file(tmp_path / "cut" / f"{name}.safetensors"),
            load_file(tmp_path / "full" / f"{name}.safetensors"),
        )
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert (
            json.loads((tmp_path / "cut" / f"{name}.json").read_text())["epoch"]
            == json.loads((tmp_path / "full" / f"{name}.json").read_text())["epoch"]
        )


def test_run_killed_before_its_first_epoch_completed_restarts_on_resume(
    tmp_path, synth_roots, monkeypatch, capsys
):
    out = tmp_path / "run"
    args = ["--data", synth_roots[1], "--out", out, *FAST, "--epochs", "1"]

    def killed(*a, **k):
        raise KeyboardInterrupt  # after history/best/last, before the state file (the commit point)

    monkeypatch.setattr(resume, "write_state", killed)
    assert _train(*args) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert (out / "history.csv").exists() and not (out / "state.safetensors").exists()
    assert _train(*args) == 2 and "--resume" in _error(capsys)
    assert _train("--resume", out, "--no-progress") == 0
    assert json.loads((out / "summary.json").read_text())["finished"]
    assert (out / "history.csv").read_text().count("\n") == 2


def test_resume_options_one_list_for_cli_and_loader(tmp_path):
    from cxrtl.cli import build_parser
    from cxrtl.training.resume import RESTART, RESUME_OPTIONS, load_resume

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(TrainConfig(data="old", epochs=2, workers=1).to_yaml())
    (run_dir / "split.csv").write_text("")
    new = {
        "data": "new",
        "device": "cpu",
        "workers": 3,
        "progress": False,
        "tensorboard": True,
        "compile": True,
        "cache_dir": "c",
    }
    assert set(new) == set(RESUME_OPTIONS)
    cfg, payload = load_resume(run_dir, TrainConfig(epochs=99, **new))
    assert payload == RESTART and cfg.epochs == 2 and cfg.out == str(run_dir)
    assert all(getattr(cfg, k) == v for k, v in new.items())
    assert (
        load_resume(run_dir, TrainConfig())[0].data == "old"
    )  # a resume naming no --data keeps the saved one
    cli_args = [
        "--data",
        "new",
        "--device",
        "cpu",
        "--workers",
        "3",
        "--no-progress",
        "--tensorboard",
        "--compile",
        "--cache-dir",
        "c",
    ]
    cfg, resumed = build_config(build_parser().parse_args(["train", "--resume", str(run_dir), *cli_args]))
    assert resumed and all(getattr(cfg, k) == v for k, v in new.items())
    with pytest.raises(CxrtlError, match="--epochs cannot change") as err:
        build_config(build_parser().parse_args(["train", "--resume", str(run_dir), "--epochs", "3"]))
    assert all(f"--{o.replace('_', '-')}" in str(err.value) for o in RESUME_OPTIONS)
