"""Comparing a reproduction's configurations: the paper's paired comparisons among those that ran."""

from __future__ import annotations

from pathlib import Path

from .experiments import COMPARISONS


def comparisons(runs: list[dict], experiments: tuple[int, ...], n_boot: int) -> list[dict]:
    """The paper's paired comparisons (``COMPARISONS``) among the configurations this reproduction ran."""
    from ..evaluation.compare import compare

    files: dict[str, list[Path]] = {}
    for r in runs:
        files.setdefault(r["configuration"], []).append(Path(r["run_dir"]) / "test" / "predictions.csv")
    out = []
    for exp, a, b in COMPARISONS:
        wanted = exp in experiments or (exp == 2 and 3 in experiments)
        if wanted and a in files and b in files:
            out.append({"experiment": exp, **compare(files[a], files[b], a, b, n_boot=n_boot)})
    return out
