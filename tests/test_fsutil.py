"""Atomic output: the old file survives a failed write, nothing half-written is left, permissions are usual."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from cxrtl.errors import CxrtlError
from cxrtl.fsutil import atomic_path, write_json, write_text


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"accuracy": 0.9})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"accura')
        raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "accuracy": 0.9\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_full_disk_is_a_one_line_error_and_the_old_file_survives(tmp_path):
    target = tmp_path / "report.md"
    write_text(target, "old")
    with pytest.raises(CxrtlError, match="No space left on device.*disk space") as e, atomic_path(target):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert "\n" not in str(e.value) and target.read_text() == "old"


def test_outputs_get_the_users_usual_permissions_not_0600(tmp_path):
    path = write_text(tmp_path / "report.html", "<html></html>")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_output_under_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "file.txt").write_text("not a folder")
    with pytest.raises(CxrtlError, match="cannot create output directory") as e:
        write_text(tmp_path / "file.txt" / "sub" / "out.csv", "x")
    assert "\n" not in str(e.value)
