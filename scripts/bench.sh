#!/usr/bin/env bash
# The whole benchmark in one run (`make bench`), then docs/BENCHMARKS.md.
#
# 1. builds the release binaries (service, load test, ceiling server);
# 2. creates a fresh database and a fresh Redis key prefix, starts the
#    service (rate limits off) and the `ceiling` server (axum + one EVALSHA);
# 3. runs BENCH_RUNS passes (at least 2), one after the other, each of:
#    every Goose scenario at a fixed size (BENCH_USERS users, BENCH_SECONDS
#    each), the flash sale (BENCH_BUYERS buyers for BENCH_SEATS seats, a
#    fresh event each time) at the fixed admission rate, again with the
#    autopilot on, and a third time with the autopilot on two lanes (the
#    waiting room's requests on a second instance at a lower CPU priority),
#    with the service's /metrics scraped around each, and
#    `pgbench` on the payment transaction; then, once, the capacity-at-SLO
#    search (scripts/bench_capacity.sh) and `redis-benchmark` on the real
#    place_hold script and on ZRANK. The
#    report gives the median of the passes with their spread, and takes
#    every verdict on the median (one pass is not a measurement: the join
#    moved from 48 % to 50.5 % of the ceiling between two single runs);
# 4. runs `boxoffice audit` after the flash sales when the binary has it;
# 5. writes docs/BENCHMARKS.md and docs/bench/throughput.svg
#    (scripts/bench_report.py), raw results in loadtest/reports/bench-<ts>/;
# 6. stops what it started, drops its database and deletes its Redis keys
#    (SCAN + DEL by prefix), also on failure or Ctrl-C.
#
# Only 127.0.0.1 is targeted, every step is bounded in time. Never FLUSHes.
#
# Inputs (all optional): REDIS_URL (redis://127.0.0.1:6379), DATABASE_URL
# (its server is used; the database name is replaced by a fresh one),
# BENCH_USERS (64), BENCH_SECONDS (15), BENCH_BUYERS (20000), BENCH_SEATS
# (5000), BENCH_ADMIT (1000 per second), BENCH_MAX_ACTIVE (1000),
# BENCH_WAITING (1000000), BENCH_PAY_STOCK (3500 per second of the run), BENCH_RUNS (2; at least 2), BENCH_PORT (18080),
# CEILING_PORT (18081), BENCH_SKIP_STREAM=1 / BENCH_SKIP_PREQUEUE=1 (leave
# out scripts/bench_stream.sh / scripts/bench_prequeue.sh), BENCH_SKIP_BUILD=1 (use the binaries in
# target/<profile> as they are), BENCH_PROFILE (release; `dev` only to try
# the script itself: debug figures mean nothing), BENCH_REPORT
# (docs/BENCHMARKS.md; the chart goes beside it in bench/throughput.svg),
# BENCH_METRICS_PORT (18082), BENCH_QUEUE_PORT / BENCH_QUEUE_METRICS_PORT /
# BENCH_QUEUE_NICE (18083 / 18084 / 10: the waiting room's lane of the
# lanes sale), BENCH_CONNECTIONS (20000 keep-alive
# connections for the connection cost; 0 = leave it out), BENCH_SKIP_CAPACITY=1 (leave out the
# capacity-at-SLO search, scripts/bench_capacity.sh).
# The default sizes take about 6 minutes after the build on 2 cores.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

USERS="${BENCH_USERS:-64}"
SECS="${BENCH_SECONDS:-15}"
BUYERS="${BENCH_BUYERS:-20000}"
SEATS="${BENCH_SEATS:-5000}"
ADMIT="${BENCH_ADMIT:-1000}"
MAX_ACTIVE="${BENCH_MAX_ACTIVE:-1000}"
WAITING="${BENCH_WAITING:-1000000}"
PORT="${BENCH_PORT:-18080}"
QPORT="${BENCH_QUEUE_PORT:-18083}"
QMPORT="${BENCH_QUEUE_METRICS_PORT:-18084}"
QNICE="${BENCH_QUEUE_NICE:-10}"
CPORT="${CEILING_PORT:-18081}"
MPORT="${BENCH_METRICS_PORT:-18082}"
RUNS="${BENCH_RUNS:-2}"
# The pay scenario's purchases made ready before its run: enough for pgbench's
# best rate on this box (3,063/s) over the run and its ramp, with a margin.
PAY_STOCK="${BENCH_PAY_STOCK:-$((3500 * (SECS + 2)))}"
PROFILE="${BENCH_PROFILE:-release}"
REPORT="${BENCH_REPORT:-docs/BENCHMARKS.md}"
BIN_DIR="$ROOT/target/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")"
[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 2 ]] || { echo "bench: BENCH_RUNS must be 2 or more (one pass is not a measurement)" >&2; exit 2; }

