#!/usr/bin/env bash
# place_hold's Redis instructions per call next to the minimal hold
# script, counted by callgrind (exact: the machine's load does not move
# them), for docs/bench/place-hold-17.md. Slow (valgrind), not part of
# `make bench`.
#
# 1. scripts/bench_hold_script.sh with HOLD_BENCH_SAVE prepares the data
#    (the event through the service, 100,000 admitted users) and saves it;
# 2. a private redis-server under `valgrind --tool=callgrind
#    --instr-atstart=no` starts from it, loads the function library
#    (`boxoffice lua-library`), the minimal hold as a function and as a
#    script, and, with HOLD_BENCH_BEFORE (a lua/ tree, e.g. `git archive
#    4b85a63 lua`), place_hold as the EVALSHA script it was then;
# 3. per variant: N calls (redis-benchmark -c 1 -P 16) to warm up, then N
#    with instrumentation on; prints the whole server's instructions per
#    call (network and protocol included), two rounds. place_hold is
#    measured with one hold a call and with 8 (as the service coalesces
#    them under load; also per hold), and one hold a call with an
#    Idempotency-Key: a new key each call, and one key replayed.
#
# Inputs (optional): HOLD_BENCH_BEFORE, HOLD_CG_CALLS (2000), HOLD_BENCH_BIN,
# DATABASE_URL (as bench_hold_script.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
N="${HOLD_CG_CALLS:-2000}"
BEFORE="${HOLD_BENCH_BEFORE:-}"
bench_require valgrind callgrind_control redis-server redis-cli redis-benchmark
BX="${HOLD_BENCH_BIN:-$ROOT/target/release/boxoffice}"
[[ -x $BX ]] || BX="$ROOT/target/debug/boxoffice"

CG_WORK="$(mktemp -d)"
WORK=$CG_WORK
trap bench_callgrind_cleanup EXIT
trap 'exit 130' INT TERM

HOLD_BENCH_RUNS=2 HOLD_BENCH_SAVE="$WORK" HOLD_BENCH_BIN="$BX" scripts/bench_hold_script.sh >"$WORK/prepare.log" 2>&1 ||
    { tail -n 20 "$WORK/prepare.log" >&2; exit 1; }
bench_callgrind_redis 16600
PORT=$CG_PORT
rcli() { redis-cli -p "$PORT" "$@"; }
for i in $(seq 100); do
    [[ $(rcli dbsize 2>/dev/null || echo 0) -gt 0 ]] && break
    [[ $i -eq 100 ]] && { tail -n 20 "$WORK/redis.log" >&2; echo "bench_hold_callgrind: redis-server did not load the data" >&2; exit 1; }
    sleep 0.3
done

E="hb:{ev:hb}"
keys() { bench_place_hold_keys "$E" "$1"; }
NOW="$(bench_load_library "$BX")_place_hold"
bench_load_hold_references "$BEFORE"

measure() { # LABEL REDIS-BENCHMARK-COMMAND...
    local label=$1
    shift
    bench_callgrind_count "$N" "$label" -r 100000 "$@"
}
# The way the service sends holds under load (src/holds/coalesce.rs):
# BATCH of them a call, reported per hold.
BATCH=8
BATCH_ARGS=()
for ((j = 0; j < BATCH; j++)); do BATCH_ARGS+=(1 u__rand_int__ count 1 1); done
echo "$N calls per variant after $N to warm up; instructions of the whole server per call"
# shellcheck disable=SC2046 # the keys are words on purpose
for round in 1 2; do
    [[ -z $BEFORE ]] || measure "before (EVALSHA)" EVALSHA "$OLD_SHA" 13 $(bench_place_hold_keys_before "$E" "b$round") u__rand_int__ count 1 1
    measure "minimal (EVALSHA)" EVALSHA "$MINI_SHA" 2 "$E:m$round:seats" "$E:m:seq" u__rand_int__
    measure "place_hold now (FCALL)" FCALL "$NOW" 13 $(keys "r$round") 1 1 u__rand_int__ count 1 1
    measure "minimal (FCALL)" FCALL "$MINI_FN" 2 "$E:f$round:seats" "$E:f:seq" u__rand_int__
    measure "place_hold now, $BATCH a call" FCALL "$NOW" 13 $(keys "q$round") "$BATCH" "${BATCH_ARGS[@]}" |
        awk -v b="$BATCH" '{printf "%s (per hold: %d)\n", $0, $(NF - 3) / b}'
    # With an Idempotency-Key (docs/HOLDS.md): a new key each call (its GET
    # misses, the hold is made and the key written), then one key over
    # and over (after the first call, every call is a replay).
    measure "place_hold now, keyed" FCALL "$NOW" 14 $(keys "k$round") "$E:hk:u__rand_int__ k__rand_int__" 1 1 u__rand_int__ count 1 1 1 fp
    measure "place_hold now, replayed" FCALL "$NOW" 14 $(keys "k$round") "$E:hk:u1 replayed" 1 1 u000000099999 count 1 1 1 fp
    [[ $(rcli exists "$E:hk:u1 replayed") == 1 ]] ||
        { echo "bench_hold_callgrind: the replayed key was never written (its first hold was refused)" >&2; exit 1; }
done
