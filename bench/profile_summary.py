"""Summarise a py-spy raw (collapsed stacks) profile of `mw process`: where the processor's time goes.

Usage: python bench/profile_summary.py PROFILE.txt [--top N] [--ticks N] [--rate HZ]

Prints the share of samples per top-level activity of the processor (frames matched by function
name, inclusive, first match from the leaf wins) and the top functions by self time. Idle samples
(the event loop waiting in select/epoll) are reported apart and excluded from the shares.
"""

from __future__ import annotations

import argparse
from collections import Counter

# (label, substring of a frame "function (file:line)"); checked from the leaf up, the first hit
# wins, so more specific entries come first.
BUCKETS = (
    ("idle (event loop waiting)", "select (selectors.py"),
    ("start-up (imports)", "_find_and_load"),
    ("COPY encoding + DB protocol", "copy_records_to_table"),
    ("DB protocol (other queries)", "asyncpg"),
    ("decode (orjson + validation)", "decode_tick"),
    ("window statistics (metrics rows)", "stats (mw_core/markets/windows.py"),
    ("window advance", "advance (mw_core/markets/windows.py"),
    ("window update (before: statistics per tick)", "update (mw_core/markets/windows.py"),
    ("detector", "check (mw_core/markets/detector.py"),
    ("analysis loop", "run (mw_core/markets/analysis.py"),
    ("batch preparation (other)", "prepare_batch"),
    ("kafka fetch + record unpacking", "aiokafka"),
    ("write stage (other)", "finish_batch"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--ticks", type=int, default=0, help="ticks processed: also print CPU us per tick")
    ap.add_argument("--rate", type=int, default=200, help="the py-spy sampling rate (peer_ratio.sh: 200)")
    a = ap.parse_args()
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    with open(a.profile) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")
            total += n
            if "select (selectors.py" not in frames[-1]:
                leaves[frames[-1]] += n
            for frame in reversed(frames):
                hit = next((label for label, needle in BUCKETS if needle in frame), None)
                if hit is not None:
                    buckets[hit] += n
                    break
            else:
                buckets["other"] += n
    idle = buckets.pop("idle (event loop waiting)", 0)
    busy = total - idle
    print(f"samples: {total}, idle {idle} ({100 * idle / max(total, 1):.1f} %), busy {busy}")
    per_tick = (lambda n: f"  {1e6 * n / a.rate / a.ticks:5.2f} us/tick") if a.ticks else (lambda n: "")
    if a.ticks:
        print(f"busy CPU per tick: {1e6 * busy / a.rate / a.ticks:.2f} us")
    for label, n in buckets.most_common():
        print(f"  {100 * n / max(busy, 1):5.1f} %{per_tick(n)}  {label}")
    print("top self time (share of busy samples):")
    for frame, n in leaves.most_common(a.top):
        print(f"  {100 * n / max(busy, 1):5.1f} %  {frame[:140]}")


if __name__ == "__main__":
    main()
