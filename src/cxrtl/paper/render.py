"""Rendering the report's sections: Markdown for ``report.md``, one self-contained HTML page for
``report.html`` (figures embedded as data URIs). Both come from the same :class:`Section` list."""

from __future__ import annotations

import base64
import html
import os
import re
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


def anchor(title: str) -> str:
    """The anchor of a section heading, as GitHub makes it from a Markdown heading (and report.html uses)."""
    text = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return text.replace(" ", "-")


def render_markdown(warnings: list[str], sections: list[Section], out: Path) -> str:
    """report.md: the warnings quoted first, a table of contents, then every section; figure links
    relative to ``out``."""
    lines = [f"> {w}" for w in warnings]
    if lines:
        lines.append("")
    lines += [
        f"# cxrtl reproduction of {PAPER_CITATION}",
        "",
        "_A research tool's output, not a medical device's._",
        "",
    ]
    if len(sections) > 1:
        lines += ["**Contents:** " + " · ".join(f"[{s.title}](#{anchor(s.title)})" for s in sections), ""]
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
    return Path(os.path.relpath(Path(path).resolve(), Path(out).resolve())).as_posix()


def _inline(text: str) -> str:
    """Escape, then render `code` and **bold**."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


# Header groups of report.html: a run of columns named "<prefix>..." sits under one group header, each
# column keeping the rest of its name, so wide tables fit a laptop screen (report.md keeps the full names).
GROUPS = (  # (prefix, group header, capitalise the rest)
    ("Paper ", "Paper (published)", True),
    ("Test ", "This reproduction, test set", True),
    ("Seeds: ", "Mean accuracy over seeds (two-level bootstrap)", False),
    ("Ensemble: ", "Ensemble test (seed-averaged models)", False),
)


def _group_of(column: str) -> tuple[str, str] | None:
    for prefix, label, capitalise in GROUPS:
        if column.startswith(prefix) and len(column) > len(prefix):
            rest = column[len(prefix) :]
            return label, rest[0].upper() + rest[1:] if capitalise else rest
    return None


def _html_head(columns: list[str]) -> str:
    """One header row, or two where runs of columns share a group (``GROUPS``)."""
    grouped = [_group_of(c) for c in columns]
    if not any(grouped):
        return "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
    top, bottom, i = [], [], 0
    while i < len(columns):
        g = grouped[i]
        if g is None:
            top.append(f"<th rowspan='2'>{html.escape(columns[i])}</th>")
            i += 1
            continue
        j = i
        while j < len(columns) and (gj := grouped[j]) is not None and gj[0] == g[0]:
            bottom.append(f"<th>{html.escape(gj[1])}</th>")
            j += 1
        top.append(f"<th colspan='{j - i}' class='group'>{html.escape(g[0])}</th>")
        i = j
    return "<tr>" + "".join(top) + "</tr><tr>" + "".join(bottom) + "</tr>"


def _html_table(t: Table) -> str:
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in t.rows
    )
    notes = "".join(f"<p class='note'>{_inline(n)}</p>" for n in t.notes if n)
    return (
        f"<h3>{html.escape(t.title)}</h3><table><thead>{_html_head(t.columns)}</thead><tbody>{body}"
        f"</tbody></table>{notes}"
    )


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.85em}th,td{border:1px solid #ccc;
padding:.25em .45em}th{background:#f3f3f3;font-weight:600}th.group{background:#e8eef6}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:.6em 1em;margin:.4em 0}
nav.toc{background:#f7f7f7;border:1px solid #ddd;padding:.4em 1em;margin:1em 0}nav.toc ol{margin:.3em 0;
columns:2}figure{display:inline-block;margin:.5em;max-width:48%;vertical-align:top}figure img{max-width:100%}
figcaption{font-size:.85em;color:#555}.note{font-size:.85em;color:#555}pre{background:#f7f7f7;padding:.6em;
overflow:auto;white-space:pre-wrap}code{background:#f3f3f3;padding:0 .2em;overflow-wrap:anywhere}"""


def render_html(warnings: list[str], sections: list[Section]) -> str:
    """report.html: one self-contained page, the warnings first, a table of contents, figures embedded."""
    parts = [f"<div class='warn'>{_inline(w)}</div>" for w in warnings]
    parts += [
        f"<h1>cxrtl reproduction of {html.escape(PAPER_CITATION)}</h1>",
        "<p><em>A research tool's output, not a medical device's.</em></p>",
    ]
    if len(sections) > 1:
        items = "".join(f"<li><a href='#{anchor(s.title)}'>{html.escape(s.title)}</a></li>" for s in sections)
        parts.append(
            f"<nav class='toc' aria-label='Contents'><strong>Contents</strong><ol>{items}</ol></nav>"
        )
    for s in sections:
        parts.append(f"<h2 id='{anchor(s.title)}'>{html.escape(s.title)}</h2>")
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
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'><title>cxrtl reproduction</title>"
        f"<style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n"
    )
