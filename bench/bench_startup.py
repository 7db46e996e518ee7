"""Benchmark of `mw up`: time to a usable platform, and the idle memory of the whole stack.

Run: ``python bench/bench_startup.py [--speed 60] [--idle 20] [--repeat 1] [--json]``

Starts ``mw up --replay sample --detach`` as a user does (embedded PostgreSQL + broker, a fresh
temporary ``MW_STATE_DIR``, offline: no RSS feeds, template LLM) and measures, from the moment the
command is launched:

- ``ui_s``: the Dagster webserver answers (``/server_info`` 200);
- ``ui_loaded_s``: the UI is usable: GraphQL lists the Market Watch repository (code location loaded);
- ``first_tick_s``: the first tick is durable: the processor's ``/healthz`` reports a stored batch
  whose Kafka offsets were committed (it commits only after the PostgreSQL transaction);
- ``first_row_s`` (first start only): the first ``prices`` row is visible in a new database
  session. On a warm start the replayed day is already stored (the idempotent write adds no row),
  so only ``first_tick_s`` applies;
- ``up_returned_s``: ``mw up --detach`` returned (it waits for every component's health check);
- ``stack_startup_s`` / ``stack_first_tick_s``: the supervisor's own figures from status.json;
- after ``--idle`` seconds: RSS and PSS summed over every process of the stack (supervisor,
  components, their descendants: PostgreSQL backends, Dagster code servers), per component too.
  RSS counts shared pages (PostgreSQL's shared buffers, shared libraries) once per process; PSS
  splits them, so its sum is the memory the stack really holds.
- ``down_s``: ``mw down``.

A *first start* uses an empty state dir (initdb, databases, schema, Dagster storage migrations);
a *warm start* runs again on that initialized state dir. With ``--repeat N`` both are run N times
(a new state dir per first start) and the median is reported. Targets (`mw_core.local.banners`): UI
answering + first tick durable < 40 s on a first start, < 20 s warm.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg2

from mw_core.local.banners import durable
from mw_core.local.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
MW = str(Path(sys.executable).parent / "mw")
REPOSITORIES = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
TIMINGS = ("up_returned_s", "ui_s", "ui_loaded_s", "first_tick_s", "first_row_s")


def _env(state_dir: Path) -> dict[str, str]:
    """No MW_* / DAGSTER_* from the caller: embedded servers, offline sources."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MW_", "DAGSTER_"))}
    env.update(
        MW_STATE_DIR=str(state_dir),
        MW_RSS_FEEDS="",
        MW_LLM_PROVIDER="template",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    return env


def _status(state_dir: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return data


class Probe(threading.Thread):
    """Polls `check` every `interval` seconds until it holds; `seconds` is then the time since `t0`."""

    def __init__(self, name: str, t0: float, check: Callable[[], bool], *, interval: float = 0.05) -> None:
        super().__init__(name=name, daemon=True)
        self.t0 = t0
        self.check = check
        self.interval = interval
        self.seconds: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                ok = self.check()
            except Exception:
                ok = False
            if ok:
                self.seconds = round(time.monotonic() - self.t0, 2)
                return
            self.stop.wait(self.interval)


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=1.0)
    except httpx.HTTPError:
        return None


def _ui_loaded(url: str) -> bool:
    try:
        body = httpx.post(f"{url}/graphql", json={"query": REPOSITORIES}, timeout=2.0).json()
    except (httpx.HTTPError, ValueError):
        return False
    nodes = (body.get("data") or {}).get("repositoriesOrError", {}).get("nodes") or []
    return any(n.get("name") == "__repository__" for n in nodes)


def _first_tick(state_dir: Path) -> bool:
    url = _status(state_dir).get("meta", {}).get("process_health")
    if not url:
        return False
    answer = _get(str(url))
    return answer is not None and durable(answer.content)


def _first_row(state_dir: Path) -> bool:
    url = _status(state_dir).get("meta", {}).get("database_url")
    if not url:
        return False
    with psycopg2.connect(str(url), connect_timeout=1) as conn, conn.cursor() as cur:
        cur.execute("SELECT EXISTS (SELECT 1 FROM prices)")
        row = cur.fetchone()
    conn.close()
    return bool(row and row[0])


def stack_processes(state_dir: Path) -> dict[str, list[psutil.Process]]:
    """Every live process of the stack, by component (descendants included; no duplicates)."""
    status = _status(state_dir)
    roots: list[tuple[str, Any]] = [("supervisor", status.get("supervisor", {}).get("pid"))]
    roots += [(c["component"], c.get("pid")) for c in status.get("components", [])]
    seen: set[int] = set()
    out: dict[str, list[psutil.Process]] = {}
    # Components first, so a child is counted under its component, not under the supervisor.
    for name, pid in [*roots[1:], roots[0]]:
        if not isinstance(pid, int):
            continue
        try:
            proc = psutil.Process(pid)
            family = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue
        for p in family:
            if p.pid not in seen:
                seen.add(p.pid)
                out.setdefault(name, []).append(p)
    return out


def memory(state_dir: Path) -> dict[str, Any]:
    """RSS and PSS (MiB) summed per component and in total."""
    per: dict[str, dict[str, float]] = {}
    total_rss = total_pss = 0.0
    count = 0
    for name, procs in stack_processes(state_dir).items():
        rss = pss = 0.0
        for proc in procs:
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.uss)
            count += 1
        per[name] = {"rss_mib": round(rss / 2**20, 1), "pss_mib": round(pss / 2**20, 1), "procs": len(procs)}
        total_rss += rss
        total_pss += pss
    return {
        "rss_mib": round(total_rss / 2**20, 1),
        "pss_mib": round(total_pss / 2**20, 1),
        "processes": count,
        "by_component": per,
    }


