"""Timing shared by every benchmark: interleaved samples long enough to measure, and the machine they ran on.

On a shared 2-core machine one timing of a few tens of milliseconds is decided by the scheduler, not by the
code. So every ratio a benchmark reports comes from :func:`interleaved`:

* the sides of a comparison are timed **interleaved** (A, B, A, B, ...), so drift in the machine's load
  hits both alike;
* each **sample** is at least ``min_sample_s`` (0.5 s) of work: the operation is repeated inside the
  sample until it has lasted that long (and at least ``min_repeats`` times);
* each side reports the **min and median** time per operation over its samples, with the sample count;
  the headline ratio is the ratio of the two **medians**, and :func:`headline` says so on the last line.

:class:`Bench` prints the machine (:func:`cxrtl.machine.describe`) as the first line of a benchmark's
output, collects its figures, and writes them as JSON to ``$CXRTL_BENCH_JSON`` when that is set
(``benchmarks/run_all.py`` and ``make bench`` set it and merge the files into ``benchmarks/results.json``).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cxrtl import machine  # noqa: E402
from cxrtl.fsutil import write_text  # noqa: E402

MIN_SAMPLE_S = 0.5
JSON_ENV = "CXRTL_BENCH_JSON"


def positive(text: str) -> int:
    """argparse type: an integer of at least 1 (``--samples``, ``--threads``), else a one-line usage error."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small; give 1 or more")
    return value


@dataclass
class Timing:
    """Seconds per operation of one side of a comparison, one value per interleaved sample."""

    name: str
    per_op: list[float] = field(default_factory=list)
    ops: list[int] = field(default_factory=list)  # operations in each sample (empty: a sum of other timings)
    sample_s: list[float] = field(default_factory=list)  # wall seconds of each whole sample
    faults: list[float] = field(default_factory=list)  # minor page faults per op in each sample

    @property
    def median(self) -> float:
        return statistics.median(self.per_op)

    @property
    def min(self) -> float:
        return min(self.per_op)

    @property
    def n(self) -> int:
        return len(self.per_op)

    def describe(self, unit: str = "auto", per: int | None = None) -> str:
        """``median 12.3 ms, min 11.9 ms [7 samples x 40-42 ops, >= 0.50 s each]``; ``per`` adds items/s."""
        if unit == "auto":
            unit = "s" if self.median >= 1 else "ms"
        scale = {"ms": 1e3, "s": 1.0}[unit]
        text = f"median {self.median * scale:.3g} {unit}, min {self.min * scale:.3g} {unit}"
        if per:
            text += f" ({per / self.median:.1f} img/s)"
        ops = ""
        if self.ops:
            lo, hi = min(self.ops), max(self.ops)
            ops = f" x {lo} op{'s' if hi > 1 else ''}" if lo == hi else f" x {lo}-{hi} ops"
        faults = f", {statistics.median(self.faults):.0f} page faults/op" if self.faults else ""
        return f"{text} [{self.n} samples{ops}, >= {min(self.sample_s):.2f} s each{faults}]"

    def as_dict(self) -> dict[str, Any]:
        return {
            "median_s": self.median,
            "min_s": self.min,
            "samples": self.n,
            "ops_per_sample": self.ops,
            "per_op_s": self.per_op,
            "page_faults_per_op": self.faults,
        }


def interleaved(
    ops: dict[str, Callable[[], Any]],
    samples: int = 5,
    min_sample_s: float = MIN_SAMPLE_S,
    min_repeats: dict[str, int] | int = 1,
    warmup: int = 1,
) -> dict[str, Timing]:
    """Time each op in ``ops`` over ``samples`` interleaved samples of at least ``min_sample_s`` each.

    Every op is first called ``warmup`` times (untimed). The samples then go round-robin: op 1 sample 1,
    op 2 sample 1, ..., op 1 sample 2, and so on. Within a sample the op is repeated until the sample has
    lasted ``min_sample_s`` (and at least ``min_repeats`` times); its time per op is the sample's time over
    the number of calls. The process's minor page faults per op are recorded beside it: on a virtual
    machine a fresh page can cost microseconds, and a side that allocates big buffers can turn slow for
    minutes when the allocator starts handing memory back to the kernel (seen on the data pipeline's
    cached side); the fault count tells that apart from slower code.
    """
    if samples < 1:
        raise ValueError("samples must be at least 1")
    floors = min_repeats if isinstance(min_repeats, dict) else dict.fromkeys(ops, min_repeats)
    result = {name: Timing(name) for name in ops}
    for fn in ops.values():
        for _ in range(warmup):
            fn()
    for _ in range(samples):
        for name, fn in ops.items():
            floor, count = floors.get(name, 1), 0
            faults = _minor_faults()
            t = time.perf_counter()
            while True:
                fn()
                count += 1
                seconds = time.perf_counter() - t
                if count >= floor and seconds >= min_sample_s:
                    break
            timing = result[name]
            timing.sample_s.append(seconds)
            timing.ops.append(count)
            timing.per_op.append(seconds / count)
            timing.faults.append((_minor_faults() - faults) / count)
    return result


