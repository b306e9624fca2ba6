#!/usr/bin/env bash
# A pre-queue of 1,000,000 entries and Redis's own command latencies (part
# of `make bench`; alone: scripts/bench_prequeue.sh).
#
# Starts a private redis-server (so `CONFIG RESETSTAT` and the slow log are
# ours alone; `slowlog-log-slower-than` 2000 µs), a fresh database and one
# release service instance, then runs `loadtest prequeue`: an event whose
# pre-queue is open, PREQUEUE_ENTRIES entries (1000000) seeded into Redis
# the way lua/join_queue.lua writes them, and phases of PREQUEUE_SECONDS
# (15) each with PREQUEUE_CONCURRENCY (32) requests in flight: joins, status
# polls deep in the pre-queue, the moment opens_at passes (admission on),
# polls after the draw, PREQUEUE_STREAMS (2000; 0 = none) streams, and the
# admin entry list. Per phase: EVALSHA p50/p99/p99.9 from `INFO
# latencystats`, the slow log (>= 2 ms), the max, the load average.
#
# redis-server runs with PREQUEUE_REDIS_PRIORITY: `fifo` (default; chrt -f
# 10, real-time, so it is never descheduled for the builds sharing the
# cores; the kernel's RT throttling still leaves others 5 %), `nice` (nice
# -10: not enough at a load average of 15, Redis still lost 10-20 ms inside
# single HMGETs) or `none`. Without it the slow log measures the
# scheduler, not the commands. Redis's own timings are what is reported.
#
# PREQUEUE_BIN_DIR (target/release; target/debug only to try the script
# itself: debug figures mean nothing).
#
# Prints a Markdown table and writes it to $PREQUEUE_OUT (default
# loadtest/reports/prequeue-<ts>.md). Only 127.0.0.1. Never FLUSHes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
PORT="${PREQUEUE_PORT:-18200}"
TS="$(date +%s)"
OUT="${PREQUEUE_OUT:-$ROOT/loadtest/reports/prequeue-$TS.md}"
DB="bx_prequeue_$TS"
KEY="prequeue-bench-key"
SECRET="prequeue-bench-secret-$TS"
BIN_DIR="${PREQUEUE_BIN_DIR:-$ROOT/target/release}"
BX="$BIN_DIR/boxoffice"
LT="$BIN_DIR/loadtest"
TMP="$(mktemp -d)"
say() { printf '[bench-prequeue %4ds] %s\n' "$(($(date +%s) - TS))" "$*" >&2; }

SERVICE_PID=""
REDIS_PID=""
DB_CREATED=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    bench_stop "$SERVICE_PID"
    bench_stop "$REDIS_PID"
    [[ $DB_CREATED -eq 1 ]] && bench_drop_db "$DB"
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ ${BENCH_SKIP_BUILD:-0} == 1 ]] || cargo build --release -p boxoffice -p loadtest >&2
for b in "$BX" "$LT"; do [[ -x $b ]] || { echo "bench-prequeue: $b missing" >&2; exit 1; }; done

RPORT=$((PORT + 50))
case "${PREQUEUE_REDIS_PRIORITY:-fifo}" in
    fifo) BENCH_REDIS_WRAP=(chrt -f 10) ;;
    nice) BENCH_REDIS_WRAP=(nice -n -10) ;;
    *) BENCH_REDIS_WRAP=() ;;
esac
bench_private_redis "$RPORT" "$TMP/redis.log" --slowlog-log-slower-than 2000 --slowlog-max-len 1024
REDIS_PID=$BENCH_REDIS_PID
psql -X -q "$(bench_admin_url)" -c "create database \"$DB\"" >/dev/null
DB_CREATED=1
COMMON=(REDIS_URL="redis://127.0.0.1:$RPORT" BOXOFFICE_REDIS_PREFIX="pq:" BOXOFFICE_SERVICE_KEY="$KEY"
    BOXOFFICE_TOKEN_SECRET="$SECRET")
env "${COMMON[@]}" BOXOFFICE_ADDR="127.0.0.1:$PORT" DATABASE_URL="$(bench_db_url "$DB")" \
    BOXOFFICE_RATE_PER_IP=0 BOXOFFICE_RATE_PER_TOKEN=0 RUST_LOG=error \
    "$BX" serve >"$TMP/service.log" 2>&1 &
SERVICE_PID=$!
for _ in $(seq 100); do
    curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/readyz" 2>/dev/null && break
    sleep 0.2
done

say "loadtest prequeue: ${PREQUEUE_ENTRIES:-1000000} entries (load average $(cut -d' ' -f1-3 /proc/loadavg))"
env "${COMMON[@]}" LOADTEST_PREQUEUE="${PREQUEUE_ENTRIES:-1000000}" \
    LOADTEST_PREQUEUE_SECONDS="${PREQUEUE_SECONDS:-15}" \
    LOADTEST_PREQUEUE_CONCURRENCY="${PREQUEUE_CONCURRENCY:-32}" \
    LOADTEST_PREQUEUE_STREAMS="${PREQUEUE_STREAMS:-2000}" \
    DATABASE_URL="$(bench_db_url "$DB")" "$LT" prequeue --host "http://127.0.0.1:$PORT" >"$TMP/table.md"
echo "- redis-server scheduled as $(ps -o cls=,rtprio=,ni= -p "$REDIS_PID" | xargs) (class, RT priority, nice; PREQUEUE_REDIS_PRIORITY=${PREQUEUE_REDIS_PRIORITY:-fifo}), the service and the load generator at nice $(ps -o ni= -p "$SERVICE_PID" | tr -d ' '); \`$0\` with PREQUEUE_ENTRIES=${PREQUEUE_ENTRIES:-1000000} PREQUEUE_SECONDS=${PREQUEUE_SECONDS:-15} PREQUEUE_CONCURRENCY=${PREQUEUE_CONCURRENCY:-32} PREQUEUE_STREAMS=${PREQUEUE_STREAMS:-2000}." >>"$TMP/table.md"
mkdir -p "$(dirname "$OUT")"
cp "$TMP/table.md" "$OUT"
cat "$OUT"