def one_start(state_dir: Path, *, speed: str, idle_s: float, timeout: float) -> dict[str, Any]:
    """`mw up` on `state_dir`, the timings, the idle memory, `mw down`."""
    env = _env(state_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = not (state_dir / "pg" / "PG_VERSION").exists()
    (state_dir / "status.json").unlink(missing_ok=True)  # probes must not read the previous run's
    t0 = time.monotonic()
    probes = {
        "ui_s": Probe(
            "ui", t0, lambda: (r := _get(f"{url}/server_info")) is not None and r.status_code == 200
        ),
        "ui_loaded_s": Probe("ui-loaded", t0, lambda: _ui_loaded(url), interval=0.1),
        "first_tick_s": Probe("tick", t0, lambda: _first_tick(state_dir)),
    }
    if first:
        probes["first_row_s"] = Probe("row", t0, lambda: _first_row(state_dir), interval=0.1)
    for probe in probes.values():
        probe.start()
    result: dict[str, Any] = {"start": "first" if first else "warm"}
    try:
        up = _mw(
            ["up", "--replay", "sample", "--speed", speed, "--detach", "--dagster-port", str(port)],
            env,
            timeout,
        )
        result["up_returned_s"] = round(time.monotonic() - t0, 2)
        if up.returncode != 0:
            raise RuntimeError(f"mw up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
        deadline = t0 + timeout
        for probe in probes.values():
            probe.join(max(0.0, deadline - time.monotonic()))
        for key, probe in probes.items():
            result[key] = probe.seconds
        meta = _status(state_dir).get("meta", {})
        result["stack_startup_s"] = meta.get("startup_s")
        result["stack_first_tick_s"] = meta.get("first_tick_s")
        idle_until = time.monotonic() + idle_s
        while time.monotonic() < idle_until:
            time.sleep(0.5)
        result["memory"] = memory(state_dir)
    finally:
        for probe in probes.values():
            probe.stop.set()
        t1 = time.monotonic()
        down = _mw(["down"], env, 90)
        result["down_s"] = round(time.monotonic() - t1, 2)
        if down.returncode != 0:
            print(f"mw down failed: {down.stderr}", file=sys.stderr)
    return result


def _mw(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """`mw <args>` from the repository root; output captured as text, the exit code left to the caller."""
    return subprocess.run(
        [MW, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
    return round(statistics.median(values), 2) if values else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("first", "warm"):
        rs = [r for r in runs if r["start"] == kind]
        if not rs:
            continue
        summary: dict[str, Any] = {
            k: _median(rs, k) for k in (*TIMINGS, "stack_startup_s", "stack_first_tick_s", "down_s")
        }
        ui, tick = summary["ui_s"], summary["first_tick_s"]
        summary["usable_s"] = max(ui, tick) if ui is not None and tick is not None else None
        summary["rss_mib"] = statistics.median(r["memory"]["rss_mib"] for r in rs if "memory" in r)
        summary["pss_mib"] = statistics.median(r["memory"]["pss_mib"] for r in rs if "memory" in r)
        summary["processes"] = rs[-1].get("memory", {}).get("processes")
        summary["runs"] = len(rs)
        out[kind] = summary
    return out


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--speed", default="60", help="replay speed passed to `mw up` (default 60)")
    parser.add_argument(
        "--idle", type=float, default=20.0, help="seconds before measuring memory (default 20)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="first + warm starts to run (median; default 1)"
    )
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds allowed per start (default 180)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    runs: list[dict[str, Any]] = []
    for _ in range(args.repeat):
        state_dir = Path(tempfile.mkdtemp(prefix="mw-bench-startup-"))
        try:
            for _kind in ("first", "warm"):
                runs.append(one_start(state_dir, speed=args.speed, idle_s=args.idle, timeout=args.timeout))
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(state_dir)
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        },
        "command": f"mw up --replay sample --speed {args.speed} --detach",
        "idle_s": args.idle,
        "summary": summarize(runs),
        "runs": runs,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    m = results["machine"]
    print(f"{results['command']}  ({m['cpus']} CPUs, {m['mem_gib']} GiB, load {m['load_avg_1m']})")
    header = ["start", "up returned", "UI answers", "UI loaded", "1st tick durable", "1st row", "usable"]
    header += ["RSS MiB", "PSS MiB", "procs", "down"]
    widths = [max(6, len(h)) for h in header]
    print(
        "  ".join(
            f"{h:>{w}}" if i else f"{h:<{w}}" for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    for kind, s in results["summary"].items():
        cells = [s["up_returned_s"], s["ui_s"], s["ui_loaded_s"], s["first_tick_s"], s["first_row_s"]]
        cells += [s["usable_s"], s["rss_mib"], s["pss_mib"], s["processes"], s["down_s"]]
        print("  ".join([f"{kind:<6}", *(f"{_fmt(c):>{w}}" for c, w in zip(cells, widths[1:], strict=True))]))
    print(
        "seconds from launching `mw up`; usable = max(UI answers, 1st tick durable); memory after "
        f"{args.idle:.0f} s, summed over all processes of the stack"
    )
    last = runs[-1].get("memory", {}).get("by_component", {})
    if last:
        print(
            "memory by component (last run, MiB RSS / PSS): "
            + ", ".join(f"{name} {v['rss_mib']:.0f}/{v['pss_mib']:.0f}" for name, v in last.items())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
