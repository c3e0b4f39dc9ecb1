"""Number formatting shared by tables, reports and the command line: percentages, intervals, dashes."""

from __future__ import annotations

import math
from collections.abc import Sequence

DASH = "—"  # an undefined or missing value in a human-readable cell


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_pct(value: float | None, ci: Sequence[float] | None = None, digits: int = 1) -> str:
    """``95.8% [94.9, 96.6]``; a dash when undefined."""
    if value is None or _missing(value):
        return DASH
    text = f"{100 * value:.{digits}f}%"
    if ci:
        text += f" [{100 * ci[0]:.{digits}f}, {100 * ci[1]:.{digits}f}]"
    return text


def fmt_num(value, digits: int = 4) -> str:
    """A float with ``digits`` decimals, anything else as ``str``; a dash when undefined."""
    if _missing(value):
        return DASH
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def fmt_seconds(seconds) -> str:
    """``12 s`` below a minute, ``3.4 min`` from one; a dash when unknown."""
    if seconds is None:
        return DASH
    seconds = float(seconds)
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def csv_num(value) -> str:
    """A number for a CSV cell (six significant digits); empty when undefined."""
    if _missing(value):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)
