"""Container healthcheck that also gets a persistently unhealthy service restarted.

Docker marks a container ``unhealthy`` when its healthcheck fails, but plain ``docker compose``
never restarts it for that: a restart policy acts only when the main process exits. So this check
counts consecutive failures in a state file and, at ``--restart-after``, sends SIGTERM to PID 1
(``init: true`` makes it tini, which forwards the signal: the service shuts down cleanly, flushes
and commits, exits, and ``restart: unless-stopped`` starts it again).

    python /app/healthcheck.py http://127.0.0.1:9100/healthz --restart-after 8

Exit status 0 when ``GET url`` answers 200 (the failure count is reset), else 1. Standard library
only: it runs in the image's interpreter with nothing imported from the application.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path


def healthy(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - fixed local URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--restart-after", type=int, default=8, help="consecutive failures (0: never)")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--state", type=Path, default=Path("/tmp/mw-healthcheck-failures"))  # noqa: S108
    parser.add_argument("--pid", type=int, default=1, help="process to stop (PID 1: the container)")
    args = parser.parse_args(argv)

    if healthy(args.url, args.timeout):
        with contextlib.suppress(FileNotFoundError):
            args.state.unlink()
        return 0
    try:
        failures = int(args.state.read_text().strip() or 0) + 1
    except (FileNotFoundError, ValueError):
        failures = 1
    if args.restart_after and failures >= args.restart_after:
        sys.stderr.write(
            f"{args.url} unhealthy {failures} times in a row: stopping PID {args.pid} so the "
            "restart policy starts the service again\n"
        )
        with contextlib.suppress(FileNotFoundError):
            args.state.unlink()
        os.kill(args.pid, signal.SIGTERM)
    else:
        args.state.write_text(str(failures))
        sys.stderr.write(f"{args.url} unhealthy ({failures}/{args.restart_after or 'never'})\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
