#!/usr/bin/env bash
# Redis's own time per script call during a load scenario: a private
# redis-server, the service and the scenario as scripts/profile_scenario.sh
# runs them (no perf), and Redis's SLOWLOG at 0 µs over a window of the
# steady state; prints, per script, the calls and their time (mean, p50,
# p99, max, total). Each figure is the wall time Redis spent inside the
# call, which on a saturated box includes waiting for a core.
#
#   scripts/slowlog_scenario.sh SCENARIO [SECONDS] [WINDOW]
#
# SECONDS: the scenario's length (16); WINDOW: seconds of SLOWLOG (4), 4 s
# after Goose starts. PROFILE_BIN / PROFILE_LOADTEST pick other binaries.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
[[ $# -ge 1 ]] || { echo "usage: scripts/slowlog_scenario.sh SCENARIO [SECONDS] [WINDOW]" >&2; exit 2; }
SCENARIO=$1 SECS=${2:-16} WINDOW=${3:-4}
bench_require redis-server redis-cli python3
WORK="$(mktemp -d)"
BENCH_REDIS_PID="" RUN_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -z $RUN_PID ]] || wait "$RUN_PID" 2>/dev/null || true
    bench_stop "$BENCH_REDIS_PID"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT="$(bench_free_port 16800)"
bench_private_redis "$PORT" "$WORK/redis.log"
rcli() { redis-cli -p "$PORT" "$@"; }
before="$(ls -d loadtest/reports/profile-* 2>/dev/null | sort | tail -n 1 || true)"
REDIS_URL="redis://127.0.0.1:$PORT" PROFILE_PERF=0 PROFILE_PORT="$(bench_free_port 18300)" \
    scripts/profile_scenario.sh "$SCENARIO" "$SECS" >"$WORK/profile.txt" 2>&1 &
RUN_PID=$!
OUT=""
for _ in $(seq 600); do
    OUT="$(ls -d loadtest/reports/profile-* 2>/dev/null | sort | tail -n 1 || true)"
    [[ -n $OUT && $OUT != "$before" ]] && grep -q "entering GooseAttack phase" "$OUT/loadtest.log" 2>/dev/null && break
    kill -0 "$RUN_PID" 2>/dev/null || { cat "$WORK/profile.txt" >&2; exit 1; }
    sleep 0.2
done
sleep 4
rcli config set slowlog-max-len 200000 >/dev/null
rcli slowlog reset >/dev/null
rcli config set slowlog-log-slower-than 0 >/dev/null
sleep "$WINDOW"
rcli config set slowlog-log-slower-than 10000 >/dev/null
rcli --no-raw slowlog get 200000 >"$WORK/slowlog.txt"
wait "$RUN_PID" || { tail -n 20 "$WORK/profile.txt" >&2; exit 1; }
RUN_PID=""
grep "steady window" "$WORK/profile.txt" || true
python3 - "$WORK/slowlog.txt" <<'PY'
import re, sys
from collections import defaultdict
# redis-cli --no-raw prints each entry as numbered fields; a call's
# arguments follow its duration (microseconds), the function name after
# "FCALL".
text = open(sys.argv[1], encoding="latin-1").read().split("\n")
calls = defaultdict(list)
for i, line in enumerate(text):
    m = re.match(r'\s*(?:\d+\)\s+)+"(FCALL|fcall)"$', line)
    if not m:
        continue
    dur = re.match(r'\s*\d+\)\s+\(integer\) (\d+)$', text[i - 1])
    name = re.match(r'\s*\d+\)\s+"(.*)"$', text[i + 1])
    if dur and name:
        calls[name.group(1).split("_", 2)[-1]].append(int(dur.group(1)))
print(f"{'script':20s} {'calls':>6s} {'mean µs':>8s} {'p50':>6s} {'p99':>6s} {'max':>6s} {'total ms':>9s}")
for fn, v in sorted(calls.items(), key=lambda kv: -sum(kv[1])):
    v.sort()
    print(f"{fn:20s} {len(v):6d} {sum(v) / len(v):8.0f} {v[len(v) // 2]:6d} "
          f"{v[min(len(v) - 1, int(len(v) * 0.99))]:6d} {v[-1]:6d} {sum(v) / 1e3:9.1f}")
PY
