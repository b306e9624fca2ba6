# Shared pieces of the bench scripts (sourced, not run): log lines, local-only
# guards, waiting for ports and load, and the clean-up of what a run made.
# Expects REDIS_URL and DATABASE_URL to be set by the caller.

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
