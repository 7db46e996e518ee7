"""Formatting helpers for Dagster metadata: markdown tables of sanitized text, times, charts.

Charts go into markdown metadata as ``data:`` URI images (`mw_core.charts.embed.markdown_image`):
the UI's markdown view renders them with no other server. Headings and reasons next to them are
plain text through `md_cell`, never markup.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from mw_core.charts.embed import markdown_image
from mw_core.charts.model import Chart

_MD_ESCAPES = str.maketrans({"|": "\\|", "\n": " ", "\r": " ", "`": "'", "<": "&lt;", ">": "&gt;"})


def md_cell(value: object, *, limit: int = 120) -> str:
    """One markdown table cell: plain text, no pipes / newlines / raw HTML, at most `limit` chars."""
    text = "" if value is None else str(value)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    # Brackets would let a feed's text form links; the preview is text only.
    return text.translate(_MD_ESCAPES).replace("[", "(").replace("]", ")")


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows)
    return "\n".join(lines)


def iso_ms(ms: int | None) -> str:
    """Epoch ms -> ``2024-08-05 01:10:00`` (UTC), '' for None."""
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def charts_markdown(items: Sequence[tuple[str, Chart | str]], *, empty: str = "_no chart_") -> str:
    """One section per item: a heading, then the chart image (and why it is degraded) or the reason
    there is no chart."""
    parts: list[str] = []
    for heading, chart in items:
        parts.append(f"#### {md_cell(heading, limit=160)}")
        if isinstance(chart, str):
            parts.append(f"_{md_cell(chart, limit=200)}_")
            continue
        parts.append(markdown_image(chart, heading))
        if chart.reason:
            parts.append(f"_{md_cell(chart.reason, limit=200)}_")
    return "\n\n".join(parts) if parts else empty


def chart_metadata(charts: Sequence[Chart]) -> dict[str, int | float]:
    """Numbers of the rendered charts (count, largest PNG, slowest rendering, smallest picture)."""
    return {
        "charts_rendered": len(charts),
        "chart_kb_max": round(max((len(c.png) for c in charts), default=0) / 1024, 1),
        "chart_render_ms_max": round(max((c.render_ms for c in charts), default=0.0), 1),
        "chart_width_min": min((c.width for c in charts), default=0),
        "chart_height_min": min((c.height for c in charts), default=0),
    }
