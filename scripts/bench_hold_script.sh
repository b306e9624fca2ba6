#!/usr/bin/env bash
# place_hold's Redis cost next to a minimal one-key hold script, measured
# in the same run with redis-benchmark, pipelined (-P 16) so Redis is the
# limit (docs/BENCHMARKS.md, "place_hold Redis cost").
#
# 1. starts a private redis-server on a free port (never the shared one)
#    and the service against it and a fresh database, creates one event
#    through the admin API (one fresh 100,000-seat schedule per run), then
#    stops the service so nothing else runs scripts on that Redis;
# 2. loads (a) place_hold exactly as the service calls it: the function
#    library the binary prints (`boxoffice lua-library`, FCALL
#    <library>_place_hold) with its 13 real KEYS, and (b) the reference,
#    INCR a hold number + HSETNX seat -> "h:<n>", both as a function
#    (FCALL, the real one's reference) and as a script (EVALSHA, the
#    reference of "before", which was an EVALSHA script); admits every user
#    redis-benchmark's u__rand_int__ can produce;
# 3. HOLD_BENCH_RUNS times, alternating: CONFIG RESETSTAT, redis-benchmark
#    on one of them, INFO commandstats (fcall or evalsha usec_per_call);
#    checks that every real call placed a hold (`held` == calls);
# 4. prints the medians (holds/s, usec_per_call, and Redis' own
#    main-thread CPU per call from INFO cpu) and the ratios real/minimal,
#    and writes them to $HOLD_BENCH_OUT (key=value lines);
# 5. stops what it started and drops its database, also on failure.
#
# The real script is also measured the way the service sends it under
# load, HOLD_BENCH_BATCH holds a call (8; src/holds/coalesce.rs gathers
# the holds of one schedule that arrive while its previous call is in
# flight), reported per hold.
#
# Inputs (optional): DATABASE_URL (its server; a fresh database is used),
# HOLD_BENCH_RUNS (5), HOLD_BENCH_CALLS (40000 per run), HOLD_BENCH_BIN
# (target/release/boxoffice, else target/debug/boxoffice: the service only
# creates the event, so its profile does not matter), HOLD_BENCH_OUT
# (a file for the figures), HOLD_BENCH_CLIENTS (8), HOLD_BENCH_BEFORE (a
# directory holding another lua/ tree, e.g. from `git archive <rev> lua`:
# its place_hold, as the EVALSHA script of lib/queue.lua + lib/schedule.lua
# + place_hold.lua that revisions before the function library sent, is
# measured too, in the same runs, as "before"), HOLD_BENCH_SAVE (a
# directory: stop after step 2's data is in place and save it there as
# dump.rdb, for scripts/bench_hold_callgrind.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

RUNS="${HOLD_BENCH_RUNS:-5}"
CALLS="${HOLD_BENCH_CALLS:-40000}"
CLIENTS="${HOLD_BENCH_CLIENTS:-8}"
# redis-benchmark sends whole pipelines (-P 16) per client: round up so
# that every request is counted.
CALLS=$(((CALLS + CLIENTS * 16 - 1) / (CLIENTS * 16) * CLIENTS * 16))
BATCH="${HOLD_BENCH_BATCH:-8}"
# The batched run sends CALLS holds in whole pipelines too.
BATCH_CALLS=$(((CALLS / BATCH + CLIENTS * 16 - 1) / (CLIENTS * 16) * CLIENTS * 16))
OUTFILE="${HOLD_BENCH_OUT:-}"
BEFORE="${HOLD_BENCH_BEFORE:-}"
[[ -z $BEFORE || -f $BEFORE/lib/schedule.lua ]] || { echo "bench_hold_script: HOLD_BENCH_BEFORE=$BEFORE has no lib/schedule.lua" >&2; exit 2; }
BX="${HOLD_BENCH_BIN:-}"
if [[ -z $BX ]]; then
    BX="$ROOT/target/release/boxoffice"
    [[ -x $BX ]] || BX="$ROOT/target/debug/boxoffice"
fi
[[ -x $BX ]] || { echo "bench_hold_script: $BX missing (cargo build)" >&2; exit 1; }
[[ $CALLS -le 99000 && $((BATCH_CALLS * BATCH)) -le 99000 ]] || { echo "bench_hold_script: HOLD_BENCH_CALLS must stay below the 100,000 seats" >&2; exit 2; }
REDIS_URL="redis://127.0.0.1" bench_local_only # (its Redis is its own)
bench_require redis-server redis-cli redis-benchmark psql curl

