#!/usr/bin/env bash
# Capacity at SLO: the highest buyer arrival rate at which every request
# type of the flash sale (join, status, schedules, seat map, hold, charge,
# pay) keeps its client p99 under CAPACITY_SLO_MS (50) on this machine.
#
# Called by scripts/bench.sh against its running service (HOST). Each trial
# is one flash sale of CAPACITY_TRIAL_SECONDS (8) of arrivals at RATE
# buyers per second (Goose's hatch rate, one buyer per Goose user, one
# connection each), with seats for every buyer, admission open wider than
# the arrivals (so the queue never holds anyone back: what is measured is
# the shop, not the waiting room's rate) and no pre-queue. The search
# doubles the rate from CAPACITY_START (100) until a trial misses, then
# bisects CAPACITY_BISECT (3) times between the last pass and the first
# miss; at most CAPACITY_MAX_TRIALS (10) trials and CAPACITY_MAX (12800)
# buyers per second. A trial whose buyers are not all done within four
# times its arrival window (plus 10 s) is stopped and counts as a miss, so
# the search stays under 3 minutes.
#
# Inputs: HOST, LT (the loadtest binary), OUT (results: capacity.json and
# one directory per trial), and the service's BOXOFFICE_SERVICE_KEY in the
# environment.
set -euo pipefail

: "${HOST:?}" "${LT:?}" "${OUT:?}"
SLO_MS="${CAPACITY_SLO_MS:-50}"
TRIAL_S="${CAPACITY_TRIAL_SECONDS:-8}"
START="${CAPACITY_START:-100}"
BISECT="${CAPACITY_BISECT:-3}"
MAX_TRIALS="${CAPACITY_MAX_TRIALS:-10}"
MAX_RATE="${CAPACITY_MAX:-12800}"
mkdir -p "$OUT"

# trial RATE: runs one flash sale; prints "pass|miss WORST_NAME WORST_P99".
trial() {
    local rate=$1 buyers dir
    buyers=$((rate * TRIAL_S))
    dir="$OUT/rate-$rate"
    mkdir -p "$dir"
    LOADTEST_REPORT_DIR="$dir" LOADTEST_SEATS=$((buyers * 2)) LOADTEST_PREQUEUE_SECONDS=0 \
        LOADTEST_ADMIT_PER_SECOND=$((rate * 4)) LOADTEST_MAX_ACTIVE=$((buyers + 100)) \
        timeout $((TRIAL_S * 4 + 10)) "$LT" flash-sale --host "$HOST" -u "$buyers" -r "$rate" >"$dir/flash-sale.log" 2>&1 ||
        { echo "miss unfinished_or_failed 0"; return; }
    python3 - "$dir/flash-sale-summary.json" "$SLO_MS" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
slo = float(sys.argv[2])
rows = [r for r in s["requests"] if r["count"] > 0]
worst = max(rows, key=lambda r: r["p99_ms"])
failed = sum(r["fail"] for r in rows)
ok = worst["p99_ms"] < slo and failed == 0
print("pass" if ok else "miss", worst["name"].replace(" ", "_"), worst["p99_ms"])
PY
}

declare -a TRIALS=()
n=0
pass=0
miss=0
rate=$START
while ((n < MAX_TRIALS)); do
    read -r verdict name p99 < <(trial "$rate")
    n=$((n + 1))
    TRIALS+=("$rate $verdict $name $p99")
    echo "capacity: $rate buyers/s: $verdict (worst p99: $name $p99 ms)"
    if [[ $verdict == pass ]]; then pass=$rate; else miss=$rate; fi
    if ((miss == 0)); then
        ((rate * 2 <= MAX_RATE)) || break
        rate=$((rate * 2))
    else
        ((BISECT-- > 0)) || break
        ((miss - pass > START / 4)) || break
        rate=$(((pass + miss) / 2))
    fi
done

python3 - "$OUT/capacity.json" "$pass" "$miss" "$SLO_MS" "$TRIAL_S" "${TRIALS[@]}" <<'PY'
import json, sys
path, best, first_miss, slo, trial_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
trials = []
for t in sys.argv[6:]:
    rate, verdict, name, p99 = t.split()
    trials.append({"rate": int(rate), "verdict": verdict, "worst": name, "worst_p99_ms": float(p99)})
json.dump({"capacity_per_second": best, "first_miss_per_second": first_miss or None, "slo_ms": slo,
           "trial_seconds": trial_s, "trials": trials}, open(path, "w"), indent=1)
PY
echo "capacity at SLO: $pass buyers/s (p99 < $SLO_MS ms for every request type; first miss at ${miss:-none})"
