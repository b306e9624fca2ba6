#!/usr/bin/env bash
# The flash sale second by second: one release service, one Goose flash
# sale with a request log, and every component's CPU once a second; then
# scripts/surge_timeline.py prints per 2 s each request type's count, p50
# and p99 (client side) and each component's CPU, and how many of the
# admitted buyers' requests took over 50 ms during the arrivals and after.
# It shows *when* a sale is slow and who had the CPU then, which the whole
# sale's p99 in docs/BENCHMARKS.md cannot.
#
#   scripts/surge_timeline.sh [auto|fixed|lanes]      (default auto)
#
# lanes: the autopilot as in auto, on two instances of the service sharing
# Redis and PostgreSQL: the waiting room's lane (join, status, leave) at
# nice SURGE_QUEUE_NICE (10), the shop's lane (schedules, seat map, holds,
# wallet, payments) at nice 0; the buyers send each request to its lane
# (LOADTEST_SHOP_HOST). When the cores run out, the kernel gives them to
# the shop first.
#
# SURGE_BUYERS (20000), SURGE_ARRIVALS (buyers per second, 2000),
# SURGE_SEATS (5000), SURGE_ADMIT (fixed rate and the autopilot's maximum,
# 1000), SURGE_AUTO_START (200), SURGE_SERVICE_ENV (extra VAR=value words
# for the service, e.g. to try a setting; in lanes mode for both
# instances), SURGE_QUEUE_ENV (lanes mode: more words for the waiting
# room's instance only, e.g. TOKIO_WORKER_THREADS=1). Needs target/release/boxoffice
# and loadtest (cargo build --release -p boxoffice -p loadtest), or other
# binaries in SURGE_BIN / SURGE_LOADTEST (e.g. an old revision's from
# scripts/bench_ab.sh's loadtest/reports/ab-*/A/). Own
# database and Redis key prefix, removed afterwards; never FLUSHes.
# Results in loadtest/reports/surge-<mode>-<ts>/ (timeline.md, req.csv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

MODE="${1:-auto}"
[[ $MODE == auto || $MODE == fixed || $MODE == lanes ]] ||
    { echo "usage: scripts/surge_timeline.sh [auto|fixed|lanes]" >&2; exit 2; }
ADMISSION="$([[ $MODE == fixed ]] && echo fixed || echo auto)"
bench_local_only
BX="${SURGE_BIN:-target/release/boxoffice}"
LT="${SURGE_LOADTEST:-target/release/loadtest}"
[[ -x $BX && -x $LT ]] || { echo "surge_timeline: build first: cargo build --release -p boxoffice -p loadtest" >&2; exit 1; }
TS="$(date +%s)"
OUT="$ROOT/loadtest/reports/surge-$MODE-$TS"
DB="bx_surge_$TS"
PREFIX="surge-$TS:"
KEY="surge-service-key-$TS"
SECRET="surge-token-secret-$TS"
PORT="$(bench_free_port 18300)"
MPORT="$(bench_free_port $((PORT + 1)))"
SHOP_PORT="$(bench_free_port $((MPORT + 1)))"
SHOP_MPORT="$(bench_free_port $((SHOP_PORT + 1)))"
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

SERVICE_PID="" SHOP_PID="" SAMPLER_PID=""
cleanup() {
    [[ -n $SAMPLER_PID ]] && kill "$SAMPLER_PID" 2>/dev/null
    bench_stop "$SERVICE_PID"
    bench_stop "$SHOP_PID"
    bench_drop_db "$DB"
    bench_unlink_prefix "$PREFIX" >/dev/null
}
trap cleanup EXIT

psql -X -q -v ON_ERROR_STOP=1 "$(bench_admin_url)" -c "create database \"$DB\""
read -r -a EXTRA <<<"${SURGE_SERVICE_ENV:-}"
read -r -a QUEUE_EXTRA <<<"${SURGE_QUEUE_ENV:-}"
serve() { # PORT METRICS-PORT LOG [COMMAND PREFIX...]: one instance, in the background
    local port=$1 mport=$2 log=$3
    shift 3
    env BOXOFFICE_ADDR="127.0.0.1:$port" BOXOFFICE_METRICS_ADDR="127.0.0.1:$mport" BOXOFFICE_HTTP_MAX_CONNECTIONS=60000 \
        DATABASE_URL="$(bench_db_url "$DB")" REDIS_URL="$REDIS_URL" BOXOFFICE_REDIS_PREFIX="$PREFIX" \
        BOXOFFICE_RATE_PER_IP=0 BOXOFFICE_RATE_PER_TOKEN=0 RUST_LOG=warn \
        BOXOFFICE_SERVICE_KEY="$KEY" BOXOFFICE_TOKEN_SECRET="$SECRET" "${EXTRA[@]}" \
        "$@" "$BX" serve >"$log" 2>&1 &
}
if [[ $MODE == lanes ]]; then
    serve "$PORT" "$MPORT" "$OUT/service.log" env "${QUEUE_EXTRA[@]}" nice -n "${SURGE_QUEUE_NICE:-10}"
    SERVICE_PID=$!
    bench_wait_http "http://127.0.0.1:$PORT/readyz" 60 || { tail -n 20 "$OUT/service.log" >&2; exit 1; }
    serve "$SHOP_PORT" "$SHOP_MPORT" "$OUT/shop.log"
    SHOP_PID=$!
    bench_wait_http "http://127.0.0.1:$SHOP_PORT/readyz" 60 || { tail -n 20 "$OUT/shop.log" >&2; exit 1; }
    export LOADTEST_SHOP_HOST="http://127.0.0.1:$SHOP_PORT"
else
    serve "$PORT" "$MPORT" "$OUT/service.log"
    SERVICE_PID=$!
    bench_wait_http "http://127.0.0.1:$PORT/readyz" 60 || { tail -n 20 "$OUT/service.log" >&2; exit 1; }
fi

# One line a second: the time, then scripts/cpu_snapshot.py's JSON.
(while :; do echo "$(date +%s.%N) $(python3 scripts/cpu_snapshot.py "$SERVICE_PID" $SHOP_PID 2>/dev/null)"; sleep 1; done >"$OUT/cpu.log") &
SAMPLER_PID=$!
date +%s.%N >"$OUT/t0"
BOXOFFICE_SERVICE_KEY="$KEY" BOXOFFICE_TOKEN_SECRET="$SECRET" REDIS_URL="$REDIS_URL" BOXOFFICE_REDIS_PREFIX="$PREFIX" \
    LOADTEST_REPORT_DIR="$OUT" LOADTEST_SEATS="${SURGE_SEATS:-5000}" LOADTEST_ADMISSION="$ADMISSION" \
    LOADTEST_ADMIT_PER_SECOND="${SURGE_ADMIT:-1000}" LOADTEST_MAX_ACTIVE="${SURGE_ADMIT:-1000}" \
    LOADTEST_AUTO_START="${SURGE_AUTO_START:-200}" \
    timeout 600 "$LT" flash-sale --host "http://127.0.0.1:$PORT" -u "${SURGE_BUYERS:-20000}" -r "${SURGE_ARRIVALS:-2000}" \
    --request-log "$OUT/req.csv" --request-format csv >"$OUT/flash-sale.log" 2>&1 ||
    { tail -n 30 "$OUT/flash-sale.log" >&2; exit 1; }
kill "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""
python3 scripts/surge_timeline.py "$OUT" | tee "$OUT/timeline.md"
grep -E 'sold_out_ms|seats_sold|busy_retries|generator_cpu' "$OUT/flash-sale.log" || true
echo "surge_timeline: results in ${OUT#"$ROOT"/}"
