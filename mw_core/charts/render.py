"""The one way a chart becomes a PNG: a `Figure` on its own `FigureCanvasAgg`, never pyplot.

Contract:
- Every figure is created by `new_figure` with its own Agg canvas (the Agg backend chosen
  explicitly, no display, no pyplot global figure registry), so builders may run in several
  threads at once and nothing leaks between calls.
- `finish` encodes the PNG at the figure's native size (default 800x400 px at 100 dpi, what
  Dagster's markdown view shows) and returns a `Chart`; `text_chart` is the text-only figure for
  data that cannot be drawn (no data, a single tick).
- Text drawn from data (titles, headlines) goes through `plain` (sanitised, truncated) and is
  drawn with ``parse_math=False``: a ``$`` in a headline is a dollar sign, not mathtext.
- Time is drawn as float epoch ms with UTC-aligned round ticks (`time_axis`).
- `gaps` finds holes in a series; `with_breaks` inserts NaN there so lines do not bridge them.
Pure: no I/O beyond memory buffers.
"""

from __future__ import annotations

import io
import math
import struct
import time
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from mw_core.charts.model import Chart, Points
from mw_core.markets.episodes import EpisodeEvent
from mw_core.models import ms_to_dt
from mw_core.news.sanitize import clean_text

WIDTH_PX = 800
HEIGHT_PX = 400
DPI = 100
MINUTE_MS = 60_000
# A hole longer than this many median tick intervals (and at least 5 minutes) is a data gap.
GAP_FACTOR = 5
GAP_MIN_MS = 5 * MINUTE_MS

UP = "#1a9850"
DOWN = "#d73027"
NEUTRAL = "#7f7f7f"
PRICE = "#1f4e79"
REFERENCE = "#e08a00"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TICK_STEPS_MIN = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)
_MARKERS = {"open": "o", "escalate": "D", "close": "s"}
_KIND_ORDER = {"open": 0, "escalate": 1, "close": 2}


def new_figure(width_px: int = WIDTH_PX, height_px: int = HEIGHT_PX) -> Figure:
    """A figure of `width_px` x `height_px` pixels attached to its own Agg canvas."""
    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def finish(fig: Figure, *, title: str, started: float, reason: str | None = None) -> Chart:
    """Encode `fig` as PNG (no metadata, native size) and wrap it with its title and reason."""
    buf = io.BytesIO()
    # No software name or timestamp, so identical charts are identical bytes; zlib level 1 encodes
    # ~3x faster than the default and costs a few percent in size on flat-colour charts.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, pil_kwargs={"compress_level": 1})
    data = buf.getvalue()
    width, height = png_size(data)
    return Chart(
        png=data,
        width=width,
        height=height,
        title=title,
        reason=reason,
        render_ms=(time.perf_counter() - started) * 1000.0,
    )


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; ValueError when `data` is not a PNG."""
    if len(data) < 24 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def plain(text: str | None, max_len: int) -> str:
    """Untrusted text as one plain line of at most `max_len` characters (never markup)."""
    return clean_text(text, max_len=max_len, is_html=False)


def text_chart(title: str, message: str, *, reason: str, started: float | None = None) -> Chart:
    """A chart that only says why there is no picture (no data, a single tick, ...)."""
    started = time.perf_counter() if started is None else started
    fig = new_figure()
    fig.text(
        0.5, 0.62, plain(title, 90), ha="center", va="center", fontsize=13, weight="bold", parse_math=False
    )
    fig.text(
        0.5,
        0.42,
        plain(message, 110),
        ha="center",
        va="center",
        fontsize=11,
        color="#444444",
        parse_math=False,
        wrap=True,
    )
    return finish(fig, title=title, started=started, reason=reason)


def to_x(ts_ms: Sequence[int] | np.ndarray) -> np.ndarray:
    """Epoch ms -> x coordinates (float epoch ms: exact to well below a millisecond)."""
    return np.asarray(ts_ms, dtype="float64")


def time_ticks(t0: int, t1: int) -> tuple[list[int], list[str]]:
    """4 to 9 UTC-aligned ticks in [t0, t1] on a round step; labels HH:MM (MM-DD at midnight)."""
    span = max(t1 - t0, 1)
    step = next(
        (s * MINUTE_MS for s in _TICK_STEPS_MIN if span / (s * MINUTE_MS) <= 8),
        _TICK_STEPS_MIN[-1] * MINUTE_MS,
    )
    first = -(-t0 // step) * step
    ticks = list(range(first, t1 + 1, step))
    long_span = span > 2 * 86_400_000
    labels = []
    for t in ticks:
        dt = ms_to_dt(t)
        midnight = dt.hour == 0 and dt.minute == 0
        labels.append(dt.strftime("%m-%d %H:%M" if long_span else "%m-%d" if midnight else "%H:%M"))
    return ticks, labels


def time_axis(ax: Axes, t0: int, t1: int) -> None:
    """x limits [t0, t1) with UTC time ticks and the 'time (UTC)' label."""
    ax.set_xlim(float(t0), float(t1))
    ticks, labels = time_ticks(t0, t1)
    ax.set_xticks([float(t) for t in ticks], labels)
    ax.set_xlabel("time (UTC)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, color="#e6e6e6", linewidth=0.6)


def gaps(ts_ms: Sequence[int], *, min_gap_ms: int = GAP_MIN_MS) -> list[tuple[int, int]]:
    """Holes in a series: consecutive ticks further apart than max(`min_gap_ms`, 5 x median step)."""
    if len(ts_ms) < 3:
        return []
    steps = np.diff(np.asarray(ts_ms, dtype="int64"))
    limit = max(float(min_gap_ms), GAP_FACTOR * float(np.median(steps)))
    return [(int(ts_ms[int(i)]), int(ts_ms[int(i) + 1])) for i in np.flatnonzero(steps > limit)]


def with_breaks(points: Points, holes: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(dates, prices) with a NaN after each hole's start, so a line is not drawn across it."""
    ts = np.asarray([p[0] for p in points], dtype="int64")
    px = np.asarray([p[1] for p in points], dtype="float64")
    if holes:
        starts = np.searchsorted(ts, [a for a, _ in holes], side="right")
        ts = np.insert(ts, starts, [a + 1 for a, _ in holes])
        px = np.insert(px, starts, np.nan)
    return to_x(ts), px


