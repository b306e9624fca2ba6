#!/usr/bin/env bash
# OpenAPI conformance: runs schemathesis (pinned in requirements-test.txt,
# installed with --require-hashes into .venv/) against a real
# `boxoffice serve` on real Redis and PostgreSQL, with every check that
# compares answers to /openapi.json. Any failure, or anything that keeps it
# from running, exits non-zero. Part of `make test`; run alone with
# `make schemathesis` (needs `make deps` first, or REDIS_URL/DATABASE_URL).
#
# The server gets its own database, its own Redis key prefix (both removed
# at the end), a free loopback port, rate limits off and the demo event. A
# user is joined and admitted before the run, so the queue-token routes are
# exercised past authentication; a user assertion and the service key are
# minted for the routes that take them (scripts/schemathesis/schemathesis.toml).
#
# Inputs: REDIS_URL, DATABASE_URL (as for `make test`),
#         ST_MAX_EXAMPLES (default 50), ST_SEED (default 20261130),
#         ST_ARGS (extra schemathesis arguments).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/boxoffice}"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

die() {
    printf 'schemathesis: ERROR: %s\n' "$*" >&2
    exit 1
}

# ------------------------------------------------------------ the venv
stamp="$VENV/.requirements-test.sha256"
want="$(sha256sum requirements-test.txt | cut -d' ' -f1)"
if [[ ! -x $VENV/bin/schemathesis || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    # Debian ships venv's ensurepip separately; as root, install what is missing.
    apt_python() {
        if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
            echo "schemathesis: installing python3 and python3-venv with apt-get"
            { apt-get update -qq && apt-get install -y -qq python3 python3-venv; } >/dev/null || true
        fi
    }
    command -v "$PYTHON" >/dev/null || apt_python
    command -v "$PYTHON" >/dev/null || die "$PYTHON is missing; install Python 3.11+ with venv"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "schemathesis 4.32.5 needs Python 3.11+; $PYTHON is $("$PYTHON" -V 2>&1) (set PYTHON=python3.11 or newer)"
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        apt_python
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV" || die "cannot create $VENV (on Debian: apt-get install python3-venv)"
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --require-hashes \
        -r requirements-test.txt || die "pip install -r requirements-test.txt failed"
    printf '%s' "$want" >"$stamp"
fi

# ------------------------------------------------------------ the server
cargo build --quiet --bin boxoffice
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/boxoffice"

run_id="st$$"
db="boxoffice_${run_id}"
base_url="${DATABASE_URL%/*}"
admin_url="$base_url/postgres"
prefix="$run_id:"
port="$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
work="$(mktemp -d)"
server_pid=""

cleanup() {
    local rc=$?
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if ((rc != 0)) && [[ -f $work/server.log ]]; then
        echo "---- last lines of the server log ----" >&2
        tail -n 40 "$work/server.log" >&2 || true
    fi
    psql -X -q "$admin_url" -c "drop database if exists \"$db\" with (force)" >/dev/null 2>&1 || true
    redis-cli -u "$REDIS_URL" --scan --pattern "${prefix}*" 2>/dev/null |
        xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT INT TERM

psql -X -q -v ON_ERROR_STOP=1 "$admin_url" -c "create database \"$db\"" >/dev/null ||
    die "cannot create database $db (is PostgreSQL up? run make deps)"

service_key="st-service-key-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
export REDIS_URL DATABASE_URL="$base_url/$db" \
    BOXOFFICE_ADDR="127.0.0.1:$port" \
    BOXOFFICE_REDIS_PREFIX="$prefix" \
    BOXOFFICE_SERVICE_KEY="$service_key" \
    BOXOFFICE_TOKEN_SECRET="st-token-secret-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')" \
    BOXOFFICE_USER_JWT_SECRET="st-user-jwt-secret-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" \
    BOXOFFICE_RATE_PER_IP=0 BOXOFFICE_RATE_PER_TOKEN=0 \
    BOXOFFICE_LOG_FORMAT=json RUST_LOG="${RUST_LOG:-warn}"

"$BIN" serve --demo >"$work/server.log" 2>&1 &
server_pid=$!

base="http://127.0.0.1:$port"
for _ in $(seq 1 150); do
    curl -fsS "$base/readyz" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || die "boxoffice serve exited during start"
    sleep 0.2
done
curl -fsS "$base/readyz" >/dev/null || die "boxoffice serve did not become ready on $base"

# ------------------------------------------------------------ credentials
json_field() { "$PYTHON" -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }

# Joins $1 to the demo event with the service key and waits until the entry
# is admitted (the demo admits 5 users a second); prints the queue token.
admitted_token() {
    local user=$1 token status
    token="$(curl -fsS -X POST "$base/v1/events/demo-concert/queue" \
        -H "X-Api-Key: $service_key" -H 'Content-Type: application/json' \
        -d "{\"user_id\":\"$user\"}" | json_field token)" || die "cannot join $user"
    for _ in $(seq 1 100); do
        status="$(curl -fsS "$base/v1/queue/status" -H "Authorization: Bearer $token" | json_field status)" ||
            die "cannot read the queue status of $user"
        [[ $status == admitted ]] && { printf '%s' "$token"; return; }
        sleep 0.2
    done
    die "$user was not admitted within 20 s"
}

# Holds one seat of day-2 with queue token $1; prints the hold id.
hold_one() {
    curl -fsS -X POST "$base/v1/holds" -H "Authorization: Bearer $1" -H 'Content-Type: application/json' \
        -d '{"schedule_id":"day-2","count":1}' | json_field hold_id
}

# st-buyer pays once (a payment to read: GET /v1/payments/{id} and the
# user's lists), then joins again and holds a seat (a live hold to read and
# release); that second, admitted entry's token is the one of the run.
curl -fsS -X POST "$base/v1/users/st-buyer/wallet/charges" -H "X-Api-Key: $service_key" \
    -H 'Content-Type: application/json' -d '{"amount":"1000000"}' >/dev/null || die "cannot charge st-buyer's wallet"
first="$(admitted_token st-buyer)"
paid_hold="$(hold_one "$first")" || die "cannot hold a seat for st-buyer"
ST_PAYMENT_ID="$(curl -fsS -X POST "$base/v1/payments" -H "Authorization: Bearer $first" \
    -H 'Content-Type: application/json' -d "{\"hold_id\":\"$paid_hold\"}" | json_field payment_id)" ||
    die "cannot pay st-buyer's hold"
ST_QUEUE_TOKEN="$(admitted_token st-buyer)"
ST_HOLD_ID="$(hold_one "$ST_QUEUE_TOKEN")" || die "cannot hold a second seat for st-buyer"
# DELETE /v1/queue ends the entry of its token: it gets its own.
ST_LEAVE_TOKEN="$(admitted_token st-leaver)"
ST_USER_ASSERTION="$("$BIN" user-token st-buyer --ttl 1h)" || die "boxoffice user-token failed"
export ST_QUEUE_TOKEN ST_LEAVE_TOKEN ST_USER_ASSERTION ST_SERVICE_KEY="$service_key" ST_HOLD_ID ST_PAYMENT_ID

# ------------------------------------------------------------ the run
started=$SECONDS
# shellcheck disable=SC2086
"$VENV/bin/schemathesis" --config-file scripts/schemathesis/schemathesis.toml run "$base/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --seed "${ST_SEED:-20261130}" --max-examples "${ST_MAX_EXAMPLES:-50}" \
    --workers 2 --no-color --request-timeout 10 --generation-database none \
    --report junit --report-dir "$work/report" ${ST_ARGS:-} ||
    die "schemathesis found failures (above); reproduce with scripts/schemathesis.sh"
kill -0 "$server_pid" 2>/dev/null || die "boxoffice serve died during the run"
echo "schemathesis: passed in $((SECONDS - started)) s"
