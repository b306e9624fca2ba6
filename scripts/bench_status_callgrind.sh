#!/usr/bin/env bash
# queue_status's Redis instructions per call, counted by callgrind (exact:
# the machine's load does not move them), for one or more builds of the
# service side by side. Slow (valgrind), not part of `make bench`.
#
#   scripts/bench_status_callgrind.sh BOXOFFICE_BIN [BOXOFFICE_BIN...]
#
# A private redis-server under `valgrind --tool=callgrind
# --instr-atstart=no` holds one paused event's queue: 100,000 waiting users
# and 9 admitted ones; each binary's function library (`boxoffice
# lua-library`, named by its content, so builds of different code load
# side by side) is loaded. Per library, one call answers 9 polls, as the
# service coalesces them under load (`boxoffice_script_batch`): 9 waiting
# users in the middle of the line, then 9 admitted users. STATUS_CG_CALLS
# (2,000) calls to warm up, then as many measured; the whole server's
# instructions per call (network and protocol included), two rounds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
[[ $# -ge 1 ]] || { echo "usage: scripts/bench_status_callgrind.sh BOXOFFICE_BIN [BOXOFFICE_BIN...]" >&2; exit 2; }
bench_require valgrind callgrind_control redis-server redis-cli redis-benchmark
N="${STATUS_CG_CALLS:-2000}"

CG_WORK="$(mktemp -d)"
trap bench_callgrind_cleanup EXIT
trap 'exit 130' INT TERM

bench_callgrind_redis 16700
rcli() { redis-cli -p "$CG_PORT" "$@"; }
for i in $(seq 100); do
    rcli ping >/dev/null 2>&1 && break
    [[ $i -eq 100 ]] && { tail -n 20 "$CG_WORK/redis.log" >&2; echo "bench_status_callgrind: redis-server did not start" >&2; exit 1; }
    sleep 0.3
done

LIBS=()
for bin in "$@"; do LIBS+=("$(bench_load_library "$bin" | tr -d '\r')"); done

# The queue as join_queue.lua and admit_tick.lua leave it (the key names
# of src/store/keys.rs): waiting users scored by entry, admitted users
# with their deadline and entry, every last poll now; an idle timeout
# nobody reaches, so every call answers and none evicts.
E="scg:{ev:1}"
rcli hset "$E:cfg" admit_per_second 100 idle_timeout_ms 900000000 paused 1 >/dev/null
rcli eval "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000
for n = 1, 100000 do
  local u = 'w' .. string.format('%012d', n)
  redis.call('ZADD', KEYS[1], n, u); redis.call('HSET', KEYS[2], u, now)
end
for n = 1, 9 do
  local u = 'a' .. n
  redis.call('ZADD', KEYS[3], now + 900000000, u); redis.call('HSET', KEYS[4], u, 900000 + n)
  redis.call('HSET', KEYS[2], u, now)
end
return 1" 4 "$E:q:wait" "$E:q:poll" "$E:q:adm" "$E:q:adm:entry" >/dev/null
KEYS=("$E:cfg" "$E:q:seq" "$E:q:wait" "$E:q:poll" "$E:q:adm" "$E:q:adm:entry" "$E:q:win" "$E:q:stats" "$E:q:pre:entry" "$E:q:draw")
WAITING=() ADMITTED=()
for n in 1 2 3 4 5 6 7 8 9; do
    WAITING+=("w$(printf %012d $((50000 + n)))" $((50000 + n)))
    ADMITTED+=("a$n" $((900000 + n)))
done

# Every answer is what it should be before anything is counted.
for lib in "${LIBS[@]}"; do
    [[ $(rcli fcall "${lib}_queue_status" 10 "${KEYS[@]}" "${WAITING[@]}" | grep -o '"s":"waiting"' | wc -l) -eq 9 ]] ||
        { echo "bench_status_callgrind: $lib does not answer 9 waiting" >&2; exit 1; }
    [[ $(rcli fcall "${lib}_queue_status" 10 "${KEYS[@]}" "${ADMITTED[@]}" | grep -o '"s":"admitted"' | wc -l) -eq 9 ]] ||
        { echo "bench_status_callgrind: $lib does not answer 9 admitted" >&2; exit 1; }
done

echo "$N calls per variant after $N to warm up; instructions of the whole server per call of 9 polls"
for round in 1 2; do
    for i in "${!LIBS[@]}"; do
        lib=${LIBS[$i]}
        bench_callgrind_count "$N" "${lib} ($((i + 1))), 9 waiting" FCALL "${lib}_queue_status" 10 "${KEYS[@]}" "${WAITING[@]}"
        bench_callgrind_count "$N" "${lib} ($((i + 1))), 9 admitted" FCALL "${lib}_queue_status" 10 "${KEYS[@]}" "${ADMITTED[@]}"
    done
done
