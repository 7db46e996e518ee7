"""The status table of `mw up` / `mw status`, rendered from status.json content.

Contract: `render_status(status)` only formats what it is given (components, addresses, the
embedded broker's memory and rollovers, recent events, banners, and the notifier's per-channel
delivery counts under ``status["notifications"]``, channel names already privacy-masked); it
holds no password because status.json holds none. `wide` is the stdout console for it: piped or logged output is not
squeezed into 80 columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

wide = Console()
if not wide.is_terminal:  # piped or logged: do not squeeze the table into 80 columns
    wide = Console(width=160)

STATE_STYLE = {
    "running": "green",
    "done": "cyan",
    "external": "cyan",
    "starting": "yellow",
    "pending": "dim",
    "backoff": "red",
    "failed": "bold red",
    "stopping": "yellow",
    "stopped": "dim",
    "stale": "bold red",
    "gone": "dim",
}


def render_status(status: dict[str, Any], *, banners: Sequence[str] = (), hint: str = "") -> RenderableType:
    """The status table plus the addresses that matter (no passwords: status.json holds none)."""
    meta = status.get("meta", {})
    running = status.get("running", True)
    title = "Market Watch" + ("" if running else " (not running)")
    comps = status.get("components", [])
    with_detail = any(c.get("detail") for c in comps)
    table = Table(title=title)
    table.add_column("component", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("address", overflow="fold", min_width=12)
    table.add_column("PID", no_wrap=True, justify="right")
    table.add_column("restarts", no_wrap=True, justify="right")
    table.add_column("startup", no_wrap=True, justify="right")
    if with_detail:
        table.add_column("detail", overflow="fold")
    for comp in comps:
        state = str(comp.get("state", "?"))
        startup = comp.get("startup_s")
        row: list[RenderableType] = [
            str(comp.get("component")),
            Text(state, style=STATE_STYLE.get(state, "")),
            str(comp.get("address") or ""),
            str(comp.get("pid") or "-"),
            str(comp.get("restarts", 0)),
            f"{startup:.1f}s" if isinstance(startup, int | float) else "",
        ]
        if with_detail:
            row.append(str(comp.get("detail") or ""))
        table.add_row(*row)
    lines: list[RenderableType] = [table]
    info = Text()
    if meta.get("dagster_url"):
        info.append("Dagster UI   ", style="bold")
        info.append(f"{meta['dagster_url']}\n", style="link " + str(meta["dagster_url"]))
    if meta.get("database_url"):
        info.append("database     ", style="bold")
        info.append(f"{meta['database_url']}\n")
    if meta.get("kafka_bootstrap"):
        info.append("kafka        ", style="bold")
        info.append(f"{meta['kafka_bootstrap']}\n")
    memory = broker_memory(comps)
    if memory:
        info.append("broker memory", style="bold")
        info.append(f"{memory}\n")
    if meta.get("startup_s") is not None:
        info.append("started in   ", style="bold")
        info.append(f"{meta['startup_s']:.1f}s")
        if meta.get("first_tick_s") is not None:
            info.append(f"; first tick durable after {meta['first_tick_s']:.1f}s")
        info.append("\n")
    info.append("state dir    ", style="bold")
    info.append(f"{meta.get('state_dir') or status.get('supervisor', {}).get('state_dir', '')}")
    lines.append(info)
    deliveries = status.get("notifications") or []
    if deliveries:
        lines.append(delivery_table(deliveries))
    for banner in banners:
        ok = banner.endswith(": OK")
        lines.append(Text(banner, style="green" if ok else "bold yellow"))
    events = status.get("events", [])[-4:]
    if events:
        ev = Text("recent: ", style="dim")
        ev.append("; ".join(f"{e['component']} {e['event']}" for e in events), style="dim")
        lines.append(ev)
    if hint:
        lines.append(Text(hint, style="dim"))
    return Group(*lines)


def broker_memory(components: Sequence[dict[str, Any]]) -> str:
    """' 41 MB of 256 MB cap; 2 rollovers (last paused producers 1.3s)' for the embedded broker."""
    for comp in components:
        rss, cap = comp.get("rss_mb"), comp.get("max_memory_mb")
        if isinstance(rss, int | float) and isinstance(cap, int | float):
            n = int(comp.get("rollovers") or 0)
            text = f" {rss:.0f} MB of {cap:.0f} MB cap; {n} rollover{'' if n == 1 else 's'}"
            last = comp.get("last_rollover")
            if isinstance(last, dict) and isinstance(last.get("pause_s"), int | float):
                text += f" (last paused producers {last['pause_s']:.1f}s)"
            return text
    return ""


def delivery_table(channels: Sequence[dict[str, Any]]) -> Table:
    """Per channel (masked name): delivered / failed / parked / dead-lettered / pending, p95."""
    table = Table(title="notifications", title_justify="left")
    table.add_column("channel", overflow="fold")
    for name in ("delivered", "failed", "parked", "dead", "pending", "p95"):
        table.add_column(name, justify="right", no_wrap=True)
    for ch in channels:
        p95 = ch.get("p95_latency_ms")
        parked = int(ch.get("parked") or 0)
        table.add_row(
            str(ch.get("channel_name")),
            str(ch.get("delivered", 0)),
            str(ch.get("failed", 0)),
            Text(str(parked), style="bold red" if parked else ""),
            str(ch.get("dead", 0)),
            str(ch.get("pending", 0)),
            f"{p95:.0f} ms" if isinstance(p95, int | float) else "-",
        )
    return table
