"""Benchmark of the per-tick hot path: `SymbolWindows.advance` (+ `AnomalyDetector.check`).

Run: ``python bench/bench_windows.py [--updates N] [--symbols N] [--json]``

Prints
- updates/s of `SymbolWindows.advance` for `--updates` ticks interleaved over `--symbols`
  symbols (1 s apart per symbol, windows 60/300/900 s), and of update + anomaly check;
- bytes per symbol (tracemalloc) after 900 ticks 1 s apart with 3 windows, and after 3000 ticks
  (steady state, including the dead prefix kept between two compactions). The tick
  values are created inside the traced region, so the int/float objects the windows keep
  alive are counted.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import random
import sys
import time
import tracemalloc

from mw_core.markets.detector import AnomalyDetector
from mw_core.markets.windows import SymbolWindows

WINDOWS = (60, 300, 900)
THRESHOLDS = {60: 0.02, 300: 0.03, 900: 0.05}
T0 = 1_722_816_000_000


def make_ticks(n_updates: int, n_symbols: int, seed: int = 1) -> list[tuple[str, int, float]]:
    """Interleaved ``(symbol, ts, price)``: every symbol ticks once per second (with jitter)."""
    rnd = random.Random(seed)
    symbols = [f"SYM{i:04d}USDT" for i in range(n_symbols)]
    prices = [rnd.uniform(0.1, 60_000.0) for _ in symbols]
    out: list[tuple[str, int, float]] = []
    for k in range(n_updates):
        i = k % n_symbols
        second = k // n_symbols
        prices[i] *= math.exp(rnd.gauss(0.0, 0.001))
        out.append((symbols[i], T0 + second * 1000 + i % 997, prices[i]))
    return out


def bench_updates(ticks: list[tuple[str, int, float]], *, with_check: bool, repeat: int) -> float:
    """Best-of-`repeat` updates per second."""
    best = math.inf
    for _ in range(repeat):
        windows = {s: SymbolWindows(WINDOWS) for s in {t[0] for t in ticks}}
        detector = AnomalyDetector(windows_s=WINDOWS, threshold_for=lambda s, w: THRESHOLDS[w], cooldown_s=60)
        check = detector.check
        gc.collect()
        start = time.perf_counter()
        if with_check:
            for symbol, ts, price in ticks:
                w = windows[symbol]
                check(symbol, ts, price, w.advance(ts, price), windows=w)
        else:
            for symbol, ts, price in ticks:
                windows[symbol].advance(ts, price)
        best = min(best, time.perf_counter() - start)
    return len(ticks) / best


def bytes_per_symbol(n_ticks: int, n_symbols: int = 10) -> float:
    """Traced bytes per `SymbolWindows` after `n_ticks` ticks 1 s apart."""
    rnd = random.Random(2)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep = []
        for _ in range(n_symbols):
            w = SymbolWindows(WINDOWS)
            price = rnd.uniform(1.0, 100.0)
            for k in range(n_ticks):
                price *= 1.0 + rnd.gauss(0.0, 0.001)
                w.advance(T0 + k * 1000, price)
                if k % 100 == 99:
                    w.stats()  # as the processor does once per symbol per batch (fills log returns)
            keep.append(w)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / n_symbols


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--updates", type=int, default=1_000_000, help="ticks to process (default 1,000,000)")
    parser.add_argument("--symbols", type=int, default=500, help="symbols to spread them over (default 500)")
    parser.add_argument("--repeat", type=int, default=2, help="best of N runs (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)

    ticks = make_ticks(args.updates, args.symbols)
    results = {
        "python": platform.python_version(),
        "updates": args.updates,
        "symbols": args.symbols,
        "windows_s": list(WINDOWS),
        "updates_per_s": round(bench_updates(ticks, with_check=False, repeat=args.repeat)),
        "updates_with_check_per_s": round(bench_updates(ticks, with_check=True, repeat=args.repeat)),
        "bytes_per_symbol_900_ticks": round(bytes_per_symbol(900)),
        "bytes_per_symbol_steady_state": round(bytes_per_symbol(3_000)),
    }
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"python {results['python']}, windows {list(WINDOWS)} s")
    print(
        f"SymbolWindows.advance:         {results['updates_per_s']:>12,} updates/s ({args.updates:,} over {args.symbols} symbols)"
    )
    print(f"advance + AnomalyDetector.check: {results['updates_with_check_per_s']:>10,} updates/s")
    print(f"memory, 900 ticks at 1 s:       {results['bytes_per_symbol_900_ticks']:>11,} bytes/symbol")
    print(f"memory, steady state (3000):    {results['bytes_per_symbol_steady_state']:>11,} bytes/symbol")
    return 0


if __name__ == "__main__":
    sys.exit(main())
