#!/usr/bin/env bash
# Streaming vs polling (part of `make bench`; alone: scripts/bench_stream.sh).
#
# For N waiting users (STREAM_SIZES, default "10000 50000") and each of
# poll / stream: three release service instances (one process here may hold
# at most 20,000 sockets, so 50,000 streams need several; each is allowed
# 19,000 connections, above its default cap of 4,096) share a private
# redis-server (so its command counts are ours alone) and a fresh database;
# three `stream_bench` clients join N/3 users each into a paused event and
# keep them waiting — polling GET /v1/queue/status every poll_after_ms, or
# holding GET /v1/queue/stream open. After everyone is in place and a
# warm-up (STREAM_WARMUP s, default 20: one full 15 s update cycle), the
# services' CPU time (utime + stime of the three processes) and Redis's
# command counters are read over STREAM_WINDOW s (default 30).
#
# Prints a Markdown table and writes it to $STREAM_OUT (default
# loadtest/reports/stream-<ts>.md). Only 127.0.0.1. Never FLUSHes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
SIZES="${STREAM_SIZES:-10000 50000}"
WARMUP="${STREAM_WARMUP:-20}"
WINDOW="${STREAM_WINDOW:-30}"
BASE_PORT="${STREAM_PORT:-18100}"
TS="$(date +%s)"
OUT="${STREAM_OUT:-$ROOT/loadtest/reports/stream-$TS.md}"
DB="bx_stream_$TS"
KEY="stream-bench-key"
BX="$ROOT/target/release/boxoffice"
SB="$ROOT/target/release/stream_bench"
TMP="$(mktemp -d)"
say() { printf '[bench-stream %4ds] %s\n' "$(($(date +%s) - TS))" "$*" >&2; }

PIDS=()
CLIENTS=()
REDIS_PID=""
DB_CREATED=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for p in "${CLIENTS[@]}" "${PIDS[@]}" $REDIS_PID; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${CLIENTS[@]}" "${PIDS[@]}" $REDIS_PID; do bench_stop "$p"; done
    [[ $DB_CREATED -eq 1 ]] && bench_drop_db "$DB"
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ ${BENCH_SKIP_BUILD:-0} == 1 ]] || cargo build --release -p boxoffice -p loadtest >&2
for b in "$BX" "$SB"; do [[ -x $b ]] || { echo "bench-stream: $b missing" >&2; exit 1; }; done

RPORT=$((BASE_PORT + 50))
bench_private_redis "$RPORT" "$TMP/redis.log"
REDIS_PID=$BENCH_REDIS_PID
psql -X -q "$(bench_admin_url)" -c "create database \"$DB\"" >/dev/null
DB_CREATED=1
for i in 0 1 2; do
    env BOXOFFICE_ADDR="127.0.0.1:$((BASE_PORT + i))" DATABASE_URL="$(bench_db_url "$DB")" \
        REDIS_URL="redis://127.0.0.1:$RPORT" BOXOFFICE_REDIS_PREFIX="sb:" \
        BOXOFFICE_RATE_PER_IP=0 BOXOFFICE_RATE_PER_TOKEN=0 BOXOFFICE_SERVICE_KEY="$KEY" \
        BOXOFFICE_HTTP_MAX_CONNECTIONS=19000 \
        BOXOFFICE_TOKEN_SECRET="stream-bench-secret-$TS" RUST_LOG=error \
        "$BX" serve >"$TMP/service$i.log" 2>&1 &
    PIDS+=($!)
done
for i in 0 1 2; do
    for _ in $(seq 100); do
        curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$((BASE_PORT + i))/readyz" 2>/dev/null && break
        sleep 0.2
    done
done

redis_stat() { # total calls (incl. inside scripts), script calls (FCALL)
    redis-cli -p "$RPORT" info commandstats | tr -d '\r' | awk -F'[=,:]' '
        /^cmdstat_/ { total += $3; if ($1 == "cmdstat_fcall") ev = $3 }
        END { printf "%d %d\n", total, ev }'
}
HZ="$(getconf CLK_TCK)"

