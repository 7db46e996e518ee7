"""`mw up / status / logs / down / init`: run the whole platform locally under one supervisor.

Contract:
- `mw up` takes the lock on ``MW_STATE_DIR`` (a second `up` reports the running stack and exits 1),
  starts the `Stack` in order with health checks, shows a status table (live when stdout is a
  terminal) and stops everything in reverse order on Ctrl-C / SIGTERM / `mw down`.
  ``--detach`` runs the same supervisor in the background and returns once it is up.
- `mw status` exits 0 when a stack runs, 1 when not; ``--json`` prints status.json with liveness.
- `mw logs` prints the components' logs from the state dir (``-f`` follows them).
- `mw down` stops the stack from another process, or cleans up after a crashed one.
- `mw init` is the compose init job: databases, topics and schema on configured servers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import RenderableType
from rich.text import Text

from mw_core.cli.common import console, settings_or_exit
from mw_core.cli.status_view import render_status
from mw_core.cli.status_view import wide as out
from mw_core.config import Settings
from mw_core.local.state_files import (
    PID_FILE,
    AlreadyRunning,
    read_pid_file,
    read_status,
    running_supervisor,
    tail,
)

if TYPE_CHECKING:
    from mw_core.local.banners import FirstTickProbe
    from mw_core.local.stack import StackOptions
    from mw_core.local.supervisor import StartupError, Supervisor

log = logging.getLogger(__name__)


def _state_dir(settings: Settings) -> Path:
    return settings.state_dir.expanduser().absolute()


def _already_running(state_dir: Path, pid: int) -> None:
    status = read_status(state_dir) or {}
    url = status.get("meta", {}).get("dagster_url")
    console.print(
        f"[yellow]Market Watch is already running from {state_dir} (supervisor pid {pid})"
        + (f"; Dagster UI {url}" if url else "")
        + ".[/yellow]\nUse `mw status`, `mw logs`, or `mw down` to stop it."
    )


# --- up ----------------------------------------------------------------------------------------------


def up(
    files: Annotated[
        list[str] | None, typer.Argument(help="More replay files (same as --replay).", show_default=False)
    ] = None,
    replay: Annotated[
        list[str] | None,
        typer.Option(
            "--replay",
            help="Replay recorded kline CSV file(s), or `sample`, through a local Binance server instead of "
            "live Binance. Repeatable.",
            show_default=False,
        ),
    ] = None,
    loop: Annotated[bool, typer.Option(help="Start the replay over when it ends.")] = False,
    speed: Annotated[
        str, typer.Option(help="Replay speed: `max` or a real-time multiplier such as 60.")
    ] = "60",
    host: Annotated[
        str | None,
        typer.Option(help="Address the Dagster UI and metrics bind to (default MW_HOST, 127.0.0.1)."),
    ] = None,
    dagster_port: Annotated[
        int | None, typer.Option(help="Dagster UI port (default 3000, else a free port).")
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Run in the background; `mw down` stops it.")
    ] = False,
    live: Annotated[
        bool | None,
        typer.Option("--live/--no-live", help="Live status table (default: when stdout is a terminal)."),
    ] = None,
) -> None:
    """Run the whole platform: PostgreSQL, Kafka, schema, Dagster, ingest, processor. Ctrl-C stops it."""
    from mw_core.local.stack import StackOptions

    settings = settings_or_exit(host=host)
    state_dir = _state_dir(settings)
    replay_files = [*(replay or []), *(files or [])]
    if replay_files:
        from mw_core.replay.klines import resolve_sources
        from mw_core.replay.wire import parse_speed

        try:
            parse_speed(speed)
            replay_files = [str(p.resolve()) for p in resolve_sources(replay_files)]
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
    options = StackOptions(
        replay=tuple(replay_files),
        loop=loop,
        speed=speed,
        host=host,
        dagster_port=dagster_port,
    )
    pid = running_supervisor(state_dir)
    if pid is not None:
        _already_running(state_dir, pid)
        raise typer.Exit(1)
    if detach:
        _up_detached(state_dir, replay_files, loop=loop, speed=speed, host=host, dagster_port=dagster_port)
        return
    _up_foreground(settings, options, live=out.is_terminal if live is None else live)


def _up_foreground(settings: Settings, options: StackOptions, *, live: bool) -> None:
    from mw_core.local.banners import FirstTickProbe
    from mw_core.local.down import cleanup_stale
    from mw_core.local.rollover import attach_rollover
    from mw_core.local.stack import Stack
    from mw_core.local.state_files import StackLock
    from mw_core.local.supervisor import Supervisor

    state_dir = _state_dir(settings)
    try:
        lock = StackLock.acquire(state_dir, argv=sys.argv)
    except AlreadyRunning as exc:
        _already_running(state_dir, exc.pid)
        raise typer.Exit(1) from None
    with lock, _log_to_file(state_dir / "logs" / "supervisor.log", quiet_stderr=live):
        cleaned = cleanup_stale(state_dir)
        if cleaned:
            console.print(f"[yellow]stopped leftovers of a crashed stack: {', '.join(cleaned)}[/yellow]")
        stack = Stack(settings, options)
        probe = FirstTickProbe(stack.meta()["process_health"], stack.started_at)
        sup = Supervisor(stack.specs(), state_dir=state_dir, meta=stack.meta)
        attach_rollover(stack, sup)
        sup.install_signal_handlers()
        lock.update(dagster_url=stack.dagster_url)
        banners: list[str] = []
        last_banner = 0.0
        printed = False
        hint = "Ctrl-C stops everything; `mw logs <component>` shows a log."

        def refresh() -> RenderableType:
            return render_status({**sup.snapshot(), "running": True}, banners=banners, hint=hint)

        def on_tick() -> None:
            nonlocal last_banner, printed, banners
            now = time.monotonic()
            if probe.seconds is not None and sup.meta.get("first_tick_s") is None:
                sup.set_meta(first_tick_s=probe.seconds)
            if now - last_banner > 3.0:
                last_banner = now
                new = stack.source_report()
                if new != banners and not live:
                    for line in new:
                        console.print(f"[yellow]{line}[/yellow]")
                banners = new
            if live and live_view is not None:
                live_view.update(refresh())
            elif not printed:
                printed = True
                out.print(refresh())

        live_view: Any = None
        error: StartupError | None = None
        try:
            if live:
                from rich.live import Live

                with Live(refresh(), console=out, refresh_per_second=4, transient=False) as live_view:
                    sup.listener = lambda: live_view.update(refresh())
                    error = _run(sup, probe, on_tick)
                    live_view.update(refresh())
            else:
                console.print(f"starting Market Watch from {state_dir} ...")
                error = _run(sup, probe, on_tick)
        finally:
            probe.stop()
        if error is not None:
            # Text, not markup: a reason such as "pip install 'market-watch[local]'" must print as is.
            console.print(Text(f"{error.component} failed to start: {error.reason}", style="bold red"))
            if error.log_tail:
                console.print(Text(error.log_tail, style="dim"))
            console.print(f"everything stopped; see `mw logs {error.component}`")
            raise typer.Exit(1)
        console.print(f"Market Watch stopped in {sup.stop_seconds or 0:.1f}s.")


def _run(sup: Supervisor, probe: FirstTickProbe, on_tick: Callable[[], None]) -> StartupError | None:
    from mw_core.local.supervisor import StartupError

    def tick() -> None:
        if sup.meta.get("ready") and not probe.started:
            probe.start()
        on_tick()

    try:
        sup.run(on_tick=tick)
    except StartupError as exc:
        return exc
    return None


@contextlib.contextmanager
def _log_to_file(path: Path, *, quiet_stderr: bool) -> Iterator[None]:
    """Also log to `path`; with a live table, keep stderr for warnings only (the table shows events)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
    saved = [(h, h.level) for h in root.handlers if h is not handler]
    if quiet_stderr:
        for h, _ in saved:
            h.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for h, level in saved:
            h.setLevel(level)
        root.removeHandler(handler)
        handler.close()


