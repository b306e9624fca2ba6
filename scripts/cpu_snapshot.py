#!/usr/bin/env python3
"""Prints one JSON snapshot of where this machine's CPU time has gone so far.

usage: cpu_snapshot.py SERVICE_PID [SERVICE_PID ...]

Per component, user and system seconds summed over its processes (from
/proc/<pid>/stat): the service (every SERVICE_PID: one per instance), the load generator (every
`loadtest` process), Redis (every `redis-server`) and PostgreSQL (every
`postgres` process: backends, WAL writer, checkpointer...); and the whole
machine's user, system (kernel, with interrupts) and idle seconds from
/proc/stat. Two snapshots around a run give each component's share of the
run's CPU time (scripts/bench_report.py does the subtraction).
"""

import json
import os
import sys

TICK = os.sysconf("SC_CLK_TCK")


def proc_times(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    # utime and stime are fields 14 and 15 of the whole line (1-based).
    return name, int(fields[11]) / TICK, int(fields[12]) / TICK


def main():
    service = set(sys.argv[1:])
    groups = {"service": [0.0, 0.0], "generator": [0.0, 0.0], "redis": [0.0, 0.0], "postgres": [0.0, 0.0]}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        t = proc_times(pid)
        if not t:
            continue
        name, user, system = t
        group = (
            "service" if pid in service
            else "generator" if name == "loadtest"
            else "redis" if name.startswith("redis-server")
            else "postgres" if name in ("postgres", "postmaster")
            else None
        )
        if group:
            groups[group][0] += user
            groups[group][1] += system
    with open("/proc/stat") as f:
        cpu = [int(x) / TICK for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    machine = {"user": cpu[0] + cpu[1], "system": cpu[2] + cpu[5] + cpu[6], "idle": cpu[3] + cpu[4], "steal": cpu[7]}
    print(json.dumps({"groups": groups, "machine": machine, "nproc": os.cpu_count()}))


if __name__ == "__main__":
    main()
