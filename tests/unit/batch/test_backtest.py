"""`mw backtest` on the real fixture days (2024-08-05 crash, 2024-08-18 calm) and its report rules."""

from __future__ import annotations

import functools
import itertools
import json
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from mw_core.batch.backtest import (
    BacktestOptions,
    BacktestRun,
    backtest_files,
    parse_overrides,
    prices_from_files,
    with_overrides,
)
from mw_core.batch.backtest_report import day_table
from mw_core.batch.partition import PartitionPrices, SymbolSeries
from mw_core.cli.backtest import backtest
from mw_core.config import ConfigError, Settings
from mw_core.markets.episodes import EpisodeEvent, alert_json
from mw_core.replay.klines import read_sources
from mw_core.replay.server import BinanceServer
from mw_core.replay.wire import mini_ticker_event
from tests.conftest import FIXTURES

pytestmark = pytest.mark.unit

CRASH = [FIXTURES / f"{s}-1m-2024-08-05.csv" for s in ("BTCUSDT", "SOLUSDT", "ADAUSDT")]
CALM = FIXTURES / "BTCUSDT-1m-2024-08-18.csv"
ALL = [*CRASH, CALM]
MIN = 60_000


def defaults() -> Settings:
    return Settings(_env_file=None)  # type: ignore[call-arg]


@functools.cache
def fixture_run() -> BacktestRun:
    return backtest_files(
        [str(p) for p in ALL], defaults(), BacktestOptions(compare={"episodes_enabled": "false"})
    )


def rows(run: BacktestRun) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["symbol"], r["day"]): r for r in run.day_rows()}


# --- the targets of issue 9, with defaults ---------------------------------------------------------


@pytest.mark.parametrize("symbol", ["BTCUSDT", "SOLUSDT", "ADAUSDT"])
def test_crash_day_recall_and_volume(symbol: str) -> None:
    row = rows(fixture_run())[(symbol, "2024-08-05")]
    assert row["moves"] > 0
    assert row["first_move_lag_s"] is not None and row["first_move_lag_s"] <= 60
    assert row["largest_move_alerted"] is True
    assert 1 <= row["alerts"] <= 6
    assert row["alerts"] == row["opens"] + row["escalations"]


def test_calm_day_has_no_alert() -> None:
    row = rows(fixture_run())[("BTCUSDT", "2024-08-18")]
    assert row["alerts"] == 0 and row["detections"] == 0
    # The previous file of the same symbol (13 days earlier) is no 5-minute reference.
    assert row["moves"] == 0


def test_compare_without_episodes_alerts_every_detection() -> None:
    run = fixture_run()
    assert run.compare is not None
    base, other = rows(run), rows(run.compare)
    expected = {"BTCUSDT": 10, "SOLUSDT": 63, "ADAUSDT": 29}
    for symbol, n in expected.items():
        key = (symbol, "2024-08-05")
        assert base[key]["detections"] == other[key]["detections"] == n
        assert other[key]["alerts"] == n
        assert base[key]["alerts"] < n
    assert run.compare.config["episodes_enabled"] is False
    assert run.compare.config["overrides"] == {"episodes_enabled": "false"}


def test_json_shape() -> None:
    doc = json.loads(json.dumps(fixture_run().as_json()))
    assert set(doc) == {"config", "days", "alerts", "compare"}
    assert set(doc["compare"]) == {"config", "days", "alerts"}
    assert doc["config"]["thresholds"] == {"60": 0.02, "300": 0.03, "900": 0.05}
    assert len(doc["days"]) == 4
    alerts = doc["alerts"]
    assert alerts and all(
        set(a) == {"symbol", "ts", "kind", "window_s", "ret", "direction", "episode_id", "seq"}
        for a in alerts
    )
    assert {a["kind"] for a in alerts} <= {"open", "escalate", "close"}
    assert all(a["ts"].endswith("Z") and len(a["ts"]) == len("2024-08-05T01:08:59.999Z") for a in alerts)
    assert alerts == sorted(alerts, key=lambda a: (a["ts"], a["symbol"], a["seq"]))
    opened = [a for a in alerts if a["kind"] == "open"]
    assert all(a["seq"] == 1 and a["episode_id"].startswith(a["symbol"] + "-") for a in opened)
    assert len(doc["compare"]["alerts"]) > len(alerts)


def test_alert_json_reads_events_and_topic_bodies_alike() -> None:
    event = fixture_run().events[0]
    body = {**{k: getattr(event, k) for k in EpisodeEvent.__dataclass_fields__}, "type": "episode"}
    assert alert_json(event) == alert_json(body)


# --- the ticks are those of `mw replay` --------------------------------------------------------------


def test_ticks_are_the_replay_servers_frames() -> None:
    server = BinanceServer(itertools.chain.from_iterable(f.klines for f in read_sources(ALL)))
    frames: dict[str, list[tuple[int, float]]] = {}
    for i in range(server.total_frames):
        k, shift = server.frame_at(i)
        event = mini_ticker_event(k, shift_ms=shift)
        frames.setdefault(event["s"], []).append((event["E"], float(event["c"])))
    data = prices_from_files(ALL, max_price=1e9)
    assert {s.symbol: s.ticks for s in data.series} == frames
    assert all(not s.warmup for s in data.series)


def test_symbols_filter_and_missing_file() -> None:
    run = backtest_files(ALL, defaults(), BacktestOptions(symbols=["SOLUSDT"]))
    assert {s.symbol for s in run.data.series} == {e.symbol for e in run.events} == {"SOLUSDT"}
    with pytest.raises(FileNotFoundError):
        prices_from_files([FIXTURES / "NOPE-1m-2024-08-05.csv"], max_price=1e9)


