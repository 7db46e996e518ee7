"""The chart of one alert: the price around the move, its reference, its episode and the news.

Contract:
- `alert_window` chooses the span to draw: `before_s` (60 min) before the earliest of the move's
  reference time, the episode's opening and the alert, to `after_s` (30 min) after the alert,
  clipped to `now_ms` (what is available) and to `MAX_SPAN_MS` before the alert.
- `alert_chart` draws the price line, the reference price (horizontal line), the move's window
  (shaded), every event of the episode (open / escalate / close markers, the charted one larger),
  the move annotated (return, window) and related headlines as markers coloured by sentiment
  sign with their sanitised, truncated titles listed under the plot. Title, UTC time axis, price
  axis and legend are always present.
- Bad input never raises: no data or a single tick in the window gives a text-only chart with a
  `reason`; a data gap is drawn as a shaded hole and named in `reason`.
Pure (matplotlib on its own Agg canvas, see `render`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes

from mw_core.charts.model import Chart, HeadlineMark, Points
from mw_core.charts.render import (
    DOWN,
    REFERENCE,
    UP,
    chart_axes,
    decorate,
    describe_gaps,
    draw_price,
    finish,
    gaps,
    mark_events,
    new_figure,
    pct,
    plain,
    price_axis,
    price_label,
    sentiment_colour,
    text_chart,
    time_axis,
    to_x,
    y_limits,
)
from mw_core.markets.episodes import EpisodeEvent
from mw_core.models import ms_to_dt

BEFORE_S = 3600
AFTER_S = 1800
MAX_SPAN_MS = 6 * 3_600_000
MAX_HEADLINES = 3
HEADLINE_CHARS = 80


def alert_window(
    event: EpisodeEvent,
    episode: Sequence[EpisodeEvent] = (),
    *,
    before_s: int = BEFORE_S,
    after_s: int = AFTER_S,
    now_ms: int | None = None,
) -> tuple[int, int]:
    """[t0, t1) in epoch ms to draw around `event` (see module contract)."""
    earliest = min([event.ts, event.opened_ts, *(e.ts for e in episode if e.episode_id == event.episode_id)])
    if event.ref_ts is not None:
        earliest = min(earliest, event.ref_ts)
    t0 = max(earliest - before_s * 1000, event.ts - MAX_SPAN_MS)
    t1 = event.ts + after_s * 1000
    if now_ms is not None:
        t1 = max(min(t1, now_ms), event.ts + 1)
    return t0, t1


def window_label(window_s: int) -> str:
    """300 -> '5 min', 7200 -> '2 h'."""
    if window_s < 60:
        return f"{window_s} s"
    if window_s < 7200:
        return f"{window_s // 60} min"
    return f"{window_s / 3600:g} h"


def _title(event: EpisodeEvent) -> str:
    at = ms_to_dt(event.ts).strftime("%Y-%m-%d %H:%M UTC")
    return f"{event.symbol} {event.kind}: {pct(event.ret)} in {window_label(event.window_s)} · {at}"


def _mark_headlines(ax: Axes, headlines: Sequence[HeadlineMark], t0: int, t1: int) -> list[str]:
    """Sentiment-coloured markers at the bottom of the plot; returns the numbered caption lines."""
    shown = sorted((h for h in headlines if t0 <= h.ts < t1), key=lambda h: h.ts)[:MAX_HEADLINES]
    lines: list[str] = []
    labelled: set[str] = set()
    for i, h in enumerate(shown, start=1):
        colour = sentiment_colour(h.sentiment)
        sign = "positive" if h.sentiment > 0 else "negative" if h.sentiment < 0 else "neutral"
        label = None if sign in labelled else f"headline ({sign})"
        labelled.add(sign)
        x = to_x([h.ts])[0]
        ax.plot(
            [x],
            [0.04],
            transform=ax.get_xaxis_transform(),
            linestyle="none",
            marker="^",
            markersize=9,
            color=colour,
            markeredgecolor="black",
            zorder=6,
            label=label,
        )
        ax.text(
            x,
            0.09,
            str(i),
            transform=ax.get_xaxis_transform(),
            ha="center",
            fontsize=8,
            color=colour,
            weight="bold",
            parse_math=False,
        )
        at = ms_to_dt(h.ts).strftime("%H:%M")
        lines.append(f"[{i}] {at} ({h.sentiment:+.2f}) {plain(h.title, HEADLINE_CHARS)}")
    return lines


def alert_chart(
    event: EpisodeEvent,
    prices: Points,
    *,
    episode: Sequence[EpisodeEvent] = (),
    headlines: Sequence[HeadlineMark] = (),
    window: tuple[int, int] | None = None,
    now_ms: int | None = None,
) -> Chart:
    """The PNG chart of `event` (see module contract).

    Args:
        event: The alert to draw (open, escalate or close).
        prices: ``(ts_ms, price)`` of the symbol, ascending; points outside the window are ignored.
        episode: Other events (any episode; those of `event`'s episode are marked).
        headlines: Headlines related to the symbol; those inside the window are marked.
        window: [t0, t1) to draw; default `alert_window(event, episode, now_ms=now_ms)`.
        now_ms: The present, when the window should not reach past it.

    Returns:
        A `Chart` (never raises on bad data: see `Chart.reason`).
    """
    started = time.perf_counter()
    t0, t1 = window or alert_window(event, episode, now_ms=now_ms)
    title = _title(event)
    pts = [p for p in prices if t0 <= p[0] < t1 and np.isfinite(p[1])]
    span = f"{ms_to_dt(t0):%H:%M}-{ms_to_dt(t1):%H:%M} UTC"
    if not pts:
        return text_chart(
            title, f"No price data for {event.symbol} in {span}.", reason="no data in window", started=started
        )
    if len(pts) == 1:
        msg = (
            f"Only one tick for {event.symbol} in {span}: {pts[0][1]:,.6g} at {ms_to_dt(pts[0][0]):%H:%M:%S}."
        )
        return text_chart(title, msg, reason="single tick in window", started=started)

    holes = gaps([p[0] for p in pts])
    reason = describe_gaps(holes) if holes else None
    fig = new_figure()
    n_captions = min(len([h for h in headlines if t0 <= h.ts < t1]), MAX_HEADLINES)
    ax = chart_axes(fig, bottom_px=52 + 20 * n_captions)
    draw_price(ax, pts, holes, label=f"{event.symbol} price")
    ax.axhline(
        event.ref_price,
        color=REFERENCE,
        linestyle="--",
        linewidth=1.1,
        label=f"reference {price_label(event.ref_price)}",
    )
    move_start = event.ref_ts if event.ref_ts is not None else event.ts - event.window_s * 1000
    colour = UP if event.direction == "up" else DOWN
    ax.axvspan(
        *to_x([max(move_start, t0), event.ts]),
        color=colour,
        alpha=0.12,
        label=f"move window ({window_label(event.window_s)})",
    )
    mark_events(
        ax,
        [e for e in episode if e.episode_id == event.episode_id and e.seq != event.seq] + [event],
        t0=t0,
        t1=t1,
        focus=event,
    )
    # The label sits on the side the price came from, so it never covers the move itself.
    ax.annotate(
        f"{pct(event.ret)} in {window_label(event.window_s)}",
        xy=(to_x([event.ts])[0], event.price),
        xytext=(14, 30 if event.direction == "down" else -36),
        textcoords="offset points",
        fontsize=10,
        weight="bold",
        color=colour,
        arrowprops={"arrowstyle": "->", "color": colour},
        parse_math=False,
    )
    lines = _mark_headlines(ax, headlines, t0, t1)
    for i, line in enumerate(lines):
        fig.text(
            0.09,
            (8 + 20 * (len(lines) - 1 - i)) / fig.bbox.height,
            line,
            fontsize=8,
            color="#333333",
            parse_math=False,
        )
    prices_shown = (
        [p[1] for p in pts]
        + [event.ref_price]
        + [e.price for e in episode if e.episode_id == event.episode_id]
    )
    # Room under the line for the headline markers.
    y_limits(ax, prices_shown, bottom_room=0.15 if lines else 0.04)
    time_axis(ax, t0, t1)
    price_axis(ax)
    decorate(fig, ax, f"{title} ({reason})" if reason else title)
    return finish(fig, title=title, started=started, reason=reason)
