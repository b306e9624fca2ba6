#!/usr/bin/env python3
"""The flash sale second by second, from scripts/surge_timeline.sh's run.

usage: surge_timeline.py RUN_DIR

Reads RUN_DIR/req.csv (Goose's request log: when each request started,
since the run's start, and its response time), RUN_DIR/t0 (when the run
started, Unix seconds) and RUN_DIR/cpu.log (about once a second: Unix
seconds and scripts/cpu_snapshot.py's JSON) and prints, per 2 s, each request
type's count / p50 / p99 (ms) and each component's CPU (% of one core),
then the share of admitted buyers' requests over 50 ms while buyers were
still arriving (until the last join started) and after.
"""

import csv
import json
import sys
from collections import defaultdict

BUCKET_MS = 2000
TYPES = ["join", "status", "schedules", "seat-map", "hold", "charge", "pay", "leave"]
# The requests a queue token opens: what the autopilot's target is about
# (charge is the platform's own call, made for the admitted buyer).
ADMITTED = {"schedules", "seat-map", "hold", "charge", "pay"}
SLOW_MS = 50


def pct(values, q):
    if not values:
        return 0
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def main():
    run = sys.argv[1]
    by_bucket = defaultdict(lambda: defaultdict(list))
    admitted = []
    last_join = 0
    with open(f"{run}/req.csv") as f:
        for r in csv.DictReader(f):
            at, took = int(r["elapsed"]), int(r["response_time"])
            by_bucket[at // BUCKET_MS][r["name"]].append(took)
            if r["name"] == "join":
                last_join = max(last_join, at)
            if r["name"] in ADMITTED:
                admitted.append((at, took))

    t0 = float(open(f"{run}/t0").read())
    snaps = []
    for line in open(f"{run}/cpu.log"):
        at, _, snap = line.partition(" ")
        if snap.strip():
            snaps.append((float(at), json.loads(snap)))
    cpu = defaultdict(lambda: defaultdict(float))  # bucket -> component -> core-seconds
    span = defaultdict(float)  # bucket -> seconds covered
    for (_, a), (at, b) in zip(snaps, snaps[1:]):
        # Each interval counts in the bucket it ends in.
        bucket = int((at - t0) * 1000) // BUCKET_MS
        wall = sum(b["machine"].values()) - sum(a["machine"].values())
        span[bucket] += wall / b["nproc"]
        for g in b["groups"]:
            cpu[bucket][g] += sum(b["groups"][g]) - sum(a["groups"][g])
        cpu[bucket]["idle"] += b["machine"]["idle"] - a["machine"]["idle"]

    comps = ["generator", "service", "redis", "postgres", "idle"]
    print("| s | " + " | ".join(TYPES) + " | " + " | ".join(comps) + " |")
    print("|---:|" + "---:|" * (len(TYPES) + len(comps)))
    for b in sorted(by_bucket):
        cells = []
        for t in TYPES:
            v = by_bucket[b].get(t, [])
            cells.append(f"{len(v)} / {pct(v, .5)} / {pct(v, .99)}" if v else "")
        s = span.get(b) or 0
        shares = [f"{100 * cpu[b][c] / s:.0f}" if s else "" for c in comps]
        print(f"| {b * BUCKET_MS // 1000} | " + " | ".join(cells) + " | " + " | ".join(shares) + " |")
    print()
    print(f"Cells: requests started in those 2 s / client p50 / p99 (ms). CPU: % of one core ({snaps[0][1]['nproc'] if snaps else '?'} cores).")
    print(f"The last buyer arrived (joined) {last_join / 1000:.1f} s into the run.")
    for name, part in (("while buyers arrive", [t for a, t in admitted if a <= last_join]),
                       ("after the last arrival", [t for a, t in admitted if a > last_join])):
        if part:
            slow = sum(t > SLOW_MS for t in part)
            print(f"- admitted buyers' requests {name}: {len(part)}, "
                  f"{100 * slow / len(part):.1f} % over {SLOW_MS} ms, p50 {pct(part, .5)} ms, p99 {pct(part, .99)} ms")


if __name__ == "__main__":
    main()