def _up_detached(
    state_dir: Path,
    replay: Sequence[str],
    *,
    loop: bool,
    speed: str,
    host: str | None,
    dagster_port: int | None,
) -> None:
    from mw_core.local.stack import mw_command

    argv = [*mw_command(), "up", "--no-live", "--speed", speed]
    for f in replay:
        argv += ["--replay", f]
    if loop:
        argv.append("--loop")
    if host:
        argv += ["--host", host]
    if dagster_port:
        argv += ["--dagster-port", str(dagster_port)]
    log_path = state_dir / "logs" / "supervisor.out"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_out:
        proc = subprocess.Popen(  # noqa: S603 - our own command line
            argv,
            stdout=log_out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "MW_STATE_DIR": str(state_dir)},
        )
    console.print(f"starting Market Watch in the background (supervisor pid {proc.pid}) ...")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        code = proc.poll()
        status = read_status(state_dir)
        ours = status is not None and status.get("supervisor", {}).get("pid") == proc.pid
        if ours and status is not None and status.get("meta", {}).get("ready"):
            out.print(render_status(status, hint="Stop it with `mw down`; `mw status` / `mw logs` to watch."))
            return
        if code is not None:
            console.print(f"[bold red]the stack exited with code {code}[/bold red]")
            console.print(Text(tail(log_path, 30), style="dim"))
            raise typer.Exit(1)
        time.sleep(0.3)
    console.print("[red]the stack did not come up within 300s; see `mw logs`[/red]")
    raise typer.Exit(1)


