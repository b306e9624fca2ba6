#!/usr/bin/env bash
# Runs the fault tests behind the table in docs/OPERATIONS.md ("Fault table")
# and prints what each one measured. Needs what `make test` needs (REDIS_URL,
# DATABASE_URL; see scripts/deps.sh) and redis-server/redis-cli on PATH for
# the tests that start their own Redis and Redis Cluster.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -f .deps/env ]]; then . .deps/env; fi
cargo test --test api -- --nocapture --test-threads 2 \
  outage:: redis_loss:: cluster:: payments::a_crash_between_commit_and_confirm 2>&1 |
  grep -E '^(failover|restart empty|single Redis|test )' || true
