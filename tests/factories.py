"""Records the tests build again and again, with the fields the policy would derive derived here.

- `opening_event(symbol, ts, window_s, ret, price=..., threshold=..., ref_price=...)`: the ``open``
  event of a fresh episode, as `EpisodePolicy` emits it for its first detection: seq 1, episode id
  ``<SYMBOL>-<ts>``, direction from the sign of `ret`, reference time one window back, and the
  opening move as the peak and the extreme. Tests vary the rest with `dataclasses.replace`.
"""

from __future__ import annotations

from mw_core.markets.episodes import EpisodeEvent, EventKind, episode_id
from mw_core.models import Direction


def opening_event(
    symbol: str,
    ts: int,
    window_s: int,
    ret: float,
    *,
    price: float,
    threshold: float,
    ref_price: float,
    summary: str = "",
) -> EpisodeEvent:
    """The ``open`` event of an episode whose first detection is this move (see the module doc)."""
    direction: Direction = "down" if ret < 0 else "up"
    kind: EventKind = "open"
    head = (episode_id(symbol, ts), 1, kind, symbol, ts)
    move = (window_s, ret, direction, price, threshold)
    so_far = (ref_price, ts - window_s * 1000, ret, window_s, price, ts)  # the peak is the opening move
    return EpisodeEvent(*(head + move + so_far), summary)
