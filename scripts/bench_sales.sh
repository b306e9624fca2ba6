#!/usr/bin/env bash
# Sales report at a million payments: the report's time with everything in
# the not-rolled-up tail, then after the rollup job has run (tail of 1,000).
#
#   scripts/bench_sales.sh [payments]      (default 1000000)
#
# Needs PostgreSQL at DATABASE_URL's server and Redis at REDIS_URL, and a
# built binary (target/release/boxoffice if present, else target/debug).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
BASE=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/boxoffice}
SERVER=${BASE%/*}
DB=bx_bench_sales_$$
BIN=target/release/boxoffice
[[ -x $BIN ]] || BIN=target/debug/boxoffice
PORT=18$((RANDOM % 900 + 100))
KEY=bench-sales-key
psql -q "$SERVER/postgres" -c "create database $DB"
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; psql -q "$SERVER/postgres" -c "drop database if exists $DB with (force)"' EXIT

start() { # $1 = rollup interval in ms
  BOXOFFICE_ADDR=127.0.0.1:$PORT DATABASE_URL=$SERVER/$DB BOXOFFICE_SERVICE_KEY=$KEY \
  BOXOFFICE_TOKEN_SECRET=bench-sales-token-secret BOXOFFICE_REDIS_PREFIX="benchsales$$:" \
  BOXOFFICE_ROLLUP_MS=$1 BOXOFFICE_LEASE_TTL_MS=2000 RUST_LOG=warn "$BIN" >/dev/null 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -sf "127.0.0.1:$PORT/healthz" >/dev/null && return; sleep 0.1; done
  echo "the service did not start"; exit 1
}
report() { # prints the median of 11 report requests, in ms
  for _ in $(seq 11); do
    curl -s -o /dev/null -w '%{time_total}\n' -H "x-api-key: $KEY" "127.0.0.1:$PORT/v1/admin/events/bench/sales"
  done | sort -n | sed -n 6p | awk '{printf "%.1f ms\n", $1 * 1000}'
}

start 3600000
curl -sf -o /dev/null -H "x-api-key: $KEY" -H 'content-type: application/json' "127.0.0.1:$PORT/v1/admin/events" -d '{
  "event_id":"bench","name":"bench","queue":{"admit_per_second":100,"max_active":100,"active_ttl_seconds":60,"idle_timeout_seconds":60},
  "schedules":[{"schedule_id":"d1","starts_at":"2026-12-24T20:00:00Z","seats":100000,"row_size":100,"price":"1000","hold_seconds":60,"max_per_user":4},
               {"schedule_id":"d2","starts_at":"2026-12-25T20:00:00Z","seats":100000,"row_size":100,"price":"1000","hold_seconds":60,"max_per_user":4}]}'
echo "inserting $N payments over 48 hours ..."
psql -q "$SERVER/$DB" -c "
  insert into payments (payment_id, user_id, event_id, schedule_id, hold_id, amount, seats, paid_at)
  select gen_random_uuid(), 'u' || i, 'bench', case when i % 2 = 0 then 'd1' else 'd2' end, 'bench.h.' || i,
         1000 * (1 + i % 4), array_fill(1, array[1 + i % 4]), now() - (i % 172800) * interval '1 second'
  from generate_series(1, $N) i;
  insert into payments_not_rolled_up (event_id, payment_id) select event_id, payment_id from payments;
  analyze payments; analyze payments_not_rolled_up;"
echo "report, nothing rolled up ($N payments in the tail): $(report)"
kill $PID; wait $PID 2>/dev/null || true
start 50
until [[ $(psql -tAq "$SERVER/$DB" -c "select count(*) from payments_not_rolled_up") == 0 ]]; do sleep 1; done
kill $PID; wait $PID 2>/dev/null || true
# (The leader runs a rollup round as soon as it takes the lease: add the
# tail after that.)
start 3600000
sleep 3
psql -q "$SERVER/$DB" -c "
  with tail as (
    insert into payments (payment_id, user_id, event_id, schedule_id, hold_id, amount, seats, paid_at)
    select gen_random_uuid(), 'v' || i, 'bench', 'd1', 'bench.t.' || i, 1000, array[1], now()
    from generate_series(1, 1000) i
    returning event_id, payment_id)
  insert into payments_not_rolled_up (event_id, payment_id) select event_id, payment_id from tail;"
echo "tail: $(psql -tAq "$SERVER/$DB" -c "select count(*) from payments_not_rolled_up") payments not rolled up"
echo "report, rolled up ($N payments) + a tail of 1000, before vacuum: $(report)"
# The rollup's deletes leave dead rows in the tail's table until
# (auto)vacuum, which the migration sets to run after 2,000 of them; this
# is the steady state.
psql -q "$SERVER/$DB" -c "vacuum analyze payments_not_rolled_up"
echo "report, rolled up ($N payments) + a tail of 1000, after vacuum: $(report)"
psql "$SERVER/$DB" -c "set enable_seqscan = off; explain analyze
  with sales as (
    select schedule_id, hour, payments, seats, refunds, revenue from sales_hourly where event_id = 'bench'
    union all
    select p.schedule_id, date_trunc('hour', p.paid_at), count(*), sum(cardinality(p.seats))::int8, 0, sum(p.amount)
    from payments_not_rolled_up t join payments p using (payment_id) where t.event_id = 'bench' group by 1, 2)
  select hour, sum(payments)::int8, sum(seats)::int8, sum(refunds)::int8, sum(revenue) from sales group by hour order by hour" | grep -E "Execution Time|Index|Scan"
