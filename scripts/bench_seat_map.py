#!/usr/bin/env python3
"""What one seat map costs the service: CPU per request and requests a second.

usage: scripts/bench_seat_map.py BINARY [REQUESTS]     (default 2000)

Starts BINARY (`boxoffice serve`) on a free port with its own database
and Redis key prefix (both removed afterwards; never FLUSHes), creates an
event with one schedule of 5,000 seats in rows of 50, and asks one
keep-alive connection for its admin seat map REQUESTS times. Prints the
answer's size, the service's CPU (user + system, /proc/<pid>/stat) per
request and the requests a second. Run two binaries in turn to compare
(docs/bench/surge-17.md, seventeenth run). Uses DATABASE_URL's server
(postgres://postgres@127.0.0.1:5432 by default) and REDIS_URL.
"""
import http.client, json, os, subprocess, sys, time, socket
from urllib.parse import urlsplit
if len(sys.argv) < 2:
    sys.exit(__doc__)
bin_, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2000
pg = urlsplit(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/boxoffice"))
admin = pg._replace(path="/postgres").geturl()
redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
def free_port():
    s = socket.socket(); s.bind(('127.0.0.1', 0)); p = s.getsockname()[1]; s.close(); return p
port, mport = free_port(), free_port()
ts = str(time.time_ns()); db = f"bx_smb_{ts}"
subprocess.run(["psql", "-X", "-q", admin, "-c", f'create database "{db}"'], check=True)
env = dict(os.environ, BOXOFFICE_ADDR=f"127.0.0.1:{port}", BOXOFFICE_METRICS_ADDR=f"127.0.0.1:{mport}",
           DATABASE_URL=pg._replace(path=f"/{db}").geturl(), REDIS_URL=redis_url, BOXOFFICE_REDIS_PREFIX=f"smb-{ts}:",
           RUST_LOG="warn", BOXOFFICE_SERVICE_KEY="k"*32, BOXOFFICE_TOKEN_SECRET="s"*32,
           BOXOFFICE_RATE_PER_IP="0", BOXOFFICE_RATE_PER_TOKEN="0")
p = subprocess.Popen([bin_, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(300):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port); c.request("GET", "/readyz")
            if c.getresponse().status == 200: break
        except OSError: pass
        time.sleep(0.1)
    c = http.client.HTTPConnection("127.0.0.1", port)
    H = {"x-api-key": "k"*32, "content-type": "application/json"}
    body = {"event_id": "smb", "name": "smb", "queue": {"admit_per_second": 1000, "max_active": 100000, "active_ttl_seconds": 3000, "idle_timeout_seconds": 600},
            "schedules": [{"schedule_id": "s1", "starts_at": "2027-12-01T10:00:00Z", "seats": 5000, "row_size": 50, "price": "10", "hold_seconds": 3000, "max_per_user": 100}]}
    c.request("POST", "/v1/admin/events", json.dumps(body), H); r = c.getresponse(); r.read(); assert r.status == 201, r.status
    path = "/v1/admin/events/smb/schedules/s1/seats"
    c.request("GET", path, headers=H); r = c.getresponse(); d = r.read(); assert r.status == 200
    def cpu():
        f = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    c0, t0 = cpu(), time.time()
    for _ in range(n):
        c.request("GET", path, headers=H); r = c.getresponse(); d = r.read(); assert r.status == 200
    c1, t1 = cpu(), time.time()
    print(f"{bin_}: {len(d)} bytes, {1e6*(c1-c0)/n:.0f} µs service CPU per seat map, {n/(t1-t0):.0f}/s")
finally:
    p.terminate(); p.wait()
    subprocess.run(["psql", "-X", "-q", admin, "-c", f'drop database if exists "{db}" with (force)'])
    subprocess.run(f"redis-cli -u {redis_url} --scan --pattern 'smb-{ts}:*' | xargs -r redis-cli -u {redis_url} unlink > /dev/null", shell=True)
