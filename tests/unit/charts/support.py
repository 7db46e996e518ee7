"""Shared by the chart tests: the real fixture days and a PNG check that decodes the picture."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.image import imread

from mw_core.charts.model import Chart, Points
from mw_core.charts.render import png_size
from mw_core.replay.klines import read_kline_file

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CRASH_DAY_MS = 1_722_816_000_000  # 2024-08-05 00:00 UTC
CALM_DAY_MS = 1_723_939_200_000  # 2024-08-18 00:00 UTC
CRASH_SYMBOLS = ("BTCUSDT", "SOLUSDT", "ADAUSDT")
CRASH_FILES = [FIXTURES / f"{s}-1m-2024-08-05.csv" for s in CRASH_SYMBOLS]
CALM_FILE = FIXTURES / "BTCUSDT-1m-2024-08-18.csv"
MAX_PNG_BYTES = 150_000


def day_points(path: Path) -> list[tuple[int, float]]:
    """A kline dump as the replay's ticks: (close time ms, close)."""
    return [(k.close_time, k.close) for k in read_kline_file(path).klines]


def assert_picture(chart: Chart, *, min_colours: int = 40) -> np.ndarray:
    """The PNG decodes, is at least 400x200 px, under 150 KB and not blank; returns its pixels."""
    assert chart.png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(chart.png) < MAX_PNG_BYTES, len(chart.png)
    pixels = imread(io.BytesIO(chart.png), format="png")
    height, width = pixels.shape[:2]
    assert (width, height) == (chart.width, chart.height) == png_size(chart.png)
    assert width >= 400 and height >= 200
    colours = len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0))
    assert colours >= min_colours, f"only {colours} distinct colours: blank?"
    return pixels


def without(points: Points, t0: int, t1: int) -> list[tuple[int, float]]:
    """`points` with [t0, t1) cut out (a data gap)."""
    return [p for p in points if not t0 <= p[0] < t1]