{
    echo "| users | mode | service CPU ms per waiting user per minute | Redis calls/s from clients (FCALL) | Redis commands/s incl. inside scripts |"
    echo "|---:|---|---:|---:|---:|"
} >"$TMP/table.md"
declare -A CPU INVALID
for n in $SIZES; do
    for mode in poll stream; do
        ev="sb-$mode-$n"
        curl -fsS -o /dev/null -X POST "http://127.0.0.1:$BASE_PORT/v1/admin/events" \
            -H "x-api-key: $KEY" -H 'content-type: application/json' \
            -d "{\"event_id\":\"$ev\",\"name\":\"$ev\",\"queue\":{\"admit_per_second\":10,\"max_active\":100,\"active_ttl_seconds\":600,\"idle_timeout_seconds\":60,\"paused\":true},\"schedules\":[{\"schedule_id\":\"d1\",\"starts_at\":\"2027-01-01T20:00:00Z\",\"seats\":100,\"row_size\":10,\"price\":\"1000\",\"hold_seconds\":60,\"max_per_user\":4}]}"
        per=$((n / 3))
        CLIENTS=()
        for i in 0 1 2; do
            # The last client takes the remainder: exactly N users (50,000 =
            # 16,666 + 16,666 + 16,668 sockets, each client and service
            # instance below the 20,000 per process).
            count=$((i == 2 ? n - 2 * per : per))
            BOXOFFICE_SERVICE_KEY="$KEY" "$SB" "$mode" "http://127.0.0.1:$((BASE_PORT + i))" "$ev" \
                $((i * per)) "$count" "$TMP/ready-$mode-$n-$i" 2>"$TMP/client-$mode-$n-$i.log" &
            CLIENTS+=($!)
        done
        say "$mode, $n users: joining and settling"
        for _ in $(seq 600); do
            [[ -f $TMP/ready-$mode-$n-0 && -f $TMP/ready-$mode-$n-1 && -f $TMP/ready-$mode-$n-2 ]] && break
            sleep 0.5
        done
        # Who is in place (a client writes its ready file at 99 %); a row
        # measured with clients still short says so instead of passing.
        placed=0
        for i in 0 1 2; do
            f="$TMP/ready-$mode-$n-$i"
            if [[ -f $f ]]; then placed=$((placed + $(cat "$f"))); else
                say "$mode $n: client $i not in place after 300 s: $(tail -n 2 "$TMP/client-$mode-$n-$i.log" | tr '\n' ' ')"
                placed=-1; break
            fi
        done
        sleep "$WARMUP"
        c0="$(bench_cpu_ticks "${PIDS[@]}")"; read -r r0 e0 < <(redis_stat)
        sleep "$WINDOW"
        c1="$(bench_cpu_ticks "${PIDS[@]}")"; read -r r1 e1 < <(redis_stat)
        reqs="$(cat "$TMP"/client-$mode-$n-*.log | grep -c . || true)"
        for p in "${CLIENTS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
        for p in "${CLIENTS[@]}"; do wait "$p" 2>/dev/null || true; done
        CLIENTS=()
        cpu_ms=$(python3 -c "print(f'{($c1 - $c0) / $HZ * 1000 / $n / ($WINDOW / 60):.3f}')")
        CPU[$mode-$n]=$cpu_ms
        evs=$(python3 -c "print(f'{($e1 - $e0) / $WINDOW:.1f}')")
        tot=$(python3 -c "print(f'{($r1 - $r0) / $WINDOW:.1f}')")
        say "$mode $n: cpu $cpu_ms ms/user/min, fcall $evs/s, redis $tot/s"
        if [[ $placed -lt 0 ]]; then
            INVALID[$mode-$n]=1
            mode="$mode (NOT all in place: invalid)"
        fi
        echo "| $n | $mode | $cpu_ms | $evs | $tot |" >>"$TMP/table.md"
        sleep 5
    done
done
{
    echo
    for n in $SIZES; do
        if [[ -n ${INVALID[poll-$n]:-}${INVALID[stream-$n]:-} ]]; then
            echo "- $n users: no comparison (a row above is invalid: not every user was in place)."
            continue
        fi
        python3 -c "p, s = ${CPU[poll-$n]}, ${CPU[stream-$n]}; print(f'- {$n} users: streaming costs {s / p * 100 if p else 0:.0f} % of polling in service CPU (aim: < 20 %).')"
    done
} >>"$TMP/table.md"
mkdir -p "$(dirname "$OUT")"
cp "$TMP/table.md" "$OUT"
cat "$OUT"
