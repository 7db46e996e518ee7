#!/usr/bin/env bash
# Run every benchmark in bench/ and keep each one's output in bench/results/<name>.txt
# (stderr, when there is any, in bench/results/<name>.log; bench/results/summary.txt lists what
# ran, on which machine, for how long, and whether it succeeded).
#
#   bash bench/run_all.sh            # or: make bench
#   PYTHON=/path/to/python bash bench/run_all.sh
#
# Every bench_*.py script runs with its defaults, then `mw bench processor --ticks 200000
# --symbols 500 --json`. A failing benchmark does not stop the others; the exit code is 1 when
# any failed. Benchmarks use embedded servers in temporary directories unless MW_DATABASE_URL /
# MW_KAFKA_BOOTSTRAP are set (bench_startup.py always uses embedded ones: it measures `mw up`).
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || PY=$(command -v python3)
MW="$(dirname "$PY")/mw"
OUT=bench/results
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
{
    echo "Market Watch benchmarks, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "machine: $(nproc) CPUs, $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, $(uname -sr), $("$PY" --version 2>&1)"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$SUMMARY"

failed=()

run() {  # run NAME COMMAND...: stdout -> NAME.txt, stderr -> NAME.log (removed when empty)
    local name=$1
    shift
    echo "== $name: $*"
    local t0=$SECONDS
    if "$@" >"$OUT/$name.txt" 2>"$OUT/$name.log"; then
        echo "$name: ok in $((SECONDS - t0)) s" | tee -a "$SUMMARY"
    else
        local code=$?
        failed+=("$name")
        echo "$name: FAILED (exit $code) after $((SECONDS - t0)) s; see $OUT/$name.log" | tee -a "$SUMMARY"
        tail -n 20 "$OUT/$name.log" >&2
    fi
    [[ -s $OUT/$name.log ]] || rm -f "$OUT/$name.log"
    cat "$OUT/$name.txt"
}

# Known scripts first, in this order, then any other bench_*.py.
scripts=()
for name in bench_windows bench_news bench_dagster bench_startup; do
    [[ -f bench/$name.py ]] && scripts+=("bench/$name.py")
done
for path in bench/bench_*.py; do
    [[ " ${scripts[*]} " == *" $path "* ]] || scripts+=("$path")
done
for path in "${scripts[@]}"; do
    run "$(basename "$path" .py)" "$PY" "$path"
done
# The notifier: alert event -> 3 local channels (latency, 1,000-event burst under the rate limit).
run notify "$PY" bench/notify.py

# The processor benchmark keeps its embedded PostgreSQL running (it is reused by the next
# run): give it a scratch state dir and stop that server afterwards.
state=$(mktemp -d /tmp/mw-bench-processor-XXXXXX)
MW_STATE_DIR=$state run mw_bench_processor "$MW" bench processor --ticks 200000 --symbols 500 --json
if [[ -f $state/pg/postmaster.pid ]]; then
    "$PY" -c 'import sys; from pathlib import Path; from mw_core.local.postgres import EmbeddedPostgres; EmbeddedPostgres(Path(sys.argv[1])).stop()' "$state/pg"
fi
rm -rf "$state"

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$SUMMARY"
echo "== results in $OUT/ (summary: $SUMMARY)"
if ((${#failed[@]})); then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