TS="$(date +%s)"
STARTED="$(date +%s.%N)"
DB="bx_bench_$TS"
PREFIX="bench-$TS:"
OUT="$ROOT/loadtest/reports/bench-$TS"
SERVICE_KEY="bench-key"
TOKEN_SECRET="bench-token-secret-$TS"
HOST="http://127.0.0.1:$PORT"
QHOST="http://127.0.0.1:$QPORT"
CHOST="http://127.0.0.1:$CPORT"

bench_local_only
ADMIN_URL="$(bench_admin_url)"
BENCH_DB_URL="$(bench_db_url "$DB")"

mkdir -p "$OUT"
say() { bench_say "$@"; }
rcli() { redis-cli -u "$REDIS_URL" "$@"; }
# Every command that produces a figure is logged verbatim for the report.
note() { printf '%s\n' "$*" >>"$OUT/commands.txt"; }

SERVICE_PID=""
QUEUE_PID=""
CEILING_PID=""
DB_CREATED=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    bench_stop "$SERVICE_PID"
    bench_stop "$QUEUE_PID"
    bench_stop "$CEILING_PID"
    local n
    n="$(bench_unlink_prefix "$PREFIX")"
    [[ $DB_CREATED -eq 1 ]] && bench_drop_db "$DB"
    say "cleaned up: stopped service and ceiling server, deleted $n Redis keys under '$PREFIX', dropped $DB"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ build
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    say "building $PROFILE binaries (cargo build --profile $PROFILE -p boxoffice -p loadtest)"
    cargo build --profile "$PROFILE" -p boxoffice -p loadtest
fi
bench_wait_quiet
BUILT="$(date +%s.%N)"
BX="$BIN_DIR/boxoffice"
LT="$BIN_DIR/loadtest"
CEIL="$BIN_DIR/ceiling"
for b in "$BX" "$LT" "$CEIL" "$BIN_DIR/conn_bench"; do [[ -x $b ]] || { echo "bench: $b missing" >&2; exit 1; }; done
command -v pgbench >/dev/null || {
    say "pgbench missing: apt-get install -y postgresql-contrib"
    apt-get install -y postgresql-contrib >/dev/null
}
bench_require redis-cli redis-benchmark psql curl python3
bench_port_free "$PORT" || { echo "bench: port $PORT is in use (set BENCH_PORT)" >&2; exit 1; }
bench_port_free "$CPORT" || { echo "bench: port $CPORT is in use (set CEILING_PORT)" >&2; exit 1; }
bench_port_free "$MPORT" || { echo "bench: port $MPORT is in use (set BENCH_METRICS_PORT)" >&2; exit 1; }
bench_port_free "$QPORT" || { echo "bench: port $QPORT is in use (set BENCH_QUEUE_PORT)" >&2; exit 1; }
bench_port_free "$QMPORT" || { echo "bench: port $QMPORT is in use (set BENCH_QUEUE_METRICS_PORT)" >&2; exit 1; }

# ------------------------------------------------------------- machine
{
    echo "nproc=$(nproc)"
    echo "cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)"
    echo "mem_kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
    echo "kernel=$(uname -sr)"
    echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "redis=$(rcli info server | sed -n 's/^redis_version:\(.*\)\r$/\1/p')"
    echo "postgres=$(psql -X -tA "$ADMIN_URL" -c 'show server_version')"
    echo "rustc=$(rustc --version)"
    echo "profile=$PROFILE"
    echo "git=$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo '+dirty')"
    echo "users=$USERS"
    echo "seconds=$SECS"
    echo "buyers=$BUYERS"
    echo "seats=$SEATS"
    echo "waiting=$WAITING"
    echo "runs=$RUNS"
    echo "ts=$TS"
} >"$OUT/machine.txt"

# ------------------------------------------------------------- services
psql -X -q -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "create database \"$DB\""
DB_CREATED=1
say "database $DB, Redis prefix '$PREFIX', raw results in ${OUT#"$ROOT"/}"

