"""Binance 1-minute kline CSV dumps (data.binance.vision) -> `Kline` rows.

Contract:
- A dump has 12 columns and an optional header::

      open_time_ms,open,high,low,close,volume,close_time_ms,quote_volume,trades,taker_buy_base,taker_buy_quote,ignore
      1722816000000,58144.50,58190.50,58097.30,58185.90,381.208,1722816059999,22167798.24570,4678,202.175,11755874.05210,0

- The symbol comes from the file name (``BTCUSDT-1m-2024-08-05.csv`` or ``.csv.gz``, monthly
  ``BTCUSDT-1m-2024-08.csv`` too).
- Newer dumps (2025+) stamp times in microseconds (16 digits); they are normalised to epoch ms.
- A bad row never aborts a file: it becomes a `KlineError` (line number + reason) and is counted.
  Rows come back sorted by open time with duplicate open times dropped (counted as errors).
- `resolve_sources` maps ``"sample"`` to the day bundled with the package (importlib.resources).

Pure apart from reading the given files: no network, no database, no broker.
"""

from __future__ import annotations

import gzip
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from mw_core.models import Tick

SAMPLE = "sample"
N_COLUMNS = 12
MINUTE_MS = 60_000
FILE_NAME_RE = re.compile(r"^(?P<symbol>[A-Z0-9]{2,20})-1m-\d{4}-\d{2}(?:-\d{2})?\.csv(?:\.gz)?$")
_US_THRESHOLD = 10**15  # epoch ms has 13 digits until 2286; 16 digits are microseconds
_NS_THRESHOLD = 10**18


@dataclass(frozen=True, slots=True)
class Kline:
    """One closed 1-minute candle; times are epoch ms (close = open + 59 999)."""

    symbol: str
    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    close_time: int
    quote_volume: float
    trades: int
    taker_buy_base: float
    taker_buy_quote: float

    def to_tick(self, *, source: str = "replay") -> Tick:
        """The tick Binance's miniTicker would carry at this kline's close."""
        prices = (
            self.close,
            self.open,
            self.high,
            self.low,
        )  # Tick's price (the last: close), open, high, low
        return Tick(self.symbol, self.close_time, *prices, self.volume, self.quote_volume, source)


@dataclass(frozen=True, slots=True)
class KlineError:
    """A row that could not be read: 1-based `line`, short machine `reason`, the raw text."""

    line: int
    reason: str
    raw: str


@dataclass(frozen=True, slots=True)
class KlineFile:
    """The rows of one dump plus the rows that were rejected."""

    source: str
    symbol: str
    klines: list[Kline] = field(default_factory=list)
    errors: list[KlineError] = field(default_factory=list)


