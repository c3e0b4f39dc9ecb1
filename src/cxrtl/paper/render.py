"""Rendering the report's sections: Markdown for ``report.md``, one self-contained HTML page for
``report.html`` (figures embedded as data URIs). Both come from the same :class:`Section` list."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from .table import Table

PAPER_CITATION = (
    'Sun, Guo, Teoh: "A Transfer Learning Method for Covid-19 and Pneumonia Diagnosis Based on '
    'Chest Radiograph Classification"'
)


@dataclass
class Section:
    """A heading, paragraphs (Markdown-light: `code` and **bold** only), tables, figures and details."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)  # (caption, png path)
    details: list[tuple[str, str]] = field(default_factory=list)  # (summary, preformatted text)


def render_markdown(warnings: list[str], sections: list[Section], out: Path) -> str:
    """report.md: the warnings quoted first, then every section; figure links relative to ``out``."""
    lines = [f"> {w}" for w in warnings]
    if lines:
        lines.append("")
    lines += [
        f"# cxrtl reproduction of {PAPER_CITATION}",
        "",
        "_A research tool's output, not a medical device's._",
        "",
    ]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for p in s.paragraphs:
            lines += [p, ""]
        for t in s.tables:
            lines += [t.to_markdown(), ""]
        for caption, fig in s.figures:
            lines += [
                f"![{caption}]({_link(fig, out)})",
                "",
                f"_{caption}_",
                "",
            ]
        for summary, text in s.details:
            lines += [f"<details><summary>{summary}</summary>", "", "```json", text, "```", "</details>", ""]
    return "\n".join(lines).rstrip() + "\n"


def _link(path: Path, out: Path) -> str:
    """``path`` relative to the folder of report.md (``out``), so links work wherever the report is opened."""
    import os

    return Path(os.path.relpath(Path(path).resolve(), Path(out).resolve())).as_posix()


def _inline(text: str) -> str:
    """Escape, then render `code` and **bold**."""
    import re

    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in t.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in t.rows
    )
    notes = "".join(f"<p class='note'>{_inline(n)}</p>" for n in t.notes if n)
    return f"<h3>{html.escape(t.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em}
th{background:#f3f3f3}.warn{background:#fff3cd;border:1px solid #e0c060;padding:.6em 1em;margin:.4em 0}
figure{display:inline-block;margin:.5em;max-width:48%;vertical-align:top}figure img{max-width:100%}
figcaption{font-size:.85em;color:#555}.note{font-size:.85em;color:#555}pre{background:#f7f7f7;padding:.6em;
overflow:auto}code{background:#f3f3f3;padding:0 .2em}"""


def render_html(warnings: list[str], sections: list[Section]) -> str:
    """report.html: one self-contained page, the warnings first, figures embedded."""
    parts = [f"<div class='warn'>{_inline(w)}</div>" for w in warnings]
    parts += [
        f"<h1>cxrtl reproduction of {html.escape(PAPER_CITATION)}</h1>",
        "<p><em>A research tool's output, not a medical device's.</em></p>",
    ]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts += [f"<p>{_inline(p)}</p>" for p in s.paragraphs]
        parts += [_html_table(t) for t in s.tables]
        parts += [
            f"<figure><img alt='{html.escape(c)}' src='{_data_uri(f)}'><figcaption>{_inline(c)}"
            "</figcaption></figure>"
            for c, f in s.figures
        ]
        parts += [
            f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>"
            for summary, text in s.details
        ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>cxrtl reproduction</title>"
        f"<style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n"
    )
