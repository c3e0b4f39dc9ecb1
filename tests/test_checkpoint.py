"""Checkpoints: safetensors + JSON, self-describing, atomic, and never unpickled."""

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from cxrtl.checkpoint import (
    FORMAT,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from cxrtl.data.preprocess import Preprocess
from cxrtl.errors import CxrtlError
from cxrtl.transfer import create_model

TINY = "test_resnet"


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = create_model(TINY, ["NORMAL", "PNEUMONIA"], in_chans=1, init="none").eval()
    meta = {
        "preprocess": Preprocess("raw", 1, 32).to_dict(),
        "epoch": 4,
        "metrics": {"val_acc": 0.75},
        "config": {"lr": 1e-3},
    }
    path = save_checkpoint(tmp_path / "best", model, meta)
    return model, path


def test_roundtrip_gives_same_model_and_meta(saved, tmp_path):
    model, path = saved
    assert path == tmp_path / "best.safetensors"
    side = json.loads((tmp_path / "best.json").read_text())
    for key in (
        "format",
        "version",
        "backbone",
        "classes",
        "in_chans",
        "preprocess",
        "epoch",
        "metrics",
        "config",
        "weights_sha256",
    ):
        assert key in side, key
    assert side["format"] == FORMAT and side["classes"] == ["NORMAL", "PNEUMONIA"] and side["in_chans"] == 1
    assert side["preprocess"]["mean"] == [0.485] and side["preprocess"]["image_size"] == 32
    x = torch.randn(3, 1, 32, 32)
    for p in (path, tmp_path / "best.json", tmp_path):  # weights, sidecar or run dir
        loaded, meta = load_checkpoint(p)
        assert loaded.classes == model.classes and meta["epoch"] == 4 and not loaded.training
        torch.testing.assert_close(loaded(x), model(x))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temp files left


def test_weights_alone_are_enough(saved, tmp_path):
    _, path = saved
    (tmp_path / "best.json").unlink()
    _, meta = load_checkpoint(path)
    assert meta["backbone"] == TINY


class _Boom:
    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (open, (self.flag, "w"))  # creating the flag file proves the pickle ran


@pytest.mark.parametrize("name", ["model.pt", "model.pth", "best.safetensors", "evil.bin"])
def test_pickles_are_refused_without_running(tmp_path, name):
    flag = tmp_path / "pwned"
    bad = tmp_path / name
    bad.write_bytes(pickle.dumps({"state_dict": _Boom(str(flag))}))
    with pytest.raises(CxrtlError, match="never loads") as e:
        load_checkpoint(bad)
    assert not flag.exists() and "\n" not in str(e.value)
    zipped = tmp_path / ("zip_" + name)
    torch.save({"w": torch.zeros(2)}, zipped)  # torch's zip-pickle format
    with pytest.raises(CxrtlError, match="never loads"):
        load_checkpoint(zipped)


def test_foreign_safetensors_and_garbage_are_refused(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CxrtlError, match="not a cxrtl checkpoint"):
        load_checkpoint(plain)
    for name, data in (("empty.safetensors", b""), ("text.safetensors", b"hello world, not weights" * 10)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CxrtlError):
            load_checkpoint(tmp_path / name)
    with pytest.raises(CxrtlError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "notarun").mkdir()
    with pytest.raises(CxrtlError, match="not a cxrtl run directory"):
        resolve_checkpoint(tmp_path / "notarun")


def test_tampered_weights_are_refused(saved, tmp_path):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip bits in the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(CxrtlError, match="SHA-256"):
        load_checkpoint(path)


def test_truncated_or_mismatched_weights_are_refused(saved, tmp_path):
    _, path = saved
    (tmp_path / "best.json").unlink()  # no hash to compare: the loader must still catch the damage
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CxrtlError, match="damaged"):
        load_checkpoint(path)


def test_meta_claiming_another_backbone_is_refused(saved, tmp_path):
    model, _ = saved
    model.backbone_name = "test_byobnet"  # metadata lies about the architecture
    save_checkpoint(tmp_path / "liar", model, {})
    with pytest.raises(CxrtlError, match="does not fit"):
        load_checkpoint(tmp_path / "liar.safetensors")


def _rewrite_embedded(path, edit):
    """Rewrite the cxrtl metadata embedded in a safetensors header (as a hand-edited file would be)."""
    import struct

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["cxrtl_meta"])
    edit(meta)
    header["__metadata__"]["cxrtl_meta"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


@pytest.mark.parametrize(
    "edit, match",
    [(lambda m: m.update(version=99), "version 99"), (lambda m: m.update(format="other"), "another format")],
)
def test_future_or_foreign_embedded_meta_is_refused(saved, tmp_path, edit, match):
    _, path = saved
    (tmp_path / "best.json").unlink()
    _rewrite_embedded(path, edit)
    with pytest.raises(CxrtlError, match=match):
        load_checkpoint(path)
