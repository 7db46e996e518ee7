"""Sensor tick intervals, overridable from the environment (read once, when the code location loads).

``minimum_interval_seconds`` is part of a sensor's definition, so it is decided at import time like
the resources in `mw_dagster.definitions`. The defaults are the production intervals; the variables
exist so tests (the daemon chaos scenario) and demos can tick faster:

- ``MW_RSS_POLL_INTERVAL_S`` (default 60): `rss_poll_sensor`.
- ``MW_ANOMALIES_POLL_INTERVAL_S`` (default 30): `new_anomalies_sensor`.
- ``MW_ORPHANED_RUNS_INTERVAL_S`` (default 60): `orphaned_runs_sensor` (`sensors.runs`).

Values below `MIN_INTERVAL_S` (5 s) are raised to it: the daemon's sensor loop does not run more
often than every 5 s anyway, and a feed polled faster than that is abuse of its publisher. A value
that is not an integer fails the code location load with a message naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

MIN_INTERVAL_S = 5

RSS_POLL_INTERVAL_VAR = "MW_RSS_POLL_INTERVAL_S"
RSS_POLL_INTERVAL_DEFAULT_S = 60
ANOMALIES_POLL_INTERVAL_VAR = "MW_ANOMALIES_POLL_INTERVAL_S"
ANOMALIES_POLL_INTERVAL_DEFAULT_S = 30


def interval_s(name: str, default: int, env: Mapping[str, str] | None = None) -> int:
    """The interval in seconds from variable `name` (blank or unset: `default`), at least 5 s.

    Raises:
        ValueError: The variable is set to something other than an integer.
    """
    raw = (os.environ if env is None else env).get(name, "").strip()
    if not raw:
        return max(MIN_INTERVAL_S, default)
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number of seconds, got {raw!r}") from None
    return max(MIN_INTERVAL_S, value)