TS="$(date +%s)$$"
DB="bx_holdbench_$TS"
ADMIN_URL="$(bench_admin_url)"
KEY="holdbench-key"
WORK="$(mktemp -d)"

RPORT="$(bench_free_port 16400)"
HPORT="$(bench_free_port 18400)"

REDIS_PID="" SERVICE_PID="" DB_CREATED=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    bench_stop "$SERVICE_PID"
    bench_stop "$REDIS_PID"
    [[ $DB_CREATED -eq 1 ]] && bench_drop_db "$DB"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A private Redis: no persistence, nothing else on it.
bench_private_redis "$RPORT" "$WORK/redis.log" --dir "$WORK"
REDIS_PID=$BENCH_REDIS_PID
R="redis://127.0.0.1:$RPORT"
rcli() { redis-cli -u "$R" "$@"; }

psql -X -q -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "create database \"$DB\""
DB_CREATED=1
env BOXOFFICE_ADDR="127.0.0.1:$HPORT" DATABASE_URL="$(bench_db_url "$DB")" REDIS_URL="$R" BOXOFFICE_REDIS_PREFIX="hb:" \
    BOXOFFICE_SERVICE_KEY="$KEY" BOXOFFICE_TOKEN_SECRET="holdbench-token-secret-$TS" RUST_LOG=warn \
    "$BX" serve >"$WORK/service.log" 2>&1 &
SERVICE_PID=$!
for i in $(seq 600); do
    curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$HPORT/readyz" 2>/dev/null && break
    [[ $i -eq 600 ]] && { tail -n 20 "$WORK/service.log" >&2; echo "bench_hold_script: service not ready" >&2; exit 1; }
    sleep 0.1
done
SCHEDULES=""
for ((i = 1; i <= RUNS; i++)); do
    SCHEDULES+=",{\"schedule_id\":\"b$i\",\"starts_at\":\"2030-01-01T19:00:00Z\",\"seats\":100000,\"row_size\":50,\"price\":\"1000\",\"hold_seconds\":3600,\"max_per_user\":100}"
    SCHEDULES+=",{\"schedule_id\":\"r$i\",\"starts_at\":\"2030-01-01T19:00:00Z\",\"seats\":100000,\"row_size\":50,\"price\":\"1000\",\"hold_seconds\":3600,\"max_per_user\":100}"
    SCHEDULES+=",{\"schedule_id\":\"q$i\",\"starts_at\":\"2030-01-01T19:00:00Z\",\"seats\":100000,\"row_size\":50,\"price\":\"1000\",\"hold_seconds\":3600,\"max_per_user\":100}"
    # The keyed holds of scripts/bench_hold_callgrind.sh, on schedules of their own.
    [[ -z ${HOLD_BENCH_SAVE:-} ]] ||
        SCHEDULES+=",{\"schedule_id\":\"k$i\",\"starts_at\":\"2030-01-01T19:00:00Z\",\"seats\":100000,\"row_size\":50,\"price\":\"1000\",\"hold_seconds\":3600,\"max_per_user\":100}"
done
curl -fsS -o /dev/null -H "x-api-key: $KEY" -H 'content-type: application/json' "http://127.0.0.1:$HPORT/v1/admin/events" -d "{
  \"event_id\":\"hb\",\"name\":\"place_hold bench\",
  \"queue\":{\"admit_per_second\":1000,\"max_active\":1000,\"active_ttl_seconds\":600,\"idle_timeout_seconds\":600,\"paused\":true},
  \"schedules\":[${SCHEDULES#,}]}"
bench_stop "$SERVICE_PID"
SERVICE_PID=""

E="hb:{ev:hb}"
[[ $(rcli exists "$E:ready") == 1 ]] || { echo "bench_hold_script: the event has no ready mark" >&2; exit 1; }
USERS=100000
bench_admit_users "$E" "$USERS"
if [[ -n ${HOLD_BENCH_SAVE:-} ]]; then
    [[ $(rcli save) == OK ]] || { echo "bench_hold_script: SAVE failed" >&2; exit 1; }
    cp "$WORK/dump.rdb" "$HOLD_BENCH_SAVE/dump.rdb"
    echo "saved the bench's data to $HOLD_BENCH_SAVE/dump.rdb (event hb, schedules r, b, q and k 1..$RUNS)"
    exit 0
fi

