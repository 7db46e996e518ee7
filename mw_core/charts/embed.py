"""Charts inside documents: markdown images with data URIs and a self-contained HTML report.

Contract:
- `markdown_image(chart, alt)` gives ``![alt](data:image/png;base64,...)``: what Dagster's
  markdown metadata view renders without any web server. The alt text is plain text with the
  characters that would end it (``[]()``, newlines, backslashes) removed.
- `write_report_html(path, title, sections)` writes ONE file with every chart embedded as a
  data URI (no external resource, no script). Every piece of text (title, headings, notes, table
  cells) is HTML-escaped, so untrusted text (headlines, symbols) can never become markup. The
  file is written atomically (temporary file + rename) and its parent folders are created.
"""

from __future__ import annotations

import base64
import html
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mw_core.charts.model import Chart
from mw_core.news.sanitize import clean_text

_ALT_UNSAFE = re.compile(r"[\[\]()\\\n\r`]")
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:900px;
color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
img{max-width:100%;height:auto;border:1px solid #ddd}
table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left}
.note{color:#555;font-size:.9rem}
"""


def data_uri(chart: Chart) -> str:
    """``data:image/png;base64,...`` of the chart's PNG."""
    return "data:image/png;base64," + base64.b64encode(chart.png).decode("ascii")


def markdown_image(chart: Chart, alt: str) -> str:
    """A markdown image embedding `chart` (see module contract)."""
    text = _ALT_UNSAFE.sub(" ", clean_text(alt, max_len=200, is_html=False)).strip() or "chart"
    return f"![{text}]({data_uri(chart)})"


@dataclass(frozen=True, slots=True)
class ReportSection:
    """One part of a report: a heading, an optional chart, notes and an optional table."""

    heading: str
    chart: Chart | None = None
    notes: Sequence[str] = ()
    table: Sequence[Mapping[str, object]] = field(default_factory=tuple)


def _table(rows: Sequence[Mapping[str, object]]) -> str:
    header = list(rows[0])
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(h)))}</td>" for h in header) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def render_report_html(title: str, sections: Sequence[ReportSection]) -> str:
    """The report as one HTML document (every text escaped, charts as data URIs)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # The page needs nothing from outside: no scripts, images only from data URIs.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.heading)}</h2>")
        if section.chart is not None:
            c = section.chart
            alt = html.escape(c.title, quote=True)
            parts.append(f'<img src="{data_uri(c)}" width="{c.width}" height="{c.height}" alt="{alt}">')
            if c.reason:
                parts.append(f'<p class="note">{html.escape(c.reason)}</p>')
        parts.extend(f'<p class="note">{html.escape(note)}</p>' for note in section.notes)
        if section.table:
            parts.append(_table(section.table))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report_html(path: Path | str, title: str, sections: Sequence[ReportSection]) -> Path:
    """Write the self-contained report to `path` atomically; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(render_report_html(title, sections))
        Path(tmp).replace(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
