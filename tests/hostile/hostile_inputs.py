"""Hostile inputs, made by code: what an attacker or a careless client sends to `predict`, `data check`
and `cxrtl serve` (issue 21). Each maker writes one small file under ``folder`` and returns its path.

``measured(argv)`` runs a cxrtl command in a fresh interpreter and returns its exit code, output, wall
time and peak resident memory (``ru_maxrss``), so a test can bound what one input costs.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")
GB = 2**30


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_streamed(path: Path, width: int, height: int, bit_depth: int, row: bytes) -> Path:
    """A grey PNG of identical rows (``row`` without its filter byte), compressed without holding it all."""
    comp = zlib.compressobj(9)
    line = b"\0" + row
    parts, step = [], max(1, (1 << 20) // len(line))
    for start in range(0, height, step):
        parts.append(comp.compress(line * min(step, height - start)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
    )
    return path


def wide_png(folder: Path, width: int = 200_000, height: int = 1) -> Path:
    """A 1-pixel-high strip (467 bytes at 200000 px): its shorter side resized to 256 asked for 13 GB."""
    row = bytes(i % 251 for i in range(width))
    return png_streamed(folder / f"strip-{width}x{height}.png", width, height, 8, row)


def tall_png(folder: Path, width: int = 1, height: int = 200_000) -> Path:
    return png_streamed(folder / f"strip-{width}x{height}.png", width, height, 8, b"\x80" * width)


def png16(folder: Path, side: int = 9000) -> Path:
    """A 16-bit side x side PNG (about 160 KB at 9000): 81 Mpixel, scaled to 8 bits once decoded."""
    row = b"".join(struct.pack(">H", (x * 7) % 65536) for x in range(side))
    return png_streamed(folder / f"deep-{side}.png", side, side, 16, row)


def evil_eps(folder: Path) -> Path:
    """Encapsulated PostScript: Pillow's EPS plugin would hand it to Ghostscript."""
    path = folder / "evil.eps"
    path.write_bytes(
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
        b"newpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n"
    )
    return path


def many_frame_gif(folder: Path, frames: int = 300_000) -> Path:
    """A 1x1 GIF of ``frames`` frames (about 17 bytes each): counting them walks the whole file."""
    head = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    gce = b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control: 10 ms delay, so each is its own frame
    frame = gce + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    path = folder / f"frames-{frames}.gif"
    path.write_bytes(head + frame * frames + b"\x3b")
    return path


HOSTILE = {  # name -> maker, the inputs every channel (predict, data check, serve) is run with
    "wide": wide_png,
    "tall": tall_png,
    "deep16": png16,
    "eps": evil_eps,
    "gif_frames": many_frame_gif,
}


def fake_ghostscript(folder: Path) -> tuple[Path, Path]:
    """A `gs` executable that only leaves a marker file when run: (bin folder for PATH, marker path)."""
    bindir, marker = folder / "fakebin", folder / "ghostscript-was-run"
    bindir.mkdir(parents=True, exist_ok=True)
    gs = bindir / "gs"
    gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    gs.chmod(0o755)
    return bindir, marker


def _status(pid: int | str, key: str) -> int:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak(pid: int | str = "self") -> int:
    """Reset the peak resident memory (VmHWM) of process PID to its current size, which is returned."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status(pid, "VmRSS")


def peak(pid: int | str = "self") -> int:
    return _status(pid, "VmHWM")


_RUNNER = """
import importlib, json, sys, time
sys.path.insert(0, {here!r})
from hostile_inputs import peak, reset_peak
for name in {warm!r}:
    importlib.import_module(name)  # libraries loaded before the measurement: what the input costs remains
from cxrtl.cli import main
for argv in json.loads(sys.argv[1]):
    before = reset_peak()
    t = time.perf_counter()
    rc = main(argv)
    seconds = time.perf_counter() - t
    print("MEASURED " + json.dumps({{"rc": rc, "seconds": seconds, "before": before, "peak": peak()}}), flush=True)
"""
WARM = ("torch", "timm", "cxrtl.inference.predict", "cxrtl.commands.predict")


def measured(argvs: list[list[str]], warm=WARM, env: dict | None = None, timeout: float = 300) -> list[dict]:
    """Run ``cxrtl ARGV`` for each of ``argvs`` in one fresh interpreter, after importing ``warm``.

    One dict per command: rc, ``out`` (what it printed), ``seconds`` (the command itself), ``peak`` (the
    process's peak resident bytes during it) and ``cost`` (that peak over the resident size just before).
    """
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = SRC + os.pathsep + full_env.get("PYTHONPATH", "")
    code = _RUNNER.format(here=str(Path(__file__).parent), warm=tuple(warm))
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(argvs)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    results, out = [], []
    for line in proc.stdout.splitlines():
        if line.startswith("MEASURED "):
            got = json.loads(line.removeprefix("MEASURED "))
            results.append({**got, "cost": got["peak"] - got["before"], "out": "\n".join(out)})
            out = []
        else:
            out.append(line)
    assert len(results) == len(argvs), proc.stdout + proc.stderr
    return results