# place_hold as the service calls it: its function in the library.
REAL="FCALL $(bench_load_library "$BX")_place_hold"
# The references (scripts/lib/bench.sh): the minimal hold as a function and
# as a script, each the reference of the same kind of call; "before", the
# script as the service sent it then (see HOLD_BENCH_BEFORE).
bench_load_hold_references "$BEFORE"
MINI_F="FCALL $MINI_FN"
MINI_E="EVALSHA $MINI_SHA"
[[ -z $BEFORE ]] || OLD="EVALSHA $OLD_SHA"
real_keys() { bench_place_hold_keys "$E" "$1"; }

# One call first, by hand: it must place a hold.
# shellcheck disable=SC2046
ONE="$(rcli $REAL 13 $(real_keys r1) 1 1 u000000000001 count 1 1)"
[[ $ONE == *'"holds":[{"status":"ok"'* ]] || { echo "bench_hold_script: place_hold did not place a hold: $ONE" >&2; exit 1; }
echo "one call: $ONE"

usec() { rcli info commandstats | sed -n 's/^cmdstat_\(fcall\|evalsha\):.*usec_per_call=\([0-9.]*\).*/\2/p'; }
cpu() { rcli info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user)_main_thread:/ {s += $2} END {printf "%.6f", s}'; }
# The minimal script runs MINI_CALLS calls (5× as many): Redis' CPU time
# counts in 10 ms ticks, and 40,000 calls of a 5 µs script are 0.2 s.
MINI_CALLS=$((CALLS * 5))
bench() { # CALLS ARGS... -> "rps usec_per_call cpu_usec_per_call"
    local n=$1 rps c0 c1
    shift
    rcli config resetstat >/dev/null
    c0="$(cpu)"
    rps="$(timeout 300 redis-benchmark -u "$R" -c "$CLIENTS" -P 16 -n "$n" -r "$USERS" --csv "$@" 2>/dev/null | tail -n 1 | cut -d, -f2 | tr -d '"')"
    c1="$(cpu)"
    echo "$rps $(usec) $(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN {printf "%.2f", (b - a) / n * 1e6}')"
}
# In front of each call's hold, the number of holds and the hold's schedule
# number: place_hold takes a batch over the event's schedules
# (both 1 here); the script of 4b85a63 took one hold, keys in its order.
real_run() { # "FCALL fn"|"EVALSHA sha" SCHEDULE now|before -> "rps usec cpu", after checking every call placed a hold
    local held0 held out
    held0="$(rcli hget "$E:s:$2:cfg" held)"
    # shellcheck disable=SC2046,SC2086
    if [[ $3 == now ]]; then
        out="$(bench "$CALLS" $1 13 $(real_keys "$2") 1 1 u__rand_int__ count 1 1)"
    else
        out="$(bench "$CALLS" $1 13 $(bench_place_hold_keys_before "$E" "$2") u__rand_int__ count 1 1)"
    fi
    held="$(rcli hget "$E:s:$2:cfg" held)"
    [[ $((held - ${held0:-0})) -eq $CALLS ]] ||
        { echo "bench_hold_script: schedule $2 got $((held - ${held0:-0})) holds for $CALLS calls" >&2; return 1; }
    echo "$out"
}
# BATCH holds a call, each of a random user: -> "holds/s usec_per_hold cpu_usec_per_hold".
BATCH_ARGS=""
for ((j = 0; j < BATCH; j++)); do BATCH_ARGS+=" 1 u__rand_int__ count 1 1"; done
batch_run() { # SCHEDULE
    local held0 held out
    held0="$(rcli hget "$E:s:$1:cfg" held)"
    # shellcheck disable=SC2046,SC2086
    out="$(bench "$BATCH_CALLS" $REAL 13 $(real_keys "$1") "$BATCH" $BATCH_ARGS)"
    held="$(rcli hget "$E:s:$1:cfg" held)"
    [[ $((held - ${held0:-0})) -eq $((BATCH_CALLS * BATCH)) ]] ||
        { echo "bench_hold_script: schedule $1 got $((held - ${held0:-0})) holds for $((BATCH_CALLS * BATCH))" >&2; return 1; }
    echo "$out" | awk -v b="$BATCH" '{printf "%.0f %.2f %.2f\n", $1 * b, $2 / b, $3 / b}'
}
echo "redis-benchmark -u redis://127.0.0.1:PORT -c $CLIENTS -P 16 -n $CALLS -r $USERS --csv $REAL 13 <keys of schedule rI> 1 1 u__rand_int__ count 1 1"
echo "redis-benchmark -u redis://127.0.0.1:PORT -c $CLIENTS -P 16 -n $BATCH_CALLS -r $USERS --csv $REAL 13 <keys of schedule qI> $BATCH$BATCH_ARGS"
echo "redis-benchmark -u redis://127.0.0.1:PORT -c $CLIENTS -P 16 -n $MINI_CALLS -r $USERS --csv $MINI_F 2 <seats key fI> <seq key> u__rand_int__"
echo "redis-benchmark -u redis://127.0.0.1:PORT -c $CLIENTS -P 16 -n $MINI_CALLS -r $USERS --csv $MINI_E 2 <seats key mI> <seq key> u__rand_int__"
: >"$WORK/real" && : >"$WORK/mini" && : >"$WORK/mini_f" && : >"$WORK/batch"
show() { printf '%s %8.0f/s %6.2f us/call %6.2f us cpu/call' "$1" "$2" "$3" "$4"; }
: >"$WORK/before"
for ((i = 1; i <= RUNS; i++)); do
    line="run $i:"
    if [[ -n $BEFORE ]]; then
        real_run "$OLD" "b$i" before >>"$WORK/before"
        line+=" $(show before $(tail -n 1 "$WORK/before")) |"
    fi
    real_run "$REAL" "r$i" now >>"$WORK/real"
    rcli info commandstats | tr -d '\r' | grep '^cmdstat_' >"$WORK/stats.real"
    batch_run "q$i" >>"$WORK/batch"
    # shellcheck disable=SC2086
    bench "$MINI_CALLS" $MINI_F 2 "$E:f$i:seats" "$E:f:seq" u__rand_int__ >>"$WORK/mini_f"
    # shellcheck disable=SC2086
    bench "$MINI_CALLS" $MINI_E 2 "$E:m$i:seats" "$E:m:seq" u__rand_int__ >>"$WORK/mini"
    # shellcheck disable=SC2046
    echo "$line $(show place_hold $(tail -n 1 "$WORK/real")) | $(show "place_hold, $BATCH a call, per hold:" $(tail -n 1 "$WORK/batch")) | $(show minimal_fcall $(tail -n 1 "$WORK/mini_f")) | $(show minimal_evalsha $(tail -n 1 "$WORK/mini"))"
