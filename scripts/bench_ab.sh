#!/usr/bin/env bash
# Two revisions of the service measured in one run, turn about, against
# one ceiling: did a change make an endpoint slower?
#
#   scripts/bench_ab.sh REV_A [REV_B]      (REV_B: the working tree)
#
# Figures from two `make bench` runs on different days or machines are not
# comparable (the ceiling itself moved from 19,645/s to 30,228/s between
# two machines); this script is the comparison that is. It
#
# 1. builds the release binaries of both revisions (a named revision from
#    a detached worktree under target/, in a target directory of its own,
#    target/ab-A or target/ab-B, kept between runs; the working tree in
#    target/; each side uses its own load test, so each is driven as it
#    expects), and says so when both sides' services are the same binary;
# 2. starts both services side by side, each with its own database and
#    Redis key prefix, and the working tree's `ceiling` server;
# 3. runs AB_ROUNDS rounds (3) of: the ceiling, then each scenario of
#    AB_SCENARIOS ("status join holds payment"), A then B in odd rounds and
#    B then A in even ones, AB_USERS users (64) for AB_SECONDS (15) each;
# 4. prints per scenario and round B's rate over A's, each side's rate over
#    the ceiling of its round, and each side's service and Redis CPU time
#    per request (from /proc, so it does not depend on who else was busy),
#    and the medians, into loadtest/reports/ab-<ts>/ab.md.
#
# Only 127.0.0.1 is targeted; every step is bounded in time; it stops what
# it started, drops its databases and deletes its Redis keys. Never FLUSHes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

