"""The README's "Try it in one minute" block runs as written: what a new user types first must work."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def one_minute_block() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Try it in one minute", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", section, re.S)
    commands = []
    for line in block.splitlines():
        line = line.split("  #")[0].strip()
        if line:
            commands.append(shlex.split(line))
    return commands


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_one_minute_block_runs(tmp_path):
    commands = one_minute_block()
    assert [c[:2] for c in commands][0] == ["cxrtl", "data"] and commands[-1][1] == "serve"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for argv in commands[:-1]:
        res = subprocess.run(
            [sys.executable, "-m", "cxrtl", *argv[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, f"{shlex.join(argv)}\n{res.stderr[-2000:]}"
    assert (tmp_path / "runs/tiny/best.decisions.json").is_file() and (
        tmp_path / "bundles/tiny/model.onnx"
    ).is_file()

    serve = commands[-1]
    port = _free_port()
    argv = [*serve[1 : serve.index("--port")], "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxrtl", *argv],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (
                    proc.stdout.read() if proc.stdout else ""
                )
                time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert r.status == 200 and b"not a medical device" in r.read().lower()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