export REDIS_URL BOXOFFICE_REDIS_PREFIX="$PREFIX" BOXOFFICE_SERVICE_KEY="$SERVICE_KEY" BOXOFFICE_TOKEN_SECRET="$TOKEN_SECRET"
export LOADTEST_REPORT_DIR="$OUT"
note "export REDIS_URL=$REDIS_URL BOXOFFICE_REDIS_PREFIX=$PREFIX BOXOFFICE_SERVICE_KEY=$SERVICE_KEY BOXOFFICE_TOKEN_SECRET=$TOKEN_SECRET LOADTEST_REPORT_DIR=${OUT#"$ROOT"/}"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# One connection per buyer, as browsers would: the flash sale's 20,000 and
# the capacity search's arrivals need more than the default cap (4,096).
SERVICE_ENV=(BOXOFFICE_ADDR="127.0.0.1:$PORT" BOXOFFICE_METRICS_ADDR="127.0.0.1:$MPORT"
    BOXOFFICE_HTTP_MAX_CONNECTIONS=60000 DATABASE_URL="$BENCH_DB_URL" REDIS_URL="$REDIS_URL"
    BOXOFFICE_REDIS_PREFIX="$PREFIX" BOXOFFICE_RATE_PER_IP=0 BOXOFFICE_RATE_PER_TOKEN=0 RUST_LOG=warn
    BOXOFFICE_SERVICE_KEY="$SERVICE_KEY" BOXOFFICE_TOKEN_SECRET="$TOKEN_SECRET")
note "env ${SERVICE_ENV[*]} ./target/release/boxoffice serve"
env "${SERVICE_ENV[@]}" "$BX" serve >"$OUT/service.log" 2>&1 &
SERVICE_PID=$!
note "CEILING_ADDR=127.0.0.1:$CPORT REDIS_URL=$REDIS_URL BOXOFFICE_REDIS_PREFIX=$PREFIX ./target/release/ceiling"
CEILING_ADDR="127.0.0.1:$CPORT" "$CEIL" >"$OUT/ceiling.log" 2>&1 &
CEILING_PID=$!
bench_wait_http "$HOST/readyz" 60 || { tail -n 30 "$OUT/service.log" >&2; echo "bench: service not ready" >&2; exit 1; }
bench_wait_http "$CHOST/ceiling" 20 || { tail -n 30 "$OUT/ceiling.log" >&2; echo "bench: ceiling not ready" >&2; exit 1; }
say "service (pid $SERVICE_PID) on $HOST, ceiling (pid $CEILING_PID) on $CHOST"