# --- status / logs / down ----------------------------------------------------------------------------


def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print status.json (with liveness) as JSON.")
    ] = False,
) -> None:
    """Show each component's state, address, PID and restarts. Exit code 1 when no stack runs."""
    settings = settings_or_exit(log_level="WARNING")
    state_dir = _state_dir(settings)
    st = read_status(state_dir)
    if st is None:
        if as_json:
            sys.stdout.write(
                json.dumps({"running": False, "state_dir": str(state_dir), "components": []}) + "\n"
            )
        else:
            console.print(f"no stack has run from {state_dir} (start one with `mw up`)")
        raise typer.Exit(1)
    running = bool(st.get("running"))
    if running:
        st["notifications"] = _delivery_counts(settings, st.get("meta", {}))
    if as_json:
        sys.stdout.write(json.dumps(st, indent=2, default=str) + "\n")
    else:
        hint = "" if running else "not running: `mw up` starts it"
        if not running and any(c.get("state") == "stale" for c in st.get("components", [])):
            hint = "supervisor is gone but components still run: `mw down` cleans them up"
        banners: list[str] = []
        if running:
            from mw_core.local.banners import source_banners

            banners = source_banners(st.get("meta", {}))
        out.print(render_status(st, banners=banners, hint=hint))
    if not running:
        raise typer.Exit(1)