def _minor_faults() -> int:
    """Minor page faults of this process so far (its own, not its children's: DataLoader workers are apart)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 1 << 30


def steady_allocator() -> str:
    """Pin glibc malloc's thresholds for this process and its children, and say so in one phrase.

    By default glibc adapts its mmap threshold and hands freed memory at the top of the heap back to the
    kernel once more than twice that threshold is free. Which way a process goes depends on the order of
    its first big allocations, and it decides a memory-heavy benchmark: the data pipeline's cached epoch
    (400 images) took 41 ms with 181 page faults in one run and 71-79 ms with 13,000-16,000 in the next
    two, same code, same quiet machine. Fixing the mmap threshold at 32 MB and the trim threshold at 1 GB
    keeps freed buffers in the heap, the state a long run settles in anyway, for both sides of every
    comparison. Child processes (servers, memory probes) get the same through glibc's environment
    variables; DataLoader workers are forked and inherit it. Not glibc (macOS, musl): nothing is changed;
    either variable already set: the caller's choice stands, and the phrase names it.
    """
    import ctypes
    import ctypes.util

    own = {k: os.environ[k] for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if k in os.environ}
    if own:  # the caller chose: glibc has applied it at start, and children inherit it
        return "allocator: " + ", ".join(f"{k}={v}" for k, v in own.items()) + " (from the environment)"
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    os.environ["MALLOC_TRIM_THRESHOLD_"] = str(TRIM_THRESHOLD)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "allocator: the platform's own (not glibc)"
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    if mallopt(m_mmap_threshold, MMAP_THRESHOLD) != 1 or mallopt(m_trim_threshold, TRIM_THRESHOLD) != 1:
        return "allocator: glibc defaults (mallopt refused)"
    return "glibc malloc pinned (mmap threshold 32 MB, no trim)"


def summed(name: str, parts: list[Timing]) -> Timing:
    """Per-sample sums of interleaved timings (e.g. one side's two datasets): sample k of the sum is sample k
    of each part, added, so the sum's samples stay interleaved with the other side's."""
    out = Timing(name)
    n = min(p.n for p in parts)
    out.per_op = [sum(p.per_op[k] for p in parts) for k in range(n)]
    out.sample_s = [sum(p.sample_s[k] for p in parts) for k in range(n)]
    out.faults = [sum(p.faults[k] for p in parts) for k in range(min(len(p.faults) for p in parts))]
    return out


def ratio(slow: Timing, fast: Timing) -> float:
    """``slow`` median over ``fast`` median: how many times faster ``fast`` is."""
    return slow.median / fast.median


def ratio_note(slow: Timing, fast: Timing) -> str:
    return (
        f"ratio of medians, {slow.name} / {fast.name}, {min(slow.n, fast.n)} interleaved samples each "
        f"(per-sample ratios {min(_pairwise(slow, fast)):.2f}-{max(_pairwise(slow, fast)):.2f})"
    )


def _pairwise(slow: Timing, fast: Timing) -> list[float]:
    return [a / b for a, b in zip(slow.per_op, fast.per_op, strict=False)]


class Bench:
    """One benchmark's output: the machine first, figures collected, the headline last (and as JSON).

    ``--threads N`` (added by :meth:`add_arguments`) caps torch's threads in the benchmark's process and is
    passed to onnxruntime sessions: on a busy shared machine two threads on two cores stall each other
    (seen: densenet121 eager 2.7 s median with 2 threads, 0.33 s with 1, same minute), so the stability
    runs use ``--threads 1``; the default is each library's own (all cores).
    """

    def __init__(self, name: str, gpu: bool = True):
        self.name = name
        self.started = time.perf_counter()
        self.gpu = gpu
        self.machine: dict[str, Any] = {}
        self.threads: int | None = None
        self.figures: dict[str, Any] = {}

    @staticmethod
    def add_arguments(parser) -> None:
        parser.add_argument(
            "--threads",
            type=positive,
            default=None,
            help="torch and onnxruntime threads (default: the libraries' own, all cores); 1 holds steadier "
            "on a busy shared machine",
        )

    def start(self, threads: int | None = None) -> None:
        """Print the machine line (first line of the output) and apply ``--threads``."""
        self.threads = threads
        if threads:
            os.environ["OMP_NUM_THREADS"] = str(threads)  # for child processes (servers, memory probes)
            if "torch" in sys.modules or self.gpu:
                import torch

                torch.set_num_threads(threads)
        self.machine = machine.describe(gpu=self.gpu)
        self.machine["threads"] = threads
        self.machine["allocator"] = steady_allocator()
        used = (
            f"{threads} thread{'s' if threads > 1 else ''} used" if threads else "threads: library defaults"
        )
        print(f"{machine.summary(self.machine)}; {used}; {self.machine['allocator']}", flush=True)

    def figure(self, key: str, value: Any) -> None:
        """A figure for results.json (timings as :meth:`Timing.as_dict`)."""
        self.figures[key] = value.as_dict() if isinstance(value, Timing) else value

    def timings(self, timings: dict[str, Timing], prefix: str = "") -> None:
        for key, t in timings.items():
            self.figure(prefix + key, t)

    def headline(
        self, label: str, value: float, note: str, unit: str = "x", higher_is_better: bool = True
    ) -> int:
        """Print the last line ``<label>: <value><unit> (<note>)`` and write the JSON file if asked."""
        text = f"{value:.{2 if abs(value) < 100 else 1}f}{unit}"
        print(f"{label}: {text} ({note})", flush=True)
        out = os.environ.get(JSON_ENV)
        if out:
            record = {
                "benchmark": self.name,
                "headline": {
                    "label": label,
                    "value": value,
                    "unit": unit.strip(),
                    "note": note,
                    "higher_is_better": higher_is_better,
                },
                "figures": self.figures,
                "machine": self.machine,
                "argv": sys.argv[1:],
                "wall_s": time.perf_counter() - self.started,
            }
            write_text(out, json.dumps(record, indent=1, default=float) + "\n")
        return 0