done
median() { # FILE COLUMN
    sort -g -k"$2","$2" "$1" | awk -v c="$2" '{v[NR] = $c} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
figures() { # NAME FILE MINI-FILE -> key=value lines: medians and ratios to the minimal script
    awk -v name="$1" -v r="$(median "$2" 1)" -v u="$(median "$2" 2)" -v c="$(median "$2" 3)" \
        -v mr="$(median "$3" 1)" -v mu="$(median "$3" 2)" -v mc="$(median "$3" 3)" 'BEGIN {
      printf "%s_per_s=%.0f\n%s_usec_per_call=%.2f\n%s_cpu_usec_per_call=%.2f\n", name, r, name, u, name, c
      printf "%s_ratio_usec=%.2f\n%s_ratio_cpu=%.2f\n%s_ratio_rate=%.2f\n", name, u / mu, name, c / mc, name, mr / r }'
}
RESULT="runs=$RUNS
calls_per_run=$CALLS
minimal_calls_per_run=$MINI_CALLS
$(figures place_hold "$WORK/real" "$WORK/mini_f")
batch=$BATCH
$(figures place_hold_batch "$WORK/batch" "$WORK/mini_f")"
[[ -z $BEFORE ]] || RESULT+="
$(figures before "$WORK/before" "$WORK/mini")"
minimal_figures() { # NAME FILE -> key=value lines: medians
    awk -v n="$1" -v r="$(median "$2" 1)" -v u="$(median "$2" 2)" -v c="$(median "$2" 3)" 'BEGIN {
      printf "%s_per_s=%.0f\n%s_usec_per_call=%.2f\n%s_cpu_usec_per_call=%.2f", n, r, n, u, n, c }'
}
RESULT+="
$(minimal_figures minimal_fcall "$WORK/mini_f")
$(minimal_figures minimal "$WORK/mini")"
echo "Redis commands of the last place_hold run (calls, usec_per_call):"
sed 's/^cmdstat_\([a-z|]*\):calls=\([0-9]*\),usec=[0-9]*,usec_per_call=\([0-9.]*\).*/  \1 \2 \3/' "$WORK/stats.real" | sort -k2,2nr
echo "medians of $RUNS runs:"
echo "$RESULT"
[[ -z $OUTFILE ]] || echo "$RESULT" >"$OUTFILE"
