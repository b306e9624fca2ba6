#!/usr/bin/env bash
# What one seat map costs the service: CPU per request and requests a
# second (docs/bench/surge-17.md, seventeenth run).
#
#   scripts/bench_seat_map.sh BINARY [REQUESTS]      (default 2000)
#
# Starts BINARY (`boxoffice serve`) on a free port with its own database
# and Redis key prefix (both removed afterwards; never FLUSHes), creates an
# event with one schedule of 5,000 seats in rows of 50, and asks for its
# admin seat map REQUESTS times on one keep-alive connection (one curl
# with every URL). Prints the answer's size, the service's CPU (user +
# system, /proc/<pid>/stat) per request and the requests a second. Run two
# binaries in turn to compare them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

[[ $# -ge 1 ]] || { echo "usage: scripts/bench_seat_map.sh BINARY [REQUESTS]" >&2; exit 2; }
BX=$1
N="${2:-2000}"
bench_local_only
bench_require curl
TS="$(date +%s%N)"
DB="bx_seatmap_$TS"
PREFIX="seatmap-$TS:"
KEY="seatmap-service-key-$TS"
PORT="$(bench_free_port 18500)"
MPORT="$(bench_free_port $((PORT + 1)))"
API="http://127.0.0.1:$PORT"
LOG="$(mktemp)"

SERVICE_PID=""
cleanup() {
    bench_stop "$SERVICE_PID"
    bench_drop_db "$DB"
    bench_unlink_prefix "$PREFIX" >/dev/null
    rm -f "$LOG"
}
trap cleanup EXIT

psql -X -q -v ON_ERROR_STOP=1 "$(bench_admin_url)" -c "create database \"$DB\""
env BOXOFFICE_ADDR="127.0.0.1:$PORT" BOXOFFICE_METRICS_ADDR="127.0.0.1:$MPORT" \
    DATABASE_URL="$(bench_db_url "$DB")" REDIS_URL="$REDIS_URL" BOXOFFICE_REDIS_PREFIX="$PREFIX" \
    BOXOFFICE_SERVICE_KEY="$KEY" BOXOFFICE_TOKEN_SECRET="seatmap-token-secret-$TS" RUST_LOG=warn \
    "$BX" serve >"$LOG" 2>&1 &
SERVICE_PID=$!
bench_wait_http "$API/readyz" 60 || { tail -n 20 "$LOG" >&2; exit 1; }

curl -fsS -o /dev/null -X POST "$API/v1/admin/events" -H "x-api-key: $KEY" -H 'content-type: application/json' -d '{
  "event_id":"seatmap","name":"seat map",
  "queue":{"admit_per_second":100,"max_active":1000,"active_ttl_seconds":300,"idle_timeout_seconds":60},
  "schedules":[{"schedule_id":"s1","starts_at":"2027-12-01T10:00:00Z","seats":5000,"row_size":50,
                "price":"10","hold_seconds":300,"max_per_user":4}]}'
URL="$API/v1/admin/events/seatmap/schedules/s1/seats"
BYTES="$(curl -fsS -H "x-api-key: $KEY" "$URL" | wc -c)"

URLS="$(mktemp)"
for _ in $(seq "$N"); do echo "url = \"$URL\""; echo 'output = "/dev/null"'; done >"$URLS"
C0="$(bench_cpu_ticks "$SERVICE_PID")" T0="$(date +%s%N)"
curl -fsS -H "x-api-key: $KEY" -K "$URLS"
C1="$(bench_cpu_ticks "$SERVICE_PID")" T1="$(date +%s%N)"
rm -f "$URLS"
awk -v b="$BYTES" -v n="$N" -v c="$((C1 - C0))" -v hz="$(getconf CLK_TCK)" -v ns="$((T1 - T0))" -v bx="$BX" \
    'BEGIN { printf "%s: %d bytes, %.0f µs service CPU per seat map, %.0f/s\n", bx, b, 1e6 * c / hz / n, n / (ns / 1e9) }'