def _delivery_counts(settings: Settings, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The notifier's per-channel counts from `notification_deliveries` ([] when unreachable).

    The embedded database (trust auth) is reached through the address status.json shows; an
    external one through MW_DATABASE_URL. Channel names in the table are already masked.
    """
    import asyncio
    import dataclasses

    from mw_core.adapters.postgres.notifications import delivery_counts
    from mw_core.adapters.postgres.pool import create_pool

    shown = str(meta.get("database_url") or "")
    url = settings.database_url.get_secret_value() if settings.database_url else shown
    if not url or "***" in url:
        return []

    async def fetch() -> list[dict[str, Any]]:
        pool = await asyncio.wait_for(create_pool(url, min_size=1, max_size=1), 3.0)
        try:
            return [dataclasses.asdict(c) for c in await delivery_counts(pool)]
        finally:
            await pool.close()

    try:
        return asyncio.run(fetch())
    except Exception as exc:  # a status view reports what it can; the table is optional
        log.debug("delivery counts unavailable: %s", type(exc).__name__)
        return []


def _log_files(state_dir: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    st = read_status(state_dir) or {}
    for comp in st.get("components", []):
        if comp.get("log"):
            files[str(comp["component"])] = Path(comp["log"])
    logs_dir = state_dir / "logs"
    if logs_dir.is_dir():
        known = set(files.values())
        for path in sorted(logs_dir.glob("*.log")):
            if path not in known:
                files.setdefault(path.stem, path)
    return files


def logs(
    component: Annotated[str | None, typer.Argument(help="Component name (default: all).")] = None,
    lines: Annotated[int, typer.Option("-n", "--lines", help="Lines to show from the end.")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
) -> None:
    """Show a component's log (state_dir/logs/<component>.log), or all of them."""
    settings = settings_or_exit(log_level="WARNING")
    files = _log_files(_state_dir(settings))
    if component is not None:
        if component not in files:
            console.print(f"[red]no log for {component!r}; known: {', '.join(files) or 'none'}[/red]")
            raise typer.Exit(2)
        files = {component: files[component]}
    if not files:
        console.print("no logs yet (start the stack with `mw up`)")
        raise typer.Exit(1)
    prefix = len(files) > 1
    width = max(len(n) for n in files)
    positions: dict[str, int] = {}
    for name, path in files.items():
        text = tail(path, lines)
        for line in text.splitlines():
            sys.stdout.write((f"{name:<{width}} | " if prefix else "") + line + "\n")
        positions[name] = path.stat().st_size if path.exists() else 0
    sys.stdout.flush()
    if not follow:
        return
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            for name, path in files.items():
                positions[name] = _print_new(
                    name, path, positions[name], prefix=f"{name:<{width}} | " if prefix else ""
                )
            sys.stdout.flush()
            time.sleep(0.3)


def _print_new(name: str, path: Path, pos: int, *, prefix: str) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size < pos:  # truncated or replaced
        pos = 0
    if size == pos:
        return pos
    with open(path, "rb") as fh:
        fh.seek(pos)
        data = fh.read()
    # Only print complete lines; keep a partial last line for the next round.
    complete, _, _rest = data.rpartition(b"\n")
    if not complete and not data.endswith(b"\n"):
        return pos
    for line in complete.decode("utf-8", "replace").split("\n"):
        sys.stdout.write(prefix + line + "\n")
    return pos + len(complete) + 1


def down(
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for an orderly stop before killing.")
    ] = 25.0,
) -> None:
    """Stop the stack started by `mw up` (in another terminal or with --detach)."""
    from mw_core.local.down import down as stop_stack

    settings = settings_or_exit(log_level="WARNING")
    state_dir = _state_dir(settings)
    info = read_pid_file(state_dir)
    result = stop_stack(state_dir, timeout=timeout)
    if result.was_running:
        verb = "stopped" if result.stopped else "killed"
        console.print(
            f"Market Watch {verb} (supervisor pid {result.supervisor_pid}) in {result.seconds:.1f}s"
        )
    else:
        stale = f" (removed stale {PID_FILE})" if info else ""
        console.print(f"no Market Watch stack running from {state_dir}{stale}")
    if result.cleaned:
        console.print(f"[yellow]stopped leftover components: {', '.join(result.cleaned)}[/yellow]")


def init_command(
    wait: Annotated[float, typer.Option(help="Seconds to wait for each server to answer.")] = 60.0,
) -> None:
    """Create the databases, Kafka topics and schema on configured servers, then exit (compose init job)."""
    from mw_core.local.provision import initialize

    settings = settings_or_exit()
    try:
        lines = initialize(settings, wait_s=wait)
    except (ValueError, RuntimeError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    for line in lines:
        console.print(line)