[[ $# -ge 1 ]] || { echo "usage: scripts/bench_ab.sh REV_A [REV_B]" >&2; exit 2; }
REV_A="$(git rev-parse --short "$1^{commit}")"
REV_B="$([[ -n ${2:-} ]] && git rev-parse --short "$2^{commit}" || echo "worktree")"
ROUNDS="${AB_ROUNDS:-3}"
SECS="${AB_SECONDS:-15}"
USERS="${AB_USERS:-64}"
read -r -a SCENARIOS <<<"${AB_SCENARIOS:-status join holds payment}"
bench_local_only
TS="$(date +%s)"
OUT="$ROOT/loadtest/reports/ab-$TS"
SERVICE_KEY="ab-key"
TOKEN_SECRET="ab-token-secret-$TS"
mkdir -p "$OUT"

PIDS=()
DBS=()
WORKTREES=()
cleanup() {
    local rc=$? pid db wt n
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do bench_stop "$pid"; done
    n="$(bench_unlink_prefix "ab-$TS-")"
    for db in "${DBS[@]}"; do bench_drop_db "$db"; done
    for wt in "${WORKTREES[@]}"; do git worktree remove --force "$wt" 2>/dev/null || true; done
    bench_say "cleaned up: stopped ${#PIDS[@]} processes, deleted $n Redis keys, dropped ${#DBS[@]} databases"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ build
build() { # SIDE REV-OR-worktree
    local side=$1 rev=$2 src="$ROOT" target="$ROOT/target"
    mkdir -p "$OUT/$side"
    if [[ $rev != worktree ]]; then
        src="$ROOT/target/ab-src-$rev"
        # A target directory of its own per side: cargo names a workspace
        # member's build by package, not by path, and decides it is up to
        # date by comparing the sources' times with the last build's. In
        # one shared directory, a working tree edited before REV_A's build
        # was "up to date" with REV_A's binary, and both sides ran REV_A.
        target="$ROOT/target/ab-$side"
        git worktree remove --force "$src" 2>/dev/null || true
        git worktree add --detach "$src" "$rev" >/dev/null
        WORKTREES+=("$src")
    fi
    bench_say "building $side ($rev) in ${src#"$ROOT"/} (target ${target#"$ROOT"/})"
    (cd "$src" && CARGO_TARGET_DIR="$target" cargo build --release -p boxoffice -p loadtest)
    cp "$target"/release/{boxoffice,loadtest,ceiling} "$OUT/$side/"
}
build A "$REV_A"
build B "$REV_B"
cmp -s "$OUT/A/boxoffice" "$OUT/B/boxoffice" &&
    bench_say "warning: A and B are the same service binary: any difference below is noise"
bench_wait_quiet

# ------------------------------------------------------------- services
ulimit -n 65536 2>/dev/null || true
port_of() { [[ $1 == A ]] && echo "${AB_PORT_A:-18090}" || echo "${AB_PORT_B:-18091}"; }
CPORT="${AB_CEILING_PORT:-18092}"
for side in A B; do
    db="bx_ab_${TS}_$side"
    bench_port_free "$(port_of "$side")" || { echo "bench_ab: port $(port_of "$side") in use" >&2; exit 1; }
    psql -X -q -v ON_ERROR_STOP=1 "$(bench_admin_url)" -c "create database \"$db\""
    DBS+=("$db")
    env BOXOFFICE_ADDR="127.0.0.1:$(port_of "$side")" DATABASE_URL="$(bench_db_url "$db")" REDIS_URL="$REDIS_URL" \
        BOXOFFICE_REDIS_PREFIX="ab-$TS-$side:" BOXOFFICE_RATE_PER_IP=0 BOXOFFICE_RATE_PER_TOKEN=0 RUST_LOG=warn \
        BOXOFFICE_SERVICE_KEY="$SERVICE_KEY" BOXOFFICE_TOKEN_SECRET="$TOKEN_SECRET" \
        "$OUT/$side/boxoffice" serve >"$OUT/$side/service.log" 2>&1 &
    PIDS+=($!)
done
CEILING_ADDR="127.0.0.1:$CPORT" REDIS_URL="$REDIS_URL" BOXOFFICE_REDIS_PREFIX="ab-$TS-ceiling:" "$OUT/B/ceiling" >"$OUT/ceiling.log" 2>&1 &
PIDS+=($!)
for side in A B; do
    bench_wait_http "http://127.0.0.1:$(port_of "$side")/readyz" 60 ||
        { tail -n 20 "$OUT/$side/service.log" >&2; echo "bench_ab: service $side not ready" >&2; exit 1; }
done
bench_wait_http "http://127.0.0.1:$CPORT/ceiling" 20 || { echo "bench_ab: ceiling not ready" >&2; exit 1; }

# ----------------------------------------------------------------- rounds
# CPU seconds (user + system) a process has used so far.
HZ="$(getconf CLK_TCK)"
cpu_of() { awk -v t="$(bench_cpu_ticks "$1")" -v hz="$HZ" 'BEGIN { printf "%.2f\n", t / hz }'; }
REDIS_PID="$(redis-cli -u "$REDIS_URL" info server | sed -n 's/^process_id:\([0-9]*\).*/\1/p')"
run() { # ROUND SIDE SCENARIO HOST SERVICE-PID
    local dir="$OUT/round$1/$2" svc0 red0
    mkdir -p "$dir"
    bench_say "round $1: $3 on $2"
    svc0="$(cpu_of "$5")"
    red0="$(cpu_of "$REDIS_PID" 2>/dev/null || echo 0)"
    LOADTEST_REPORT_DIR="$dir" BOXOFFICE_SERVICE_KEY="$SERVICE_KEY" BOXOFFICE_TOKEN_SECRET="$TOKEN_SECRET" \
        REDIS_URL="$REDIS_URL" BOXOFFICE_REDIS_PREFIX="ab-$TS-$2:" \
        timeout 300 "$OUT/$2/loadtest" "$3" --host "$4" -u "$USERS" -r "$USERS" -t "${SECS}s" >"$dir/$3.log" 2>&1 ||
        { tail -n 20 "$dir/$3.log" >&2; echo "bench_ab: $3 on $2 failed" >&2; exit 1; }
    # The whole run's CPU (set-up included), for the per-request cost.
    echo "$svc0 $(cpu_of "$5") $red0 $(cpu_of "$REDIS_PID" 2>/dev/null || echo 0)" >"$dir/$3.cpu"
}
for ((r = 1; r <= ROUNDS; r++)); do
    run "$r" B ceiling "http://127.0.0.1:$CPORT" "${PIDS[2]}"
    order=(A B)
    ((r % 2 == 0)) && order=(B A)
    for s in "${SCENARIOS[@]}"; do
        for side in "${order[@]}"; do
            run "$r" "$side" "$s" "http://127.0.0.1:$(port_of "$side")" "${PIDS[$([[ $side == A ]] && echo 0 || echo 1)]}"
        done
    done
done

# ----------------------------------------------------------------- report
python3 - "$OUT" "$REV_A" "$REV_B" "$ROUNDS" "${SCENARIOS[@]}" >"$OUT/ab.md" <<'PY'
import json, os, statistics, sys
out, rev_a, rev_b, rounds, scenarios = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
MAIN = {"status": "status", "join": "join", "holds": "hold", "payment": "pay", "hot-seat": "hold(hot)",
        "pay": "pay", "poll-storm": "status(waiting)"}

def rate(r, side, scenario, name):
    """(req/s, p99 ms, service CPU µs per request, Redis CPU µs per request) of one run."""
    try:
        with open(os.path.join(out, f"round{r}", side, f"{scenario}-summary.json")) as f:
            s = json.load(f)
        with open(os.path.join(out, f"round{r}", side, f"{scenario}.cpu")) as f:
            svc0, svc1, red0, red1 = map(float, f.read().split())
    except (OSError, ValueError):
        return None
    row = next((x for x in s["requests"] if x["name"] == name), None)
    n = s["total"]["count"] or 1
    return (row["rps"], row["p99_ms"], (svc1 - svc0) * 1e6 / n, (red1 - red0) * 1e6 / n) if row else None

print(f"# A/B: {rev_a} (A) vs {rev_b} (B), {rounds} rounds, turn about\n")
print("Per run: requests per second (and as a share of the ceiling of the round), p99, and CPU time per "
      "request (every request of the run, set-up included) of the service process and of Redis, from "
      "/proc/<pid>/stat: the CPU figures do not depend on who else was busy.\n")
print("| scenario | round | ceiling/s | A req/s (of ceiling) | B req/s (of ceiling) | B / A | A p99 ms | B p99 ms "
      "| A service µs/req | B service µs/req | A Redis µs/req | B Redis µs/req |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
medians = []
for s in scenarios:
    ratios, cpu = [], []
    for r in range(1, rounds + 1):
        c = rate(r, "B", "ceiling", "ceiling")
        a, b = rate(r, "A", s, MAIN[s]), rate(r, "B", s, MAIN[s])
        if not (c and a and b):
            print(f"| {s} | {r} |" + " – |" * 10)
            continue
        ratios.append(b[0] / a[0])
        cpu.append(b[2] / a[2])
        print(f"| {s} | {r} | {c[0]:,.0f} | {a[0]:,.0f} ({a[0] / c[0]:.0%}) | {b[0]:,.0f} ({b[0] / c[0]:.0%}) "
              f"| {b[0] / a[0]:.3f} | {a[1]:.2f} | {b[1]:.2f} | {a[2]:.1f} | {b[2]:.1f} | {a[3]:.1f} | {b[3]:.1f} |")
    if ratios:
        medians.append((s, statistics.median(ratios), min(ratios), max(ratios), statistics.median(cpu), min(cpu), max(cpu)))
print("\n| scenario | B / A req/s, median (spread) | B / A service CPU per request, median (spread) |")
print("|---|---|---|")
for s, m, lo, hi, cm, clo, chi in medians:
    print(f"| {s} | {m:.3f} ({lo:.3f} – {hi:.3f}) | {cm:.3f} ({clo:.3f} – {chi:.3f}) |")
PY
cat "$OUT/ab.md"
