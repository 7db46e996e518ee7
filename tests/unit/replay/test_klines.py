"""Binance 1m kline CSV dumps: real recorded days, header optional, µs timestamps, bad rows."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mw_core.models import Tick
from mw_core.replay.klines import (
    Kline,
    normalise_ts,
    parse_kline_csv,
    read_kline_file,
    read_sources,
    resolve_sources,
    sample_files,
    symbol_from_filename,
)
from tests.conftest import FIXTURES

pytestmark = pytest.mark.unit

DAY = 1_722_816_000_000  # 2024-08-05 00:00 UTC
HEADER = (
    "open_time_ms,open,high,low,close,volume,close_time_ms,quote_volume,trades,"
    "taker_buy_base,taker_buy_quote,ignore"
)
ROW = "1722816000000,58144.50,58190.50,58097.30,58185.90,381.208,1722816059999,22167798.24570,4678,202.175,11755874.05210,0"
FIRST = Kline(
    "BTCUSDT", DAY, 58144.5, 58190.5, 58097.3, 58185.9, 381.208, DAY + 59_999, 22167798.2457, 4678, 202.175,
    11755874.0521,
)  # fmt: skip


@pytest.mark.parametrize(
    ("name", "symbol", "day"),
    [
        ("BTCUSDT-1m-2024-08-05.csv", "BTCUSDT", DAY),
        ("BTCUSDT-1m-2024-08-18.csv", "BTCUSDT", 1_723_939_200_000),
        ("SOLUSDT-1m-2024-08-05.csv", "SOLUSDT", DAY),
        ("ADAUSDT-1m-2024-08-05.csv", "ADAUSDT", DAY),
    ],
)
def test_recorded_days_parse_completely(name: str, symbol: str, day: int) -> None:
    f = read_kline_file(FIXTURES / name)
    assert (f.symbol, len(f.klines), f.errors) == (symbol, 1440, [])
    assert [k.open_time for k in f.klines] == [day + i * 60_000 for i in range(1440)]
    assert all(k.close_time == k.open_time + 59_999 and k.symbol == symbol for k in f.klines)
    assert all(k.low <= min(k.open, k.close) <= max(k.open, k.close) <= k.high for k in f.klines)


def test_first_row_values_and_tick() -> None:
    f = read_kline_file(FIXTURES / "BTCUSDT-1m-2024-08-05.csv")
    assert f.klines[0] == FIRST
    assert FIRST.to_tick() == Tick(
        "BTCUSDT", DAY + 59_999, 58185.9, 58144.5, 58190.5, 58097.3, 381.208, 22167798.2457, "replay"
    )


def test_header_is_optional() -> None:
    with_header = parse_kline_csv(io.StringIO(f"{HEADER}\n{ROW}\n"), symbol="BTCUSDT")
    without = parse_kline_csv(io.StringIO(f"{ROW}\n"), symbol="BTCUSDT")
    assert with_header.klines == without.klines == [FIRST]
    assert with_header.errors == without.errors == []


def test_microsecond_timestamps_are_normalised_to_ms() -> None:
    cells = ROW.split(",")
    cells[0], cells[6] = cells[0] + "000", cells[6] + "999"
    f = parse_kline_csv([",".join(cells)], symbol="BTCUSDT")
    assert f.errors == [] and f.klines == [FIRST]
    assert normalise_ts(1722816059999) == normalise_ts(1722816059999999) == 1722816059999
    assert normalise_ts(1722816059999999999) == 1722816059999


def test_bad_rows_are_counted_with_reasons_never_crash() -> None:
    good2 = ROW.replace("1722816000000", "1722816060000", 1).replace("1722816059999", "1722816119999")
    lines = [
        HEADER,
        ROW,
        "1722816060000,1,2,3",  # 3
        ROW.replace("58144.50", "abc"),  # 4
        ROW.replace("1722816059999", "1722816099999"),  # 5
        ROW.replace("58144.50", "-1").replace("58097.30", "-2"),  # 6
        ROW.replace("58190.50", "1.0"),  # 7: high below low
        ROW.replace("381.208", "-1"),  # 8
        ROW.replace("58144.50", "inf"),  # 9
        "",  # blank lines are skipped
        good2,
        ROW,  # 12: duplicate open time
        "not,a,header,at,all",  # 13
    ]
    f = parse_kline_csv(lines, symbol="BTCUSDT", source="test")
    assert [k.open_time for k in f.klines] == [DAY, DAY + 60_000]
    assert [(e.line, e.reason) for e in f.errors] == [
        (3, "wrong_column_count"),
        (4, "bad_number"),
        (5, "bad_ts"),
        (6, "non_positive_price"),
        (7, "inconsistent_ohlc"),
        (8, "negative_volume"),
        (9, "bad_number"),
        (12, "duplicate_open_time"),
        (13, "wrong_column_count"),
    ]


def test_rows_are_sorted_by_open_time() -> None:
    good2 = ROW.replace("1722816000000", "1722816060000", 1).replace("1722816059999", "1722816119999")
    f = parse_kline_csv([good2, ROW], symbol="BTCUSDT")
    assert [k.open_time for k in f.klines] == [DAY, DAY + 60_000]


@given(st.lists(st.text(max_size=80), max_size=20))
def test_fuzz_arbitrary_lines_never_crash(lines: list[str]) -> None:
    f = parse_kline_csv(lines, symbol="BTCUSDT")
    assert len(f.klines) + len(f.errors) <= len(lines)


SYMBOL_OF_FILE = {
    "BTCUSDT-1m-2024-08-05.csv": "BTCUSDT",
    "/some/dir/ETHUSDT-1m-2024-08-05.csv.gz": "ETHUSDT",
    "SOLUSDT-1m-2024-08.csv": "SOLUSDT",
}


@pytest.mark.parametrize(("name", "symbol"), SYMBOL_OF_FILE.items())
def test_symbol_from_filename(name: str, symbol: str) -> None:
    assert symbol_from_filename(name) == symbol


@pytest.mark.parametrize(
    "name", ["BTCUSDT-5m-2024-08-05.csv", "btcusdt-1m-2024-08-05.csv", "prices.csv", "BTCUSDT.csv"]
)
def test_symbol_from_bad_filename(name: str) -> None:
    with pytest.raises(ValueError, match="1m kline dump"):
        symbol_from_filename(name)


def test_gzip_dump(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-1m-2024-08-05.csv.gz"
    path.write_bytes(gzip.compress((FIXTURES / "BTCUSDT-1m-2024-08-05.csv").read_bytes()))
    assert read_kline_file(path).klines == read_kline_file(FIXTURES / "BTCUSDT-1m-2024-08-05.csv").klines


def test_sample_is_the_bundled_real_day() -> None:
    paths = resolve_sources(["sample"])
    assert paths == sample_files()
    assert [p.name for p in paths] == ["BTCUSDT-1m-2024-08-05.csv.gz"]
    (sample,) = read_sources(["sample"])
    assert sample.errors == []
    assert sample.klines == read_kline_file(FIXTURES / "BTCUSDT-1m-2024-08-05.csv").klines


def test_resolve_sources_files_directories_and_missing(tmp_path: Path) -> None:
    btc = FIXTURES / "BTCUSDT-1m-2024-08-05.csv"
    assert resolve_sources([btc, str(btc)]) == [btc]
    assert [p.name for p in resolve_sources([FIXTURES])] == [
        "ADAUSDT-1m-2024-08-05.csv",
        "BTCUSDT-1m-2024-08-05.csv",
        "BTCUSDT-1m-2024-08-18.csv",
        "SOLUSDT-1m-2024-08-05.csv",
    ]
    with pytest.raises(FileNotFoundError, match="no such kline file"):
        resolve_sources([tmp_path / "BTCUSDT-1m-2030-01-01.csv"])
    with pytest.raises(FileNotFoundError, match="no kline dumps"):
        resolve_sources([tmp_path])