class BadRow(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def normalise_ts(value: int) -> int:
    """Epoch ms from a dump timestamp in ms, µs (16 digits) or ns (19 digits)."""
    if value >= _NS_THRESHOLD:
        return value // 1_000_000
    if value >= _US_THRESHOLD:
        return value // 1_000
    return value


def symbol_from_filename(name: str) -> str:
    """``BTCUSDT-1m-2024-08-05.csv.gz`` -> ``BTCUSDT``; `ValueError` for any other name."""
    match = FILE_NAME_RE.match(Path(name).name)
    if match is None:
        raise ValueError(
            f"{name!r} is not a Binance 1m kline dump name (expected e.g. BTCUSDT-1m-2024-08-05.csv[.gz])"
        )
    return match.group("symbol")


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise BadRow("bad_number") from None


def _float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise BadRow("bad_number") from None
    if not math.isfinite(value):
        raise BadRow("bad_number")
    return value


def parse_row(cells: Sequence[str], *, symbol: str) -> Kline:
    """One CSV row (12 cells) -> `Kline`; raises `BadRow` with a reason."""
    if len(cells) != N_COLUMNS:
        raise BadRow("wrong_column_count")
    open_time = normalise_ts(_int(cells[0]))
    close_time = normalise_ts(_int(cells[6]))
    k = Kline(
        symbol=symbol,
        open_time=open_time,
        open=_float(cells[1]),
        high=_float(cells[2]),
        low=_float(cells[3]),
        close=_float(cells[4]),
        volume=_float(cells[5]),
        close_time=close_time,
        quote_volume=_float(cells[7]),
        trades=_int(cells[8]),
        taker_buy_base=_float(cells[9]),
        taker_buy_quote=_float(cells[10]),
    )
    if open_time <= 0 or close_time - open_time != MINUTE_MS - 1:
        raise BadRow("bad_ts")
    if min(k.open, k.high, k.low, k.close) <= 0:
        raise BadRow("non_positive_price")
    if k.high < max(k.open, k.close, k.low) or k.low > min(k.open, k.close):
        raise BadRow("inconsistent_ohlc")
    if k.volume < 0 or k.quote_volume < 0 or k.trades < 0:
        raise BadRow("negative_volume")
    return k


def _is_header(cells: Sequence[str]) -> bool:
    return bool(cells) and not cells[0].strip().lstrip("-").isdigit()


def parse_kline_csv(lines: Iterable[str], *, symbol: str, source: str = "") -> KlineFile:
    """Parse the text lines of one dump. The first line may be a header; bad rows are collected."""
    out = KlineFile(source=source, symbol=symbol)
    rows: dict[int, Kline] = {}
    for line_no, line in enumerate(lines, start=1):
        # Dumps never quote fields: a plain split is exact and cannot trip over stray quotes or NULs.
        text = line.strip()
        if not text:
            continue
        cells = text.split(",")
        if line_no == 1 and _is_header(cells):
            continue
        try:
            k = parse_row(cells, symbol=symbol)
        except BadRow as exc:
            out.errors.append(KlineError(line_no, exc.reason, text[:200]))
            continue
        if k.open_time in rows:
            out.errors.append(KlineError(line_no, "duplicate_open_time", text[:200]))
            continue
        rows[k.open_time] = k
    out.klines.extend(rows[t] for t in sorted(rows))
    return out


def read_kline_file(path: Path | str) -> KlineFile:
    """Read one dump (``.csv`` or ``.csv.gz``); the symbol comes from the file name."""
    path = Path(path)
    symbol = symbol_from_filename(path.name)
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8", errors="replace")
    return parse_kline_csv(text.splitlines(), symbol=symbol, source=str(path))


def sample_files() -> list[Path]:
    """The kline dumps bundled in ``mw_core/data``."""
    data = resources.files("mw_core").joinpath("data")
    paths = sorted(
        Path(str(entry)) for entry in data.iterdir() if entry.is_file() and FILE_NAME_RE.match(entry.name)
    )
    if not paths or not all(p.is_file() for p in paths):
        raise FileNotFoundError("no bundled sample kline dump found in mw_core/data")
    return paths


def resolve_sources(sources: Iterable[str | Path]) -> list[Path]:
    """Resolve CLI arguments to dump files: ``"sample"``, files, or directories of dumps.

    Raises:
        FileNotFoundError: A path does not exist or a directory holds no dump.
    """
    out: list[Path] = []
    for source in sources:
        if str(source) == SAMPLE:
            out.extend(sample_files())
            continue
        path = Path(source)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and FILE_NAME_RE.match(p.name))
            if not found:
                raise FileNotFoundError(f"{path}: no kline dumps (SYMBOL-1m-YYYY-MM-DD.csv[.gz]) inside")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such kline file (use `sample` for the bundled day)")
    return list(dict.fromkeys(out))


def read_sources(sources: Iterable[str | Path]) -> list[KlineFile]:
    """`resolve_sources` then `read_kline_file` on each."""
    return [read_kline_file(p) for p in resolve_sources(sources)]


__all__ = [
    "SAMPLE",
    "BadRow",
    "Kline",
    "KlineError",
    "KlineFile",
    "normalise_ts",
    "parse_kline_csv",
    "parse_row",
    "read_kline_file",
    "read_sources",
    "resolve_sources",
    "sample_files",
    "symbol_from_filename",
]
