# Shared pieces of the bench scripts (sourced, not run): log lines, local-only
# guards, waiting for ports and load, and the clean-up of what a run made.
# REDIS_URL and DATABASE_URL default to this machine's servers (those
# scripts/deps.sh finds or starts); a caller may set either first.
: "${REDIS_URL:=redis://127.0.0.1:6379}"
: "${DATABASE_URL:=postgres://postgres@127.0.0.1:5432/boxoffice}"

# bench_say MESSAGE: a log line with the seconds since the run began.
BENCH_T0="${BENCH_T0:-$(date +%s)}"
bench_say() { printf '[%s %4ds] %s\n' "$(basename "$0" .sh)" "$(($(date +%s) - BENCH_T0))" "$*"; }

# bench_require TOOL...: exit 1 naming the first tool not on PATH.
bench_require() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$(basename "$0" .sh): $tool is missing" >&2; exit 1; }
    done
}

# Refuse to run against anything but this machine.
bench_local_only() {
    case "$REDIS_URL" in
        redis://127.0.0.1* | redis://localhost* | redis://\[::1\]*) ;;
        *) echo "$0: REDIS_URL must point at this machine (127.0.0.1), got $REDIS_URL" >&2; exit 2 ;;
    esac
    case "$DATABASE_URL" in
        postgres*://*@127.0.0.1* | postgres*://*@localhost* | postgres*://127.0.0.1* | postgres*://localhost*) ;;
        *) echo "$0: DATABASE_URL must point at this machine (127.0.0.1)" >&2; exit 2 ;;
    esac
}

# The server of DATABASE_URL with another database name.
bench_pg_base() { local b="${DATABASE_URL%%\?*}"; echo "${b%/*}"; }
bench_admin_url() { echo "$(bench_pg_base)/postgres"; }
bench_db_url() { echo "$(bench_pg_base)/$1"; }

# bench_cpu_ticks PID...: CPU time (user + system) the processes have used
# so far, in clock ticks (getconf CLK_TCK a second), from /proc/<pid>/stat.
bench_cpu_ticks() {
    local t=0 p
    for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    echo "$t"
}

bench_port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# bench_wait_http URL SECONDS: until URL answers 2xx, or fail.
bench_wait_http() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# Let a build's load drain first (the one-minute load average below 1.5, for
# at most 60 s): a run started on the compiler's heels measured its first
# scenarios on a machine still busy.
bench_wait_quiet() {
    local _
    for _ in $(seq 60); do
        awk '{exit !($1 < 1.5)}' /proc/loadavg && return 0
        sleep 1
    done
}

