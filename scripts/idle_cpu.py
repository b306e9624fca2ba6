#!/usr/bin/env python3
"""What idle keep-alive connections cost a running service in CPU.

    scripts/idle_cpu.py PID PORT CONNECTIONS SECONDS

Opens CONNECTIONS connections to 127.0.0.1:PORT, sends one GET /healthz on
each and reads its answer, then reads the CPU time (user + system) of
process PID from /proc around SECONDS of silence on all of them. Keep
SECONDS under the service's idle timeout (60 s by default) and
CONNECTIONS under `ulimit -n`. Used for docs/bench/surge-17.md (the head
timer's wake-ups).
"""

import os
import socket
import sys
import time


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    pid, port, n, secs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        socks.append(s)
    for s in socks:
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                sys.exit("idle_cpu: a connection closed before its answer")
            got += chunk
    time.sleep(1)
    before = cpu_seconds(pid)
    time.sleep(secs)
    used = cpu_seconds(pid) - before
    print(f"{n} idle connections, {secs:.0f} s: service CPU {1000 * used:.0f} ms "
          f"({100 * used / secs:.2f} % of a core)")


if __name__ == "__main__":
    main()
