"""Benchmarks that hold on a shared machine: the machine description, the interleaved timing helper, and
a check that the cheapest benchmark gives the same headline twice in a row (within 25%)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxrtl import machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _timing  # noqa: E402

AVX2_ONLY = (
    "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B12\n"
    "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2\n\n"
    "processor\t: 1\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse avx avx2\n"
)
VNNI = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: avx2 avx512f avx512_vnni avx_vnni amx_tile amx_int8\n"


def test_machine_reads_cpu_model_and_the_instruction_sets_that_matter(tmp_path):
    (tmp_path / "avx2").write_text(AVX2_ONLY)
    (tmp_path / "vnni").write_text(VNNI)
    avx2 = machine.describe(gpu=False, cpuinfo=tmp_path / "avx2")
    assert avx2["cpu"] == "AMD EPYC 7B12" and avx2["isa"] == ["AVX2"] and not avx2["int8_dot_product"]
    assert "AMD EPYC 7B12" in machine.summary(avx2) and "(AVX2)" in machine.summary(avx2)
    assert machine.int8_expectation(avx2, 28.1 / 7.9) == (
        "this CPU has no VNNI/AMX: int8 will be about as fast as fp32 here; the gain is a 3.6x smaller file"
    )
    amx = machine.describe(gpu=False, cpuinfo=tmp_path / "vnni")
    assert amx["isa"] == ["AVX2", "AVX-512", "AVX-512 VNNI", "AVX-VNNI", "AMX"] and amx["int8_dot_product"]
    assert "should run faster" in machine.int8_expectation(amx)
    unknown = machine.describe(gpu=False, cpuinfo=tmp_path / "missing")
    assert unknown["isa"] == [] and not unknown["isa_known"] and "ISA unknown" in machine.summary(unknown)
    this = machine.describe(gpu=False)
    assert this["torch"] and this["onnxruntime"] and 1 <= this["cores_usable"] <= this["cores"]


def test_describing_the_machine_imports_neither_torch_nor_onnxruntime():
    code = (
        "import sys, cxrtl.machine as m; print(m.summary(m.describe())); "
        "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.startswith("machine: ") and "torch " in out.stdout


def test_interleaved_samples_are_long_enough_alternate_and_give_the_ratio_of_medians():
    calls: list[str] = []

    def op(name: str, seconds: float):
        def run() -> None:
            calls.append(name)
            time.sleep(seconds)

        return run

    t = _timing.interleaved(
        {"slow": op("slow", 0.01), "fast": op("fast", 0.005)}, samples=4, min_sample_s=0.05
    )
    for timing in t.values():
        assert timing.n == 4 and all(s >= 0.05 for s in timing.sample_s)
        assert timing.min <= timing.median
    assert min(t["slow"].ops) >= 2 and min(t["fast"].ops) >= 4  # repeated until a sample lasts 0.05 s
    timed = calls[2:]  # after one warm-up call each
    first = t["slow"].ops[0]
    assert timed[:first] == ["slow"] * first and timed[first] == "fast"  # A's sample, then B's, A's, ...
    assert len(timed) == sum(t["slow"].ops) + sum(t["fast"].ops)
    assert 1.5 < _timing.ratio(t["slow"], t["fast"]) < 2.5
    assert "ratio of medians, slow / fast, 4 interleaved samples each" in _timing.ratio_note(
        t["slow"], t["fast"]
    )


def test_each_sample_counts_the_page_faults_of_its_op():
    """A side that touches fresh memory shows it: the count that told a slow allocator from slow code."""
    import mmap

    def fresh_pages() -> None:
        with mmap.mmap(-1, 1024 * 4096) as m:  # 1024 pages the kernel has to supply on first touch
            for i in range(0, len(m), 4096):
                m[i] = 1

    t = _timing.interleaved(
        {"fresh": fresh_pages, "idle": lambda: time.sleep(0.01)}, samples=3, min_sample_s=0.05
    )
    assert len(t["fresh"].faults) == 3 and min(t["fresh"].faults) >= 1000
    assert max(t["idle"].faults) < 50
    assert "page faults/op" in t["fresh"].describe()
    assert t["fresh"].as_dict()["page_faults_per_op"] == t["fresh"].faults


@pytest.mark.slow
def test_the_cheapest_benchmark_gives_the_same_headline_twice(tmp_path):
    """``make bench``'s collector on the segment benchmark, twice in a row: each run's output starts with the
    machine and ends with the headline; results.json holds both; the two headlines agree within 25%."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    headlines = []
    for i in range(2):
        out = tmp_path / f"results{i}.json"
        cmd = [
            sys.executable,
            str(ROOT / "benchmarks" / "run_all.py"),
            "--only",
            "segment",
            "--out",
            str(out),
        ]
        cmd += ["--threads", "1"]  # two threads on a busy 2-core machine stall each other (see _timing.Bench)
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        lines = run.stdout.splitlines()
        bench_lines = lines[1 : lines.index("")]  # between "== segment ..." and run_all's summary
        assert re.match(
            r"machine: .+, \d+ cores \([^)]+\); (no GPU|GPU .+); torch .+; 1 thread used; "
            r"(glibc malloc pinned \(mmap threshold 32 MB, no trim\)|allocator: .+)$",
            bench_lines[0],
        )
        assert re.match(
            r"segment overhead: \d+\.\d\dx \(ratio of medians, .+ interleaved samples", bench_lines[-1]
        )
        results = json.loads(out.read_text())
        entry = results["benchmarks"]["segment"]
        assert results["machine"]["cpu"] == entry["machine"]["cpu"] and entry["machine"]["isa"]
        assert entry["figures"]["classifier"]["samples"] == 5
        assert (
            entry["machine"]["allocator"] and len(entry["figures"]["classifier"]["page_faults_per_op"]) == 5
        )
        headlines.append(entry["headline"]["value"])
    assert max(headlines) / min(headlines) <= 1.25, headlines
