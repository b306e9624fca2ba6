#!/usr/bin/env bash
# Where one scenario's time goes: one release service, one Goose scenario,
# and per request the CPU time of the service and of Redis (from /proc),
# Redis's own time per command (INFO commandstats) and a perf profile of
# the service (perf record -g; `perf report -i <dir>/perf.data`).
#
#   scripts/profile_scenario.sh SCENARIO [SECONDS]     (status, join, holds, payment, ...)
#
# PROFILE_BIN / PROFILE_LOADTEST: other binaries (default target/release/;
# e.g. an old revision's from scripts/bench_ab.sh's loadtest/reports/ab-*/A/).
# PROFILE_SERVICE_ENV: extra VAR=value settings for the service (space
# separated). PROFILE_PERF=0 leaves perf out. Results in loadtest/reports/profile-<ts>/.
# CPU and request counts are taken over the steady window only: from 3 s
# after Goose starts (after any setup, such as pay's purchases made ready)
# to 2 s before its end; requests counted by the service's own histogram.
# Own database and Redis key prefix, removed afterwards; never FLUSHes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

[[ $# -ge 1 ]] || { echo "usage: scripts/profile_scenario.sh SCENARIO [SECONDS]" >&2; exit 2; }
SCENARIO=$1
SECS="${2:-15}"
bench_local_only
BX="${PROFILE_BIN:-target/release/boxoffice}"
LT="${PROFILE_LOADTEST:-target/release/loadtest}"
PORT="${PROFILE_PORT:-18095}"
TS="$(date +%s)"
DB="bx_profile_$TS"
PREFIX="profile-$TS:"
OUT="$ROOT/loadtest/reports/profile-$TS"
KEY="profile-service-key-$TS"
SECRET="profile-token-secret-$TS"
mkdir -p "$OUT"
[[ -x $BX && -x $LT ]] || { echo "profile: build first: cargo build --release -p boxoffice -p loadtest" >&2; exit 1; }
bench_port_free "$PORT" || { echo "profile: port $PORT in use (PROFILE_PORT)" >&2; exit 1; }

SERVICE_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    bench_stop "$SERVICE_PID"
    bench_unlink_prefix "$PREFIX" >/dev/null
    bench_drop_db "$DB"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

psql -X -q -v ON_ERROR_STOP=1 "$(bench_admin_url)" -c "create database \"$DB\""
env BOXOFFICE_ADDR="127.0.0.1:$PORT" DATABASE_URL="$(bench_db_url "$DB")" REDIS_URL="$REDIS_URL" \
    BOXOFFICE_REDIS_PREFIX="$PREFIX" BOXOFFICE_RATE_PER_IP=0 BOXOFFICE_RATE_PER_TOKEN=0 RUST_LOG=warn \
    BOXOFFICE_SERVICE_KEY="$KEY" BOXOFFICE_TOKEN_SECRET="$SECRET" BOXOFFICE_HTTP_MAX_CONNECTIONS=60000 \
    ${PROFILE_SERVICE_ENV:-} "$BX" serve >"$OUT/service.log" 2>&1 &
SERVICE_PID=$!
bench_wait_http "http://127.0.0.1:$PORT/readyz" 60 || { tail "$OUT/service.log" >&2; exit 1; }

snapshot() { # which: before | after
    python3 scripts/cpu_snapshot.py "$SERVICE_PID" >"$OUT/cpu-$1.json"
    redis-cli -u "$REDIS_URL" info commandstats >"$OUT/commandstats-$1.txt"
    curl -fsS --max-time 10 "http://127.0.0.1:$PORT/metrics" >"$OUT/metrics-$1.txt" || true
}
(( SECS >= 8 )) || { echo "profile: SECONDS must be at least 8 (3 s warm-up, 2 s wind-down)" >&2; exit 2; }
LOADTEST_REPORT_DIR="$OUT" BOXOFFICE_SERVICE_KEY="$KEY" BOXOFFICE_TOKEN_SECRET="$SECRET" REDIS_URL="$REDIS_URL" \
    BOXOFFICE_REDIS_PREFIX="$PREFIX" \
    timeout $((SECS + 120)) "$LT" "$SCENARIO" --host "http://127.0.0.1:$PORT" -u 64 -r 64 -t "${SECS}s" \
    >"$OUT/loadtest.log" 2>&1 &
LT_PID=$!
# Goose starts once the scenario's setup is done. A loadtest that ends
# before that (a failed setup, or Goose's log line changed) stops the
# profile here: its window would measure nothing.
until grep -q "entering GooseAttack phase" "$OUT/loadtest.log" 2>/dev/null; do
    kill -0 "$LT_PID" 2>/dev/null || { tail "$OUT/loadtest.log" >&2; echo "profile: Goose never started" >&2; exit 1; }
    sleep 0.2
done
sleep 3
snapshot before
WINDOW_START=$(date +%s%N)
PERF_PID=""
if [[ ${PROFILE_PERF:-1} == 1 ]] && command -v perf >/dev/null; then
    timeout -s INT $((SECS - 5)) perf record -F 499 -g -p "$SERVICE_PID" -o "$OUT/perf.data" >"$OUT/perf.log" 2>&1 &
    PERF_PID=$!
fi
sleep $((SECS - 5))
snapshot after
WINDOW_NS=$(($(date +%s%N) - WINDOW_START))
wait "$LT_PID" || { tail "$OUT/loadtest.log" >&2; exit 1; }
[[ -n $PERF_PID ]] && wait "$PERF_PID" 2>/dev/null || true

python3 - "$OUT" "$SCENARIO" "$WINDOW_NS" <<'PY' | tee "$OUT/profile.txt"
import json, re, sys
out, scenario, window = sys.argv[1], sys.argv[2], int(sys.argv[3]) / 1e9
load = lambda name: json.load(open(f"{out}/{name}"))
a, z, s = load("cpu-before.json"), load("cpu-after.json"), load(f"{scenario}-summary.json")
def served(path):
    total = 0.0
    for line in open(path):
        m = re.match(r'boxoffice_http_request_duration_seconds_count\{[^}]*route="([^"]*)"[^}]*\} (\S+)', line)
        if m and m.group(1) not in ("/metrics", "/readyz"):
            total += float(m.group(2))
    return total
n = max(served(f"{out}/metrics-after.txt") - served(f"{out}/metrics-before.txt"), 1)
print(f"{scenario}: whole run {s['total']['count']:,} requests, {s['total']['rps']:,.0f}/s; " +
      ", ".join(f"{r['name']} p50 {r['p50_ms']} / p99 {r['p99_ms']} ms" for r in s["requests"]))
print(f"steady window: {n:,.0f} requests in {window:.1f} s, {n / window:,.0f}/s (the service's count)")
for g in ("service", "generator", "redis", "postgres"):
    user = z["groups"][g][0] - a["groups"][g][0]
    system = z["groups"][g][1] - a["groups"][g][1]
    print(f"{g:9} CPU per request: {1e6 * user / n:6.1f} µs user + {1e6 * system / n:6.1f} µs system")
m = [z["machine"][k] - a["machine"][k] for k in ("user", "system", "idle")] if "machine" in z else None
if m:
    print(f"machine   CPU per request: {1e6 * m[0] / n:6.1f} µs user + {1e6 * m[1] / n:6.1f} µs system; idle {100 * m[2] / sum(m):.0f} %")
def stats(path):
    d = {}
    for line in open(path):
        m = re.match(r"cmdstat_(\w+):calls=(\d+),usec=(\d+)", line.strip())
        if m:
            d[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return d
b, e = stats(f"{out}/commandstats-before.txt"), stats(f"{out}/commandstats-after.txt")
rows = [(k, c - b.get(k, (0, 0))[0], u - b.get(k, (0, 0))[1]) for k, (c, u) in e.items()]
for k, c, u in sorted((r for r in rows if r[1] > 0), key=lambda r: -r[2])[:6]:
    print(f"redis {k:10} {c:9,} calls {u / c:6.1f} µs per call")
def batches(path):
    d = {}
    try:
        for line in open(path):
            m = re.match(r'boxoffice_script_batch_(sum|count)\{script="(\w+)"\} (\S+)', line)
            if m:
                d[(m.group(1), m.group(2))] = float(m.group(3))
    except OSError:
        pass
    return d
b, e = batches(f"{out}/metrics-before.txt"), batches(f"{out}/metrics-after.txt")
for script in sorted({k[1] for k in e}):
    calls = e.get(("count", script), 0) - b.get(("count", script), 0)
    if calls > 0:
        asked = e.get(("sum", script), 0) - b.get(("sum", script), 0)
        print(f"coalesced {script:13} {asked:9,.0f} requests in {calls:9,.0f} calls: {asked / calls:5.2f} per call")
PY
if [[ -f $OUT/perf.data ]]; then
    echo "perf: perf report -i ${OUT#"$ROOT"/}/perf.data --no-children --sort symbol"
fi