def pct(ret: float) -> str:
    """A return as signed percent text: 0.0321 -> '+3.21%'."""
    return f"{ret * 100:+.2f}%"


def describe_gaps(holes: Sequence[tuple[int, int]]) -> str:
    """'data gap of 42 min' / '3 data gaps (longest 42 min)'."""
    longest = max(b - a for a, b in holes) // MINUTE_MS
    if len(holes) == 1:
        return f"data gap of {longest} min"
    return f"{len(holes)} data gaps (longest {longest} min)"


def sentiment_colour(sentiment: float) -> str:
    return UP if sentiment > 0 else DOWN if sentiment < 0 else NEUTRAL


def price_label(value: float) -> str:
    """Prices as people read them: 58,112 / 142.35 / 0.3312."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    return f"{value:.4g}"


def price_axis(ax: Axes, label: str = "price") -> None:
    ax.set_ylabel(label, fontsize=9)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: price_label(v)))


def draw_price(
    ax: Axes,
    pts: Points,
    holes: Sequence[tuple[int, int]],
    *,
    label: str,
    color: str = PRICE,
    scale: float = 1.0,
) -> None:
    """The price line (times `scale`), broken and shaded grey where the data has holes."""
    x, y = with_breaks(pts, holes)
    ax.plot(x, y * scale, color=color, linewidth=1.3, label=label)
    for i, (a, b) in enumerate(holes):
        ax.axvspan(
            *to_x([a, b]),
            color=NEUTRAL,
            alpha=0.18,
            hatch="//",
            linewidth=0,
            label="no data" if i == 0 else None,
        )


def mark_events(
    ax: Axes, events: Sequence[EpisodeEvent], *, t0: int, t1: int, focus: EpisodeEvent | None = None
) -> None:
    """One marker per episode event in [t0, t1): shape by kind, colour by direction; `focus` larger."""
    groups: dict[tuple[str, str, bool], list[EpisodeEvent]] = {}
    for e in sorted(events, key=lambda x: (x.ts, x.seq)):
        if t0 <= e.ts < t1:
            big = focus is not None and e.key == focus.key
            groups.setdefault((e.kind, e.direction, big), []).append(e)
    labelled: set[str] = set()
    # One artist per (kind, direction, focus): a plot call per event costs more than drawing it.
    for (kind, direction, big), evs in sorted(
        groups.items(), key=lambda g: (_KIND_ORDER.get(g[0][0], 9), g[0])
    ):
        label = None if kind in labelled else f"{kind} (#{evs[0].seq})" if big else kind
        labelled.add(kind)
        ax.plot(
            to_x([e.ts for e in evs]),
            [e.price for e in evs],
            linestyle="none",
            marker=_MARKERS.get(kind, "o"),
            markersize=10 if big else 7,
            color=UP if direction == "up" else DOWN,
            markeredgecolor="black" if big else "white",
            zorder=5,
            label=label,
        )


def chart_axes(fig: Figure, *, bottom_px: int = 52, top_px: int = 74) -> Axes:
    """The plot area: fixed pixel margins (no layout engine: it costs more than the drawing).

    The top margin holds the title and a two-row legend strip (`decorate`), the bottom one the
    time axis and any caption lines.
    """
    w, h = fig.bbox.width, fig.bbox.height
    left, right = 72 / w, 16 / w
    return fig.add_axes((left, bottom_px / h, 1 - left - right, 1 - (bottom_px + top_px) / h))


def decorate(fig: Figure, ax: Axes, title: str, *, legend_cols: int = 4) -> None:
    """Title at the top left, the legend as a strip between it and the plot (never over the data)."""
    fig.text(ax.get_position().x0, 1 - 8 / fig.bbox.height, title, fontsize=11, va="top", parse_math=False)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            handles,
            labels,
            loc="lower left",
            bbox_to_anchor=(0.0, 1.0),
            ncols=legend_cols,
            fontsize=7.5,
            frameon=False,
            borderaxespad=0.2,
            handlelength=1.6,
            columnspacing=1.2,
        )


def y_limits(ax: Axes, values: Sequence[float], *, bottom_room: float = 0.04, top_room: float = 0.06) -> None:
    """y range over `values` with a share of the span left free below and above."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return
    lo, hi = min(finite), max(finite)
    span = hi - lo or abs(hi) * 0.01 or 1.0
    ax.set_ylim(lo - bottom_room * span, hi + top_room * span)
