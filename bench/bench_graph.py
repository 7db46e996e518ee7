"""Wall time of a Dagster run of the whole asset graph on the replayed sample day.

Starts `mw up --replay sample --detach` in a scratch state dir, waits until the day is stored,
then launches, through the webserver's GraphQL API, the asset graph in dependency order
(`db_schema`, `headlines`, `price_anomalies` for 2024-08-05, `alert_enrichments`; Dagster runs
partitioned and unpartitioned assets as separate runs) and reports the wall time from the first
launch to the last SUCCESS. Finally `mw down`.

    python bench/bench_graph.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mw_core.local.ports import free_port
from tests.e2e.helpers import DagsterAPI, running, start_platform


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mw-bench-graph-") as tmp:
        port = free_port()
        platform = start_platform(Path(tmp), dagster_port=port, MW_RSS_FEEDS="none")
        with running(platform, "--replay", "sample", "--speed", "max"):
            api = DagsterAPI(f"http://127.0.0.1:{port}")
            api.discover(timeout=120)
            time.sleep(15)  # let the replayed day land (1,440 ticks)
            api.wait_idle(timeout=120)
            started = time.perf_counter()
            steps = [
                (["db_schema"], None),
                (["headlines"], None),
                (["price_anomalies"], "2024-08-05"),
                (["alert_enrichments"], None),
            ]
            per_step = []
            for assets, partition in steps:
                t0 = time.perf_counter()
                run_id = api.launch(assets, partition=partition)
                status = api.wait([run_id], timeout=300)[run_id]
                per_step.append((assets[0], status, time.perf_counter() - t0))
            total = time.perf_counter() - started
        for name, status, seconds in per_step:
            print(f"{name:<20} {status:<8} {seconds:6.1f} s")
        print(f"whole graph, 4 runs in dependency order: {total:.1f} s wall (target < 60 s)")
        return 0 if all(s == "SUCCESS" for _, s, _ in per_step) else 1


if __name__ == "__main__":
    sys.exit(main())