# ------------------------------------------------------------ scenarios
# The payment transaction of src/payments/pay.rs `record`, statement for
# statement, on the service's own schema (same database, migrated by it),
# for pgbench in every pass. Its rows (event `pgb`, buyers `pgb-*`) are
# PostgreSQL-only and break the catalog and per-user rules on purpose, so
# each pass removes them again before the next pass and the audit.
PG_CLIENTS=24 # the service's PostgreSQL pool (max_connections in src/store/pg.rs)
pgb_setup() {
    psql -X -q -v ON_ERROR_STOP=1 "$BENCH_DB_URL" <<'SQL'
insert into events (event_id, name, admit_per_second, max_active, active_ttl_seconds, idle_timeout_seconds, max_admit_per_second)
values ('pgb', 'pgbench', 1000, 1000, 600, 600, 1000);
insert into schedules (event_id, schedule_id, starts_at, seats, row_size, price, hold_seconds, max_per_user)
values ('pgb', 's1', '2030-01-01T19:00:00Z', 100000, 50, 1000, 600, 100);
insert into wallets (user_id, balance) select 'pgb-' || i, 1000000000000 from generate_series(0, 200) i;
create sequence pgb_hold;
SQL
}
# pgbench's rows live only while the service is paused (below), so none
# of its jobs (the rollup, the reconciler) ever sees them. Nothing here
# waits for a lock the paused service may hold: every row deleted is
# pgbench's own, and a lock wait would be a bug, so it fails after 10 s
# instead of hanging the bench. Foreign-key
# checks are off in this transaction (session_replication_role): deleting
# a payment checks that no sold_seats row names it, a scan of every sold
# seat per payment (no index on sold_seats.payment_id; the service never
# deletes a payment), which took 3 to 6 minutes per pass. Their sold seats
# go first, in the same transaction, so nothing is left dangling.
pgb_teardown() {
    psql -X -q -v ON_ERROR_STOP=1 "$BENCH_DB_URL" <<'SQL'
begin;
set local session_replication_role = replica;
set local lock_timeout = '10s';
delete from outbox where user_id like 'pgb-%';
delete from ledger where user_id like 'pgb-%';
delete from sold_seats where event_id = 'pgb';
delete from payments_unconfirmed where payment_id in (select payment_id from payments where event_id = 'pgb');
delete from payments_not_rolled_up where event_id = 'pgb';
delete from payments where event_id = 'pgb';
delete from sales_hourly where event_id = 'pgb';
delete from wallets where user_id like 'pgb-%';
delete from schedules where event_id = 'pgb';
delete from events where event_id = 'pgb';
commit;
drop sequence pgb_hold;
SQL
}
cat >"$OUT/payment.pgbench.sql" <<'SQL'
-- One payment as src/payments/pay.rs `RECORD` makes it: the same single
-- statement (price, conditional debit, payment, the rows of the work it
-- still owes, sold seat, ledger row, response body, outbox message,
-- idempotency answer; `claimed` as a request without a key has it, like
-- the service's payment scenarios), with pgbench's client id as the buyer
-- and a sequence for the hold and seat.
with claimed as (select 1 as ok),
n as (select nextval('pgb_hold')::int as n),
price as (
    select price * 1 as amount from schedules where event_id = 'pgb' and schedule_id = 's1'
), debit as (
    update wallets w set balance = w.balance - p.amount, updated_at = now()
    from price p, claimed where w.user_id = 'pgb-' || :client_id and w.balance >= p.amount
    returning w.balance, p.amount
), paid as (
    insert into payments (payment_id, user_id, event_id, schedule_id, hold_id, amount, seats, paid_at)
    select gen_random_uuid(), 'pgb-' || :client_id, 'pgb', 's1', 'pgb.s1.' || n.n, d.amount, array[n.n], now()
    from debit d, n
    returning payment_id, seats
), owed as (
    insert into payments_unconfirmed (payment_id, paid_at) select payment_id, now() from paid
), tail as (
    insert into payments_not_rolled_up (event_id, payment_id) select 'pgb', payment_id from paid
), sold as (
    insert into sold_seats (event_id, schedule_id, seat_no, payment_id)
    select 'pgb', 's1', unnest(p.seats), p.payment_id from paid p
), entry as (
    insert into ledger (transaction_id, user_id, kind, amount, balance_after, payment_id)
    select gen_random_uuid(), 'pgb-' || :client_id, 'payment', -d.amount, d.balance, p.payment_id
    from debit d, paid p
), body as (
    select '{"payment_id":"' || p.payment_id || '","amount":"' || trim_scale(d.amount)::text
           || '","balance_after":"' || trim_scale(d.balance)::text || '"}' as text
    from debit d, paid p
), message as (
    insert into outbox (topic, user_id, payload)
    select 'payment.confirmed', 'pgb-' || :client_id, b.text::jsonb from body b
), answer as (
    update idempotency i set status = 201, response = b.text
    from body b where i.user_id = 'pgb-' || :client_id and i.key = null::text
)
select p.amount, d.balance, b.text from price p left join debit d on true left join body b on true;
SQL

lt() { # SCENARIO GOOSE-ARGS...
    local name=$1
    shift
    note "${LT_ENV:-}./target/release/loadtest $name $*"
    say "goose: $name $* (pass $RUN)"
    if ! timeout 400 "$LT" "$name" "$@" >"$LOADTEST_REPORT_DIR/$name.log" 2>&1; then
        tail -n 40 "$LOADTEST_REPORT_DIR/$name.log" >&2
        echo "bench: scenario $name failed (log: $LOADTEST_REPORT_DIR/$name.log)" >&2
        return 1
    fi
    sed -n '/^== /,/^loadtest: wrote/p' "$LOADTEST_REPORT_DIR/$name.log" | grep -v '^loadtest: wrote' | head -n 30 || true
}
STEADY=(-u "$USERS" -r "$USERS" -t "${SECS}s")
# Around each flash sale: the service's /metrics, every component's CPU
# time (scripts/cpu_snapshot.py) and Redis's per-command statistics, so the
# report can say where the time went.
# With two instances (the lanes sale) both are scraped into one file (the
# report sums a histogram's lines) and both count as the service's CPU.
snapshot() { # DIR WHEN
    curl -fsS --max-time 10 "http://127.0.0.1:$MPORT/metrics" >"$1/metrics-$2.txt" || echo "bench: /metrics scrape failed" >&2
    if [[ -n $QUEUE_PID ]]; then
        curl -fsS --max-time 10 "http://127.0.0.1:$QMPORT/metrics" >>"$1/metrics-$2.txt" || echo "bench: /metrics scrape failed" >&2
    fi
    python3 scripts/cpu_snapshot.py "$SERVICE_PID" $QUEUE_PID >"$1/cpu-$2.json"
    rcli info commandstats >"$1/commandstats-$2.txt"
}
# The waiting room's lane for the lanes sale: a second instance of the
# same service (same Redis, PostgreSQL and keys) at a lower CPU priority,
# which the buyers' join, status and leave go to; their shop requests go to
# the first. Started for that sale only, so the other sales run as before.
start_queue_lane() {
    note "env ${SERVICE_ENV[*]} BOXOFFICE_ADDR=127.0.0.1:$QPORT BOXOFFICE_METRICS_ADDR=127.0.0.1:$QMPORT nice -n $QNICE ./target/release/boxoffice serve"
    env "${SERVICE_ENV[@]}" BOXOFFICE_ADDR="127.0.0.1:$QPORT" BOXOFFICE_METRICS_ADDR="127.0.0.1:$QMPORT" \
        nice -n "$QNICE" "$BX" serve >"$LOADTEST_REPORT_DIR/queue-lane.log" 2>&1 &
    QUEUE_PID=$!
    bench_wait_http "$QHOST/readyz" 60 ||
        { tail -n 30 "$LOADTEST_REPORT_DIR/queue-lane.log" >&2; echo "bench: queue lane not ready" >&2; exit 1; }
}
stop_queue_lane() {
    bench_stop "$QUEUE_PID"
    QUEUE_PID=""
}
# The service's coalesced batches (boxoffice_script_batch, sum and count
# per script) after scenario $1: the report takes each scenario's requests
# per Redis call from the difference to the previous scrape.
batches() { # SCENARIO
    { curl -fsS --max-time 10 "http://127.0.0.1:$MPORT/metrics" || echo "bench: /metrics scrape failed" >&2; } |
        grep '^boxoffice_script_batch_\(sum\|count\)' >"$LOADTEST_REPORT_DIR/batches-$1.txt" || true
}
for ((RUN = 1; RUN <= RUNS; RUN++)); do
    export LOADTEST_REPORT_DIR="$OUT/run$RUN"
    mkdir -p "$LOADTEST_REPORT_DIR"
    note "# pass $RUN of $RUNS (LOADTEST_REPORT_DIR=${LOADTEST_REPORT_DIR#"$ROOT"/})"
    lt ceiling --host "$CHOST" "${STEADY[@]}"
    batches start
    lt status --host "$HOST" "${STEADY[@]}"
    batches status
    lt join --host "$HOST" "${STEADY[@]}"
    batches join
    lt holds --host "$HOST" "${STEADY[@]}"
    batches holds
    lt hot-seat --host "$HOST" "${STEADY[@]}"
    batches hot-seat
    LT_ENV="LOADTEST_PAY_STOCK=$PAY_STOCK " LOADTEST_PAY_STOCK="$PAY_STOCK" lt pay --host "$HOST" "${STEADY[@]}"
    lt payment --host "$HOST" "${STEADY[@]}"
    LT_ENV="LOADTEST_WAITING=$WAITING " LOADTEST_WAITING="$WAITING" lt poll-storm --host "$HOST" "${STEADY[@]}"
    # The flash sale three times: at the fixed admission rate, with the
    # autopilot steering it (up to the same rate), and with the autopilot
    # on two lanes (the waiting room on its own instance at nice $QNICE),
    # each between snapshots.
    for MODE in fixed auto lanes; do
        SALE_DIR="$LOADTEST_REPORT_DIR/$([[ $MODE == fixed ]] && echo . || echo "$MODE")"
        ADMISSION="$([[ $MODE == fixed ]] && echo fixed || echo auto)"
        SALE_HOST="$HOST" SHOP_HOST=""
        if [[ $MODE == lanes ]]; then
            start_queue_lane
            SALE_HOST="$QHOST" SHOP_HOST="$HOST"
        fi
        mkdir -p "$SALE_DIR"
        snapshot "$SALE_DIR" before
        LT_ENV="LOADTEST_SEATS=$SEATS LOADTEST_ADMIT_PER_SECOND=$ADMIT LOADTEST_MAX_ACTIVE=$MAX_ACTIVE LOADTEST_ADMISSION=$ADMISSION${SHOP_HOST:+ LOADTEST_SHOP_HOST=$SHOP_HOST} " \
            LOADTEST_REPORT_DIR="$SALE_DIR" LOADTEST_SEATS="$SEATS" LOADTEST_ADMIT_PER_SECOND="$ADMIT" \
            LOADTEST_MAX_ACTIVE="$MAX_ACTIVE" LOADTEST_ADMISSION="$ADMISSION" LOADTEST_SHOP_HOST="$SHOP_HOST" \
            lt flash-sale --host "$SALE_HOST" -u "$BUYERS" -r 2000
        snapshot "$SALE_DIR" after
        if [[ $MODE == lanes ]]; then stop_queue_lane; fi
    done
    note "pgbench -n -M prepared -c $PG_CLIENTS -j 2 -T $SECS -l -f payment.pgbench.sql postgres://…/$DB"
    say "pgbench: payment transaction, $PG_CLIENTS clients, ${SECS}s (pass $RUN)"
    # The reference runs alone, and its rows exist only while the service
    # and the ceiling server are paused (SIGSTOP): from before its setup
    # to after its teardown. A live service ran its work after the sales
    # (the relay draining their outbox, the rollup) on the same two cores,
    # and its reconciler took pgbench's event for one missing from Redis
    # and its rows in payments_unconfirmed for payments to finish: it
    # restored the event into Redis and replayed them, lowering the
    # reference and adding thousands to the report's reconciler figures.
    # A paused service cannot block pgbench: pgbench writes only its own
    # event's rows and wallets, and the service locks no table.
    kill -STOP "$SERVICE_PID" "$CEILING_PID"
    pgb_failed=""
    if ! pgb_setup; then
        pgb_failed="its setup"
    elif ! (cd "$LOADTEST_REPORT_DIR" && timeout $((SECS + 60)) pgbench -n -M prepared -c "$PG_CLIENTS" -j 2 -T "$SECS" -l \
        --log-prefix=pgbench_log -f ../payment.pgbench.sql "$BENCH_DB_URL" >pgbench.out 2>pgbench.err); then
        pgb_failed="pgbench ($(cat "$LOADTEST_REPORT_DIR/pgbench.err"))"
    elif ! pgb_teardown; then
        pgb_failed="its teardown"
    fi
    kill -CONT "$SERVICE_PID" "$CEILING_PID"
    [[ -z $pgb_failed ]] || { echo "bench: the payment reference failed in $pgb_failed" >&2; exit 1; }
    grep -E '^(tps|latency|number of (transactions|failed))' "$LOADTEST_REPORT_DIR/pgbench.out" || true
done
export LOADTEST_REPORT_DIR="$OUT"

# ------------------------------------------------------- capacity at SLO
if [[ ${BENCH_SKIP_CAPACITY:-0} != 1 ]]; then
    say "capacity at SLO (scripts/bench_capacity.sh)"
    note "HOST=$HOST LT=./target/release/loadtest OUT=${OUT#"$ROOT"/}/capacity scripts/bench_capacity.sh"
    HOST="$HOST" LT="$LT" OUT="$OUT/capacity" scripts/bench_capacity.sh | tee "$OUT/capacity.log" ||
        say "capacity search failed; see $OUT/capacity.log"
fi

# ---------------------------------------------- what connections cost
# BENCH_CONNECTIONS (20000) keep-alive connections held open on the
# service, idle for 8 s and then each polling every 5 s for 8 s (loadtest's
# conn_bench). Idle stays under the idle timeout (60 s), which ends a
# keep-alive connection waiting longer for its next request.
# A process here may hold at most `ulimit -n` descriptors (20,000 on the
# 2026-11 machines, not raisable without CAP_SYS_RESOURCE): the client
# then holds 1,000 fewer connections than that, and the report says so.
FD_LIMIT="$(ulimit -n)"
CONNS="${BENCH_CONNECTIONS:-20000}"
if [[ $FD_LIMIT != unlimited && $CONNS -gt $((FD_LIMIT - 1000)) ]]; then
    say "connections: $CONNS asked, the descriptor limit is $FD_LIMIT: measuring $((FD_LIMIT - 1000))"
    CONNS=$((FD_LIMIT - 1000))
fi
if [[ $CONNS -gt 0 ]]; then
    say "connections: $CONNS keep-alive connections, idle then polling (conn_bench)"
    note "./target/release/conn_bench 127.0.0.1:$PORT <service pid> $CONNS 8 5000   # ulimit -n: $FD_LIMIT"
    timeout 180 "$BIN_DIR/conn_bench" "127.0.0.1:$PORT" "$SERVICE_PID" "$CONNS" 8 5000 \
        >"$OUT/connections.json" 2>"$OUT/connections.err" || say "conn_bench failed; see $OUT/connections.err"
    cat "$OUT/connections.json"
fi

# ---------------------------------------------------------------- audit
if "$BX" audit --help >/dev/null 2>&1; then
    say "boxoffice audit (after the flash sales)"
    note "env ${SERVICE_ENV[*]} ./target/release/boxoffice audit"
    set +e
    env "${SERVICE_ENV[@]}" timeout 120 "$BX" audit >"$OUT/audit.log" 2>&1
    echo "$?" >"$OUT/audit.rc"
    set -e
    say "audit exit code $(cat "$OUT/audit.rc")"
else
    say "audit: skipped: '$BX audit --help' fails (the service has no audit subcommand yet)"
    echo "skipped" >"$OUT/audit.rc"
fi

# ------------------------------------------------------ redis-benchmark
# place_hold exactly as the service calls it: its function in the
# library the service loaded (`boxoffice lua-library`), on a schedule
# created through the admin API (so its keys are the real ones), one seat
# per call.
RB_EVENT="rb$TS"
curl -fsS -o /dev/null -H "x-api-key: $SERVICE_KEY" -H 'content-type: application/json' "$HOST/v1/admin/events" -d "{
  \"event_id\":\"$RB_EVENT\",\"name\":\"redis-benchmark\",
  \"queue\":{\"admit_per_second\":1000,\"max_active\":1000,\"active_ttl_seconds\":600,\"idle_timeout_seconds\":600,\"paused\":true},
  \"schedules\":[
    {\"schedule_id\":\"p1\",\"starts_at\":\"2030-01-01T19:00:00Z\",\"seats\":100000,\"row_size\":50,\"price\":\"1000\",\"hold_seconds\":3600,\"max_per_user\":100},
    {\"schedule_id\":\"p16\",\"starts_at\":\"2030-01-01T19:00:00Z\",\"seats\":100000,\"row_size\":50,\"price\":\"1000\",\"hold_seconds\":3600,\"max_per_user\":100},
    {\"schedule_id\":\"probe\",\"starts_at\":\"2030-01-01T19:00:00Z\",\"seats\":10,\"row_size\":10,\"price\":\"1000\",\"hold_seconds\":3600,\"max_per_user\":100}]}"
FN="$(bench_load_library "$BX")_place_hold"
note "$BX lua-library | redis-cli -u $REDIS_URL -x function load replace   # -> FCALL $FN; schedules p1, p16 of event $RB_EVENT created through POST /v1/admin/events (100000 seats, max_per_user 100)"
RB_BASE="${PREFIX}{ev:$RB_EVENT}"
rb_keys() { bench_place_hold_keys "$RB_BASE" "$1"; }
# place_hold checks that the user is admitted (scripts/lib/bench.sh).
RB_USERS=100000
bench_admit_users "$RB_BASE" "$RB_USERS"
rb() { # NAME REDIS-BENCHMARK-ARGS...
    local name=$1
    shift
    note "redis-benchmark -u $REDIS_URL $*"
    say "redis-benchmark: $name"
    timeout 120 redis-benchmark -u "$REDIS_URL" --csv "$@" >"$OUT/rb-$name.csv" 2>"$OUT/rb-$name.err"
    tail -n 1 "$OUT/rb-$name.csv"
}
# One call by hand first: it must place a hold (a wrong key list measured
# an error path once).
# shellcheck disable=SC2046 # the keys are words on purpose
RB_ONE="$(rcli fcall "$FN" 13 $(rb_keys probe) 1 1 u000000000000 count 1 1)"
[[ $RB_ONE == *'"holds":[{"status":"ok"'* ]] || { echo "bench: place_hold placed no hold: $RB_ONE" >&2; exit 1; }
# shellcheck disable=SC2046
rb place_hold -c "$USERS" -n 60000 -r "$RB_USERS" FCALL "$FN" 13 $(rb_keys p1) 1 1 u__rand_int__ count 1 1
# shellcheck disable=SC2046
rb place_hold_p16 -c "$USERS" -P 16 -n 60000 -r "$RB_USERS" FCALL "$FN" 13 $(rb_keys p16) 1 1 u__rand_int__ count 1 1
for s in p1 p16; do
    printf '%s ' "$s" >>"$OUT/rb-place_hold.check"
    rcli hget "$RB_BASE:s:$s:cfg" held >>"$OUT/rb-place_hold.check"
done
# place_hold next to a minimal one-key hold script, on a private Redis
# (scripts/bench_hold_script.sh): its Redis cost per hold as a ratio.
# "before": place_hold as of issue 17's starting point, when git has it.
HOLD_BEFORE=""
if git cat-file -e 4b85a63^{commit} 2>/dev/null; then
    mkdir -p "$OUT/before-4b85a63" && git archive 4b85a63 lua | tar -x -C "$OUT/before-4b85a63"
    HOLD_BEFORE="$OUT/before-4b85a63/lua"
fi
note "mkdir -p before && git archive 4b85a63 lua | tar -x -C before; HOLD_BENCH_BIN=./target/$PROFILE/boxoffice HOLD_BENCH_BEFORE=before/lua scripts/bench_hold_script.sh"
say "place_hold vs a minimal hold script (scripts/bench_hold_script.sh)"
HOLD_BENCH_BIN="$BX" HOLD_BENCH_BEFORE="$HOLD_BEFORE" HOLD_BENCH_OUT="$OUT/hold_script.txt" scripts/bench_hold_script.sh >"$OUT/hold_script.log" 2>&1 ||
    say "bench_hold_script failed; see $OUT/hold_script.log"
tail -n 8 "$OUT/hold_script.log"
# ZRANK in a 100k-member sorted set (the waiting room's position lookup);
# members are the 12-digit numbers redis-benchmark's __rand_int__ makes.
ZKEY="${PREFIX}zrank-bench"
rcli eval "for i = 0, 99999 do redis.call('ZADD', KEYS[1], i, string.format('%012d', i)) end return 1" 1 "$ZKEY" >/dev/null
note "redis-cli -u $REDIS_URL eval \"for i = 0, 99999 do redis.call('ZADD', KEYS[1], i, string.format('%012d', i)) end return 1\" 1 $ZKEY"
rb zrank -c "$USERS" -n 300000 -r 100000 ZRANK "$ZKEY" __rand_int__

# ------------------------------------------------- streaming vs polling
if [[ ${BENCH_SKIP_STREAM:-0} != 1 ]]; then
    say "streaming vs polling (scripts/bench_stream.sh)"
    BENCH_SKIP_BUILD=1 STREAM_OUT="$OUT/stream_vs_poll.md" scripts/bench_stream.sh ||
        say "streaming vs polling failed; see above"
    note "BENCH_SKIP_BUILD=1 scripts/bench_stream.sh   # STREAM_SIZES='10000 50000' STREAM_WARMUP=20 STREAM_WINDOW=30"
fi

# ------------------------------------------- a pre-queue of 1,000,000 entries
if [[ ${BENCH_SKIP_PREQUEUE:-0} != 1 ]]; then
    say "pre-queue at 1,000,000 entries (scripts/bench_prequeue.sh)"
    BENCH_SKIP_BUILD=1 PREQUEUE_OUT="$OUT/prequeue.md" scripts/bench_prequeue.sh ||
        say "pre-queue bench failed; see above"
    note "BENCH_SKIP_BUILD=1 scripts/bench_prequeue.sh   # PREQUEUE_ENTRIES=1000000 PREQUEUE_SECONDS=15 PREQUEUE_CONCURRENCY=32 PREQUEUE_STREAMS=2000"
fi

# ----------------------------------------------------------------- report
ENDED="$(date +%s.%N)"
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
python3 - "$STARTED" "$BUILT" "$ENDED" >"$OUT/elapsed.txt" <<'PY'
import sys
start, built, end = map(float, sys.argv[1:4])
print(f"{end - built:.0f} {built - start:.0f}")
PY
say "writing $REPORT"
python3 scripts/bench_report.py "$OUT" "$REPORT" "$(dirname "$REPORT")/bench/throughput.svg"
read -r BENCH_S BUILD_S <"$OUT/elapsed.txt"
say "benchmark took ${BENCH_S} s after a ${BUILD_S} s build"
if [[ $(cat "$OUT/audit.rc") != 0 && $(cat "$OUT/audit.rc") != skipped ]]; then
    echo "bench: boxoffice audit reported violations (log: $OUT/audit.log)" >&2
    exit 1
fi
