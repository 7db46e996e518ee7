"""Formatting helpers for Dagster metadata: markdown tables of sanitized text, times."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

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
