"""One table of the report (:class:`Table`) and the cells every table shares: a metric with its interval,
a mean ± sd over seeds, the run and protocol columns, and the note on what the test set can resolve."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..formatting import DASH, csv_num, fmt_pct
from ..fsutil import write_csv, write_text

LOSS_NAMES = {
    "ce": "Cross Entropy Loss",
    "wce-1cf": "WCE using 1-CF",
    "wce-icf": "WCE using inverse CF",
    "focal": "Focal Loss",
}
SCHEME_NAMES = {"finetune": "Fine-tune", "extractor": "Feature Extractor"}
INPUT_NAMES = {"raw": "Raw Images", "masked": "Masked Images"}


def fmt_paper(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.2f}%"


@dataclass
class Table:
    """One table: Markdown cells for people, CSV cells (plain numbers, intervals split) for programs."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    csv_columns: list[str] = field(default_factory=list)
    csv_rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_runs: int = 0  # runs that fill rows (0: only the paper's numbers)

    def to_markdown(self) -> str:
        """The table as GitHub Markdown with its title and notes."""

        def esc(cell) -> str:
            return str(cell).replace("|", "\\|")

        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(map(esc, self.columns)) + " |",
            "|" + "|".join(" --- " for _ in self.columns) + "|",
        ]
        lines += ["| " + " | ".join(map(esc, row)) + " |" for row in self.rows]
        if not self.rows:
            lines.append("| " + " | ".join([DASH] * len(self.columns)) + " |")
        lines += [""] + [f"{note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def write(self, out_dir: str | Path, stem: str | None = None) -> list[Path]:
        """Write ``<stem>.md`` and ``<stem>.csv`` into ``out_dir``."""
        out_dir = Path(out_dir)
        stem = stem or f"table_{self.key.lower()}"
        return [
            write_text(out_dir / f"{stem}.md", self.to_markdown()),
            write_csv(out_dir / f"{stem}.csv", self.csv_columns, self.csv_rows),
        ]


def resolution_note(runs: Sequence[dict]) -> str:
    """How far apart two accuracies must be to be told apart, given these runs' test-set sizes."""
    widths = []
    for r in runs:
        ci, n = (r.get("test") or {}).get("accuracy_ci"), (r.get("test") or {}).get("n")
        if ci and n:
            widths.append((n, 50 * (ci[1] - ci[0])))
    base = (
        "Brackets: 95% intervals (Wilson for accuracy, precision and recall; percentile bootstrap over "
        "test images for F1 and averages). Ours: the checkpoint with the best validation accuracy."
    )
    if not widths:
        return base
    ns = sorted({n for n, _ in widths})
    lo, hi = min(w for _, w in widths), max(w for _, w in widths)
    span = f"±{lo:.1f}" if f"{lo:.1f}" == f"{hi:.1f}" else f"±{lo:.1f} to ±{hi:.1f}"
    return (
        base + f" With {', '.join(map(str, ns))} test images the accuracy intervals are "
        f"{span} points wide: differences smaller than that between rows, or between "
        "ours and the paper's, are not resolved by this test set."
    )


def metric_cells(entry: dict | None, keys: Sequence[str]) -> tuple[list[str], list[str]]:
    """Markdown cells ``x% [lo, hi]`` and CSV cells (value, lo, hi) for ``keys`` of a metrics entry."""
    md, cs = [], []
    for key in keys:
        value = entry.get(key) if entry else None
        ci = entry.get(f"{key}_ci") if entry else None
        sd = entry.get(f"{key}_sd") if entry else None
        cell = fmt_pct(value, ci) if sd is None else fmt_mean_sd(value, sd)
        seeds = entry.get(f"{key}_seeds") if entry else None
        if seeds and value is not None:  # averaged over the seeds that have it
            cell += f" ({seeds[0]} of {seeds[1]} seeds)"
        md.append(cell)
        cs += [csv_num(value), csv_num(ci[0]) if ci else "", csv_num(ci[1]) if ci else ""]
    return md, cs


def fmt_mean_sd(value: float | None, sd: float | None) -> str:
    """``95.8% ± 0.4`` for a mean over seeds; a dash when undefined."""
    return fmt_pct(value) if value is None or sd is None else f"{fmt_pct(value)} ± {100 * sd:.1f}"


def csv_metric_columns(prefix: str, keys: Sequence[str]) -> list[str]:
    return [f"{prefix}{k}{suffix}" for k in keys for suffix in ("", "_lo", "_hi")]


def run_cells(run: dict | None, with_protocol: bool) -> tuple[list[str], list[str]]:
    name = run.get("name", "") if run else DASH
    md = [name] + ([run.get("protocol") or "" if run else ""] if with_protocol else [])
    cs = [run.get("name", "") if run else ""] + (
        [run.get("protocol") or "" if run else ""] if with_protocol else []
    )
    return md, cs
