"""Pure helpers around rolling window statistics.

Contract:
- `metric_rows` turns the `WindowStats` of one tick into rows for `mw_core.adapters.postgres.prices.insert_metrics`
  (``(symbol, ts_ms, window_s, ret, volatility, count)``), in the order of `stats`.
- `exact_moments` / `sample_std` are the reference moment computations: `SymbolWindows`
  keeps sliding (Welford) moments on the hot path and falls back to `exact_moments` whenever
  its running values may have lost precision, so both agree to a few ulps.
- No I/O, no third-party imports.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import repeat
from operator import mul, sub

from mw_core.models import WindowStats

MetricRow = tuple[str, int, int, float | None, float | None, int]


def metric_rows(symbol: str, ts: int, stats: Sequence[WindowStats]) -> list[MetricRow]:
    """Rows for the ``metrics`` table, one per window.

    Args:
        symbol: The symbol the statistics belong to.
        ts: Tick time (epoch ms) the statistics are as of.
        stats: One `WindowStats` per window, as returned by `SymbolWindows.update`.

    Returns:
        ``[(symbol, ts, window_s, ret, volatility, count), ...]`` in the order of `stats`.
    """
    return [(symbol, ts, s.window_s, s.ret, s.volatility, s.count) for s in stats]


def exact_moments(values: Iterable[float]) -> tuple[int, float, float]:
    """Count, mean and sum of squared deviations (M2) of `values`, computed in two passes.

    Uses `math.fsum` and the corrected two-pass formula, so the result is accurate to a few
    ulps even when the mean is large compared with the spread.

    Args:
        values: Finite floats.

    Returns:
        ``(n, mean, m2)``; ``(0, 0.0, 0.0)`` for no values. ``m2`` is never negative.
    """
    vals = values if isinstance(values, Sequence) else list(values)
    n = len(vals)
    if n == 0:
        return 0, 0.0, 0.0
    mean = math.fsum(vals) / n
    # map() over operator functions keeps the per-value work in C (~2x a comprehension).
    devs = list(map(sub, vals, repeat(mean, n)))
    m2 = math.fsum(map(mul, devs, devs)) - math.fsum(devs) ** 2 / n
    return n, mean, max(m2, 0.0)


def sample_std(m2: float, n: int) -> float | None:
    """Sample standard deviation (ddof=1) from the sum of squared deviations.

    Args:
        m2: Sum of squared deviations from the mean.
        n: Number of values.

    Returns:
        ``sqrt(m2 / (n - 1))`` (0.0 when rounding made `m2` negative); None when ``n < 2``.
    """
    if n < 2:
        return None
    return math.sqrt(m2 / (n - 1)) if m2 > 0.0 else 0.0