# --- settings overrides ------------------------------------------------------------------------------


def test_overrides_accept_field_names_and_env_names() -> None:
    parsed = parse_overrides(["episodes_enabled=false", "MW_COOLDOWN_S=30", "windows_s=60,300"])
    assert parsed == {"episodes_enabled": "false", "cooldown_s": "30", "windows_s": "60,300"}
    s = with_overrides(defaults(), {**parsed, "thresholds": "60:0.02,300:0.04"})
    assert (s.episodes_enabled, s.cooldown_s, s.windows_s) == (False, 30, [60, 300])
    assert s.thresholds == {60: 0.02, 300: 0.04}


@pytest.mark.parametrize("pair", ["nonsense=1", "cooldown_s", "=3"])
def test_bad_override_keys(pair: str) -> None:
    with pytest.raises(ConfigError):
        parse_overrides([pair])


def test_invalid_override_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="MW_EPISODE_ESCALATION_STEP"):
        with_overrides(defaults(), {"episode_escalation_step": "0.5"})


# --- the report rules on a synthetic series ------------------------------------------------------------


def event(ts: int, kind: str = "open", seq: int = 1, opened: int | None = None) -> EpisodeEvent:
    return EpisodeEvent(
        episode_id=f"XUSDT-{ts if opened is None else opened}",
        seq=seq,
        kind=kind,  # type: ignore[arg-type]
        symbol="XUSDT",
        ts=ts,
        window_s=300,
        ret=0.05,
        direction="up",
        price=105.0,
        threshold=0.03,
        ref_price=100.0,
        ref_ts=ts - 5 * MIN,
        peak_ret=0.05,
        peak_window_s=300,
        extreme_price=105.0,
        opened_ts=ts,
        summary="",
    )


def test_move_lag_largest_move_and_worst_hour() -> None:
    day0 = 1_722_816_000_000  # 2024-08-05 00:00 UTC
    prices = [100.0] * 30 + [104.0] * 30 + [104.0] * 20 + [110.0] * 10
    ticks = [(day0 + (i + 1) * MIN - 1, p) for i, p in enumerate(prices)]
    data = PartitionPrices(ticks[0][0], ticks[-1][0] + 1, [SymbolSeries("XUSDT", [], ticks, len(ticks))], 90)
    first_move, big_move = ticks[30][0], ticks[80][0]
    opened = first_move + 30_000
    events = [
        event(opened),
        event(big_move - 100_000, "escalate", 2, opened=opened),
        event(big_move, "close", 3, opened=opened),
    ]
    row = day_table(data, [], events, move_pct=3).iloc[0]
    assert row["moves"] == 5 + 5  # each jump stays a 5-minute move for five ticks
    assert row["first_move_lag_s"] == 30.0
    # A move's window starts 5 min before it: the escalation 100 s before the big move counts for
    # it (lag 0) and for the next three ticks, not for the fifth (its window starts after it, and
    # the episode closed at the big move).
    assert row["max_move_lag_s"] == 30.0 and row["moves_unalerted"] == 1
    # Without the close the episode is still open at the fifth tick: the person is watching it.
    open_row = day_table(data, [], events[:2], move_pct=3).iloc[0]
    assert open_row["moves_unalerted"] == 0 and open_row["max_move_lag_s"] == 30.0
    assert row["largest_move_pct"] == pytest.approx(100 * (110 / 104 - 1), abs=1e-3)
    assert bool(row["largest_move_alerted"]) is True  # the escalation is within 2 minutes
    assert (row["alerts"], row["opens"], row["escalations"]) == (2, 1, 1)  # the close is no alert
    assert row["worst_hour_alerts"] == 1 and row["worst_hour"] == "2024-08-05T00:00:00Z"

    late = day_table(data, [], [event(big_move + 3 * MIN)], move_pct=3).iloc[0]
    assert late["first_move_lag_s"] == (big_move + 3 * MIN - first_move) / 1000
    assert bool(late["largest_move_alerted"]) is False
    none = day_table(data, [], [], move_pct=3).iloc[0]
    assert none["moves_unalerted"] == 10 and none["alerts"] == 0


# --- the command -------------------------------------------------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(backtest)
    app.command("noop")(lambda: None)  # two commands: `backtest` stays a subcommand
    return app


def test_cli_table_and_compare() -> None:
    res = CliRunner().invoke(
        cli(),
        ["backtest", *map(str, CRASH), "--compare", "episodes_enabled=false"],
        env={"COLUMNS": "160", "MW_LOG_LEVEL": "WARNING"},
    )
    assert res.exit_code == 0, res.output
    assert "SOLUSDT" in res.output and "→63" in res.output
    assert "episodes_enabled=false" in res.output


def test_cli_json() -> None:
    res = CliRunner().invoke(
        cli(), ["backtest", str(CALM), "--json", "--set", "MW_COOLDOWN_S=30", "--symbols", "btcusdt"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["alerts"] == [] and doc["config"]["cooldown_s"] == 30
    assert [(d["symbol"], d["day"]) for d in doc["days"]] == [("BTCUSDT", "2024-08-18")]


@pytest.mark.parametrize(
    "args",
    [
        ["backtest"],
        ["backtest", str(CALM), "--set", "bogus=1"],
        ["backtest", "--from-db", "--start", "2024-08-05"],
        ["backtest", "missing-1m-2024-08-05.csv"],
    ],
)
def test_cli_usage_errors(args: list[str]) -> None:
    assert CliRunner().invoke(cli(), args).exit_code == 2