# bench_stop PID: TERM, up to 5 s, then KILL.
bench_stop() {
    local pid=$1 _
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true # a paused process acts on TERM once resumed
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# bench_unlink_prefix PREFIX: delete the keys under PREFIX (SCAN + UNLINK,
# never FLUSH); prints how many.
bench_unlink_prefix() {
    local keys n
    keys="$(mktemp)"
    n="$(redis-cli -u "$REDIS_URL" --scan --pattern "$1*" 2>/dev/null | tee "$keys" | wc -l)" || n=0
    if [[ $n -gt 0 ]]; then
        xargs -r -d '\n' -n 500 redis-cli -u "$REDIS_URL" unlink <"$keys" >/dev/null || true
    fi
    rm -f "$keys"
    echo "$n"
}

bench_drop_db() {
    psql -X -q "$(bench_admin_url)" -c "drop database if exists \"$1\" with (force)" >/dev/null 2>&1 ||
        echo "$0: could not drop database $1" >&2
}

# bench_free_port FROM: the first free port from FROM on (200 tried).
bench_free_port() {
    local p
    for ((p = $1; p < $1 + 200; p++)); do bench_port_free "$p" && { echo "$p"; return 0; }; done
    return 1
}

# bench_private_redis PORT LOGFILE [redis-server args...]: a redis-server of
# the run's own on 127.0.0.1:PORT (never the shared one), keeping nothing
# on disk, answering PING before it returns; its pid in BENCH_REDIS_PID
# (for bench_stop). BENCH_REDIS_WRAP, an array, runs it under a command
# (e.g. `chrt -f 10` for a real-time scheduling class).
bench_private_redis() {
    local port=$1 log=$2 _
    shift 2
    local wrap=("${BENCH_REDIS_WRAP[@]+"${BENCH_REDIS_WRAP[@]}"}")
    "${wrap[@]}" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no "$@" >"$log" 2>&1 &
    BENCH_REDIS_PID=$!
    for _ in $(seq 50); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "$0: redis-server on port $port did not answer (log: $log)" >&2
    return 1
}

# ----------------------------------------------- place_hold from the outside
# For the scripts that call place_hold straight on Redis (redis-benchmark,
# callgrind): bench.sh, bench_hold_script.sh, bench_hold_callgrind.sh. The
# helpers that talk to Redis use the caller's `rcli` (redis-cli with its
# server's address).

# bench_place_hold_keys EVENT_BASE SCHEDULE: place_hold's 13 KEYS for
# holds on one schedule, in EventKeys order (src/store/keys.rs): the
# event's hold sequence, the buyer keys (adm, wait, adm_entry, poll), the
# ready mark, then the schedule's 7 (the schedule numbered 1 in each
# hold's arguments: "1 USER count 1 ENTRY").
# EVENT_BASE is the event's key prefix, e.g. "hb:{ev:hb}".
bench_place_hold_keys() {
    local e=$1 s="$1:s:$2"
    echo "$e:hold:seq $e:q:adm $e:q:wait $e:q:adm:entry $e:q:poll $e:ready $s:cfg $s:seats $s:map $s:holds $s:dl $s:uheld $s:ubought"
}
# bench_place_hold_keys_before EVENT_BASE SCHEDULE: the same 13 keys in
# the order place_hold took them as of issue 17's starting point (the
# "before" reference, one hold a call: "USER count 1 ENTRY"): the
# schedule's 7, the hold sequence, the buyer keys, the ready mark.
bench_place_hold_keys_before() {
    local e=$1 s="$1:s:$2"
    echo "$s:cfg $s:seats $s:map $s:holds $s:dl $s:uheld $s:ubought $e:hold:seq $e:q:adm $e:q:wait $e:q:adm:entry $e:q:poll $e:ready"
}

# bench_admit_users EVENT_BASE N: admits every user id redis-benchmark's
# u__rand_int__ can produce (u + 12 digits, below N), all with queue entry
# 1 (the last argument of each hold in a place_hold call) and a far deadline.
bench_admit_users() {
    rcli eval "for i = 0, tonumber(ARGV[1]) - 1 do
  local u = string.format('u%012d', i)
  redis.call('ZADD', KEYS[1], 9999999999999, u)
  redis.call('HSET', KEYS[2], u, 1)
end" 2 "$1:q:adm" "$1:q:adm:entry" "$2" >/dev/null
}

# bench_load_library BOXOFFICE: FUNCTION LOADs the service's script library
# (`boxoffice lua-library`); prints its name (functions are <name>_<script>).
bench_load_library() {
    "$1" lua-library | rcli -x function load replace
}

# bench_load_hold_references [BEFORE]: the references place_hold is
# measured against, loaded; sets MINI_FN (the minimal hold as a function),
# MINI_SHA (the same as an EVALSHA script) and, with BEFORE (a lua/ tree,
# e.g. `git archive 4b85a63 lua`), OLD_SHA: place_hold as the EVALSHA
# script the service sent then (lib/ in front, as it did). The minimal hold
# is the least a hold can do: a hold number, and one seat taken with it
# (seat = the number, so every call writes).
bench_load_hold_references() {
    local body="local n = redis.call('INCR', KEYS[2])
redis.call('HSETNX', KEYS[1], n, 'h:' .. n)
return n"
    MINI_FN="$(printf '#!lua name=bx_minimal\nredis.register_function(\x27bx_minimal_hold\x27, function(KEYS)\n%s\nend)\n' "$body" | rcli -x function load replace)_hold"
    MINI_SHA="$(rcli script load "$body")"
    OLD_SHA=""
    [[ -z ${1:-} ]] ||
        OLD_SHA="$({ cat "$1/lib/queue.lua"; printf '\n'; cat "$1/lib/schedule.lua"; printf '\n'; cat "$1/place_hold.lua"; } | rcli -x script load)"
}

# A private redis-server (bench_private_redis) under `valgrind
# --tool=callgrind --instr-atstart=no`, for counting instructions:
#   CG_WORK="$(mktemp -d)"; trap bench_callgrind_cleanup EXIT
#   bench_callgrind_redis FIRST_PORT [redis-server args...]
# sets CG_PORT and CG_PID; its dumps and log go to CG_WORK. Under valgrind
# it may take longer to answer than bench_private_redis waits: the caller
# waits for what it needs (a PING, the data loaded).
bench_callgrind_redis() {
    local first=$1
    shift
    CG_PORT="$(bench_free_port "$first")"
    BENCH_REDIS_WRAP=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$CG_WORK/cg.%p")
    bench_private_redis "$CG_PORT" "$CG_WORK/redis.log" --dir "$CG_WORK" "$@" || true
    CG_PID=$BENCH_REDIS_PID
}

# The exit trap of a script that used bench_callgrind_redis.
bench_callgrind_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -z ${CG_PID:-} ]] || kill -9 "$CG_PID" 2>/dev/null || true
    rm -rf "$CG_WORK"
    exit "$rc"
}

# bench_callgrind_count N LABEL [redis-benchmark options] COMMAND...: N
# calls (redis-benchmark -c 1 -P 16) to warm up, then N with callgrind's
# instrumentation on; prints LABEL and the whole server's instructions per
# call (network and protocol included).
bench_callgrind_count() {
    local n=$1 label=$2 f
    shift 2
    redis-benchmark -p "$CG_PORT" -c 1 -P 16 -n "$n" "$@" >/dev/null 2>&1
    callgrind_control -i on "$CG_PID" >/dev/null 2>&1
    redis-benchmark -p "$CG_PORT" -c 1 -P 16 -n "$n" "$@" >/dev/null 2>&1
    callgrind_control -i off "$CG_PID" >/dev/null 2>&1
    callgrind_control -d "$CG_PID" >/dev/null 2>&1
    sleep 0.5
    f="$(ls -t "$CG_WORK"/cg.* | head -n 1)"
    printf '%-46s %8d instructions per call\n' "$label" "$(($(awk '/^totals:/ {print $2; exit}' "$f") / n))"
    rm -f "$CG_WORK"/cg.*
}
