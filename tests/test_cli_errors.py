"""cli.main: an exception that is not a CxrtlError is one line for the user, its traceback with -v."""

from __future__ import annotations

import pytest

from cxrtl.cli import main
from cxrtl.commands import push as push_command


def boom(args):
    raise ConnectionResetError("peer went away\nsecond line of detail")


def test_an_unforeseen_exception_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(push_command, "run", boom)
    assert main(["push", str(tmp_path), "--repo", "alice/covid"]) == 1
    err = capsys.readouterr().err
    assert err == ("cxrtl: error: ConnectionResetError: peer went away; run with -v for the traceback\n")


def test_verbose_shows_the_traceback(monkeypatch, tmp_path):
    monkeypatch.setattr(push_command, "run", boom)
    with pytest.raises(ConnectionResetError, match="peer went away"):
        main(["-v", "push", str(tmp_path), "--repo", "alice/covid"])


def test_the_library_still_raises_what_is_not_the_hubs(monkeypatch, tmp_path):
    """Tests call the library, where an unforeseen failure must surface: only the CLI makes it one line."""
    hub = pytest.importorskip("huggingface_hub")
    from cxrtl import hub as cxrtl_hub

    def create_repo(self, *a, **k):
        raise KeyError("a bug, not the network")

    monkeypatch.setattr(hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr("cxrtl.bundle_manifest.verify_bundle", lambda folder: {"files": {}})
    with pytest.raises(KeyError, match="a bug"):
        cxrtl_hub.push(tmp_path, "alice/covid")
