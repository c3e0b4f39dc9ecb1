"""Run every benchmark and collect their figures and the machine into ``benchmarks/results.json``.

Each benchmark runs in its own process, its output shown as it comes; it writes its figures to the file
named by ``$CXRTL_BENCH_JSON`` (``benchmarks/_timing.py``). Entries of benchmarks not run this time are
kept from the existing results file; each entry names the machine it was measured on.

    python benchmarks/run_all.py [--quick[=NAME,...]] [--threads N] [--only NAME,...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from cxrtl import machine  # noqa: E402
from cxrtl.fsutil import write_text  # noqa: E402

sys.path.insert(0, str(HERE))
from _timing import positive  # noqa: E402

# name -> extra arguments under --quick (smaller inner sizes; the same timing rules)
BENCHMARKS = {
    "data_pipeline": ["--quick"],
    "train_step": ["--no-memory"],
    "inference": ["--quick"],
    "dedup": ["--png", "120", "--jpeg", "20"],
    "dicom": ["--samples", "2"],
    "quantize": ["--quick"],
    "serve": ["--quick"],
    "segment": [],
    "pacs": ["--samples", "3", "--side", "1024"],
    "eval_precision": [],
}


def run_one(name: str, quick: bool, threads: int | None, tmp: Path) -> dict:
    out = tmp / f"{name}.json"
    cmd = [sys.executable, str(HERE / f"{name}.py"), *(BENCHMARKS[name] if quick else [])]
    if threads and name != "eval_precision":  # the GPU-only check takes no arguments
        cmd += ["--threads", str(threads)]
    src = str(HERE.parent / "src")
    env = {
        **os.environ,
        "CXRTL_BENCH_JSON": str(out),
        "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    t = time.perf_counter()
    rc = subprocess.run(cmd, env=env).returncode
    wall = time.perf_counter() - t
    if rc != 0:
        return {"benchmark": name, "failed": f"exit status {rc}", "wall_s": wall}
    if not out.is_file():  # e.g. a GPU-only benchmark on a machine without one
        return {"benchmark": name, "skipped": "no figures written (see its output)", "wall_s": wall}
    record = json.loads(out.read_text())
    record["quick"] = quick
    record["measured"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        nargs="?",
        const="all",
        default="",
        help="smaller inner sizes: for every benchmark, or for those named (comma-separated)",
    )
    ap.add_argument("--only", help="comma-separated benchmark names (default: all)")
    ap.add_argument(
        "--threads",
        type=positive,
        help="torch/onnxruntime threads for every benchmark (1 holds steadier on a busy machine)",
    )
    ap.add_argument("--out", default=str(HERE / "results.json"))
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(
            f"run_all: error: unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}", file=sys.stderr
        )
        return 2
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results["machine"] = machine.describe(gpu=True)
    entries = results.setdefault("benchmarks", {})
    failed = []
    with tempfile.TemporaryDirectory(prefix="cxrtl-bench-json-") as tmp:
        for name in names:
            quick = args.quick == "all" or name in args.quick.split(",")
            entries[name] = run_one(name, quick, args.threads, Path(tmp))
            failed += [name] if "failed" in entries[name] else []
            write_text(out, json.dumps(results, indent=1) + "\n")  # after each, so a stop keeps what ran
    print(f"\n{'benchmark':<15} headline")
    for name in names:
        e = entries[name]
        h = e.get("headline")
        print(
            f"{name:<15} "
            + (f"{h['label']}: {h['value']:.3g}{h['unit']}" if h else e.get("failed") or e["skipped"])
        )
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
