"""hf:// references and cxrtl push: offline error, a cache laid out as huggingface_hub lays it, upload args."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
huggingface_hub = pytest.importorskip("huggingface_hub")
from huggingface_hub import constants as hf_constants

from cxrtl.cli import main
from cxrtl.errors import CxrtlError
from cxrtl.hub import parse_ref, push
from cxrtl.inference.bundle import make_bundle
from cxrtl.inference.predict import Predictor
from cxrtl.model_ref import local_path, resolve_model
from test_bundle import make_covid_run

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, covid_root):
    root = tmp_path_factory.mktemp("hub")
    make_bundle(
        make_covid_run(root / "run", covid_root), root / "bundle", exporter="torchscript", leakage_check=False
    )
    return root / "bundle"


def hf_cache(cache: Path, repo_id: str, bundle: Path, commit: str = COMMIT) -> Path:
    """A cache as huggingface_hub writes it: blobs by hash, snapshot files linking to them, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in bundle.iterdir():
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    return snap


@pytest.mark.parametrize(
    "ref",
    [
        "hf://",
        "hf://alice",
        "hf://alice/",
        "hf://alice/x/y",
        "hf://a/b@",
        "hf://../b",
        "hf:/alice/b",
        "HF://a/b",
        "hf://alice/b\n",
        "hf://alice/b@main\n",
        "hf://alice/b@/etc/passwd",
        "hf://alice/b@main/",
        "hf://alice/b@a//b",
        "hf://alice/b@.git",
        "hf://alice/b@refs/.x",
        "hf://alice/b@v1.lock",
        "hf://alice/b@v1.",
    ],
)
def test_malformed_references(ref):
    with pytest.raises(CxrtlError, match="malformed Hub reference"):
        resolve_model(ref)


def test_well_formed_references():
    assert parse_ref("hf://alice/covid-densenet") == ("alice/covid-densenet", None)
    assert parse_ref("hf://alice/covid.v2@refs/pr/1") == ("alice/covid.v2", "refs/pr/1")
    assert parse_ref("hf://alice/covid@v1.2.0") == ("alice/covid", "v1.2.0")
    assert parse_ref(f"hf://alice/covid@{COMMIT}") == ("alice/covid", COMMIT)


def test_a_revision_that_is_a_path_is_refused_not_read(bundle, tmp_path, capsys, monkeypatch):
    """Offline, ``@/some/file`` was read as a ref file and resolved to a folder outside the cache."""
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    hf_cache(tmp_path / "cache", "alice/model", bundle)
    outside = tmp_path / "elsewhere" / "snapshots" / COMMIT
    outside.mkdir(parents=True)
    (tmp_path / "elsewhere" / "ref").write_text(COMMIT)
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    for ref in (f"hf://alice/model@{tmp_path / 'elsewhere' / 'ref'}", "hf://alice/model@main\n"):
        with pytest.raises(CxrtlError, match="malformed Hub reference"):
            resolve_model(ref)
        assert main(["predict", ref, str(image)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "a branch, tag or commit" in err
    assert local_path("imagenet") == "imagenet" and local_path(None) is None


def test_offline_and_not_cached_is_one_line_in_seconds(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    start = time.monotonic()
    for argv in (
        ["predict", "hf://alice/covid", str(image)],
        ["evaluate", "hf://alice/covid", "--data", "d", "--out", "o"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert (
            err.count("\n") == 1
            and "cannot fetch hf://alice/covid" in err
            and "not in the Hugging Face cache" in err
        )
    assert time.monotonic() - start < 5


def test_predict_from_the_hub_cache(bundle, tmp_path, covid_root, monkeypatch, capsys):
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    hf_cache(tmp_path / "cache", "alice/covid", bundle)
    files = sorted((covid_root / "Normal" / "images").glob("*.png"))[:2]
    want = Predictor.from_checkpoint(bundle).predict(files)
    for ref in ("hf://alice/covid", f"hf://alice/covid@{COMMIT}"):
        np.testing.assert_array_equal(Predictor.from_checkpoint(ref).predict(files), want)
    assert main(["predict", "hf://alice/covid", *map(str, files), "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert (
        Path(local_path("hf://alice/covid")).resolve()
        == (tmp_path / "cache" / "models--alice--covid" / "snapshots" / COMMIT).resolve()
    )


def test_a_cached_bundle_is_still_checksummed(bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    snap = hf_cache(tmp_path / "cache", "alice/covid", bundle)
    blob = (snap / "best.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[:-10])  # an interrupted download
    with pytest.raises(CxrtlError, match="tampered with or truncated"):
        Predictor.from_checkpoint("hf://alice/covid")


def test_push_uploads_the_bundle(bundle, monkeypatch, capsys):
    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kw):
        calls.append(("upload_folder", kw))
        return type("Commit", (), {"oid": "abc"})()

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert main(["push", str(bundle), "--repo", "alice/covid", "--private"]) == 0
    assert "hf://alice/covid" in capsys.readouterr().out
    (_, repo_id, kw), (_, up) = calls
    assert repo_id == "alice/covid" and kw == {"repo_type": "model", "private": True, "exist_ok": True}
    assert up["repo_id"] == "alice/covid" and up["repo_type"] == "model"
    assert Path(up["folder_path"]) == bundle and up["revision"] is None
    assert sorted(up["allow_patterns"]) == sorted(p.name for p in bundle.iterdir())
    assert "token" not in up  # huggingface_hub finds the token itself


def test_push_refuses_a_tampered_bundle_and_bad_repo(bundle, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda *a, **k: pytest.fail("uploaded"))
    with pytest.raises(CxrtlError, match="malformed Hub reference"):
        push(bundle, "not a repo")
    copy = shutil.copytree(bundle, tmp_path / "b")
    (copy / "README.md").write_text("edited")
    with pytest.raises(CxrtlError, match="README.md does not match"):
        push(copy, "alice/covid")
