"""Charts of the watched market: the overview of all symbols and one symbol's day.

Contract:
- `overview_chart` draws every symbol normalised to 100 at its first price in the window (so
  moves of coins priced 0.3 and 58,000 compare on one scale), a line at 100, and the alerts
  (``open`` / ``escalate`` events) as triangles on their symbol's line (up or down). Symbols
  without at least two prices in the window are listed as "no data" under the plot.
- `day_chart` draws one symbol's day [day_start, day_start + 24 h) with each episode shaded from
  its opening to its close (or the end of the day), its events marked and numbered with the
  episode's peak move.
- Bad input never raises: nothing drawable gives a text-only chart with a `reason`; gaps are
  shaded and named in `reason`.
Pure (matplotlib on its own Agg canvas, see `render`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

from mw_core.charts import render
from mw_core.charts.model import Chart, Points
from mw_core.charts.render import (
    DOWN,
    NEUTRAL,
    PALETTE,
    UP,
    chart_axes,
    describe_gaps,
    draw_price,
    finish,
    gaps,
    new_figure,
    pct,
    price_axis,
    price_label,
    text_chart,
    time_axis,
    to_x,
    y_limits,
)
from mw_core.markets.episodes import EpisodeEvent
from mw_core.models import ms_to_dt

DAY_MS = 86_400_000
ALERT_KINDS = ("open", "escalate")


def _in_window(points: Points, t0: int, t1: int) -> list[tuple[int, float]]:
    return [(int(t), float(p)) for t, p in points if t0 <= t < t1 and math.isfinite(p) and p > 0]


def overview_chart(
    series: Mapping[str, Points],
    events: Sequence[EpisodeEvent] = (),
    *,
    window: tuple[int, int] | None = None,
) -> Chart:
    """All symbols normalised to 100 at the window start, alerts marked (see module contract).

    Args:
        series: Symbol -> ``(ts_ms, price)`` ascending (e.g. per-minute last prices of 24 h).
        events: Episode events; ``open`` and ``escalate`` of charted symbols are marked.
        window: [t0, t1) to draw; default: the span of the data.
    """
    started = time.perf_counter()
    stamps = [t for pts in series.values() for t, _ in pts]
    t0, t1 = window or ((min(stamps), max(stamps) + 1) if stamps else (0, 1))
    hours = max(1, round((t1 - t0) / 3_600_000))
    title = f"Watched market, last {hours} h (normalised to 100) · to {ms_to_dt(t1):%Y-%m-%d %H:%M} UTC"
    drawable = {s: pts for s, pts in ((s, _in_window(p, t0, t1)) for s, p in series.items()) if len(pts) >= 2}
    missing = sorted(set(series) - set(drawable))
    if not drawable:
        names = ", ".join(missing) or "no symbols"
        return text_chart(
            title, f"No price data in the window ({names}).", reason="no data in window", started=started
        )
    fig = new_figure()
    ax = chart_axes(fig, bottom_px=62 if missing else 52)
    ax.axhline(100.0, color=NEUTRAL, linewidth=0.8, linestyle=":")
    notes: list[str] = []
    values: list[float] = [100.0]
    bases: dict[str, tuple[float, str]] = {}
    for i, (symbol, pts) in enumerate(sorted(drawable.items())):
        colour = PALETTE[i % len(PALETTE)]
        base = pts[0][1]
        bases[symbol] = (base, colour)
        holes = gaps([t for t, _ in pts])
        if holes:
            notes.append(f"{symbol}: {describe_gaps(holes)}")
        change = pts[-1][1] / base - 1
        draw_price(ax, pts, holes, label=f"{symbol} {pct(change)}", color=colour, scale=100.0 / base)
        values += [100.0 * p / base for _, p in pts]
    # One line artist per (symbol, direction): a plot call per alert costs more than drawing it.
    marks: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for e in events:
        if e.symbol in bases and e.kind in ALERT_KINDS and t0 <= e.ts < t1:
            marks.setdefault((e.symbol, e.direction), []).append((e.ts, 100.0 * e.price / bases[e.symbol][0]))
    labelled: set[str] = set()
    for (symbol, direction), xy in sorted(marks.items()):
        label = None if direction in labelled else f"alert ({direction})"
        labelled.add(direction)
        ax.plot(
            to_x([t for t, _ in xy]),
            [v for _, v in xy],
            linestyle="none",
            marker="^" if direction == "up" else "v",
            markersize=8,
            color=bases[symbol][1],
            markeredgecolor=UP if direction == "up" else DOWN,
            markeredgewidth=1.5,
            zorder=5,
            label=label,
        )
    if missing:
        fig.text(
            ax.get_position().x0,
            6 / fig.bbox.height,
            "no data: " + ", ".join(missing),
            fontsize=8,
            color="#555555",
            parse_math=False,
        )
    y_limits(ax, values)
    time_axis(ax, t0, t1)
    price_axis(ax, "index (start = 100)")
    reason = "; ".join(notes + ([f"no data: {', '.join(missing)}"] if missing else [])) or None
    render.decorate(fig, ax, title, legend_cols=5)
    return finish(fig, title=title, started=started, reason=reason)


def _episode_spans(
    events: Sequence[EpisodeEvent], t1: int
) -> list[tuple[int, int, EpisodeEvent, EpisodeEvent]]:
    """(start, end, first event, last event) per episode, in opening order; open ones end at `t1`."""
    by_episode: dict[str, list[EpisodeEvent]] = {}
    for e in events:
        by_episode.setdefault(e.episode_id, []).append(e)
    spans = []
    for evs in by_episode.values():
        evs.sort(key=lambda e: e.seq)
        last = evs[-1]
        end = last.ts if last.kind == "close" else t1
        spans.append((evs[0].opened_ts, end, evs[0], last))
    return sorted(spans, key=lambda s: s[0])


def day_chart(symbol: str, prices: Points, events: Sequence[EpisodeEvent], *, day_start_ms: int) -> Chart:
    """One symbol's UTC day with its episodes shaded and their events marked (see module contract).

    Args:
        symbol: The symbol drawn; events of other symbols are ignored.
        prices: ``(ts_ms, price)`` ascending (per-minute last prices are plenty).
        events: Episode events touching the day.
        day_start_ms: 00:00 UTC of the day, epoch ms.
    """
    started = time.perf_counter()
    t0, t1 = day_start_ms, day_start_ms + DAY_MS
    mine = [e for e in events if e.symbol == symbol]
    spans = _episode_spans(mine, t1)
    title = f"{symbol} · {ms_to_dt(t0):%Y-%m-%d} UTC · {len(spans)} episode{'s' if len(spans) != 1 else ''}"
    pts = _in_window(prices, t0, t1)
    if not pts:
        return text_chart(
            title, f"No price data for {symbol} on this day.", reason="no data in window", started=started
        )
    if len(pts) == 1:
        msg = f"Only one tick for {symbol} on this day: {price_label(pts[0][1])} at {ms_to_dt(pts[0][0]):%H:%M}."
        return text_chart(title, msg, reason="single tick in window", started=started)
    first, last = pts[0][1], pts[-1][1]
    title += f" · {price_label(first)} → {price_label(last)} ({pct(last / first - 1)})"
    holes = gaps([t for t, _ in pts])
    reason = describe_gaps(holes) if holes else None
    fig = new_figure()
    ax = chart_axes(fig)
    draw_price(ax, pts, holes, label=f"{symbol} price")
    labelled: set[str] = set()
    for n, (start, end, opening, last_event) in enumerate(spans, start=1):
        colour = UP if opening.direction == "up" else DOWN
        label = None if opening.direction in labelled else f"episode ({opening.direction})"
        labelled.add(opening.direction)
        a, b = max(start, t0), min(end, t1)
        if b > a:
            ax.axvspan(*to_x([a, b]), color=colour, alpha=0.12, linewidth=0, label=label)
            ax.text(
                float(a),
                0.97,
                f"E{n} {pct(last_event.peak_ret)}",
                transform=ax.get_xaxis_transform(),
                fontsize=8,
                color=colour,
                va="top",
                weight="bold",
                parse_math=False,
            )
    render.mark_events(ax, mine, t0=t0, t1=t1)
    y_limits(ax, [p for _, p in pts] + [e.price for e in mine if t0 <= e.ts < t1], top_room=0.12)
    time_axis(ax, t0, t1)
    price_axis(ax)
    render.decorate(fig, ax, f"{title} ({reason})" if reason else title, legend_cols=6)
    return finish(fig, title=title, started=started, reason=reason)
