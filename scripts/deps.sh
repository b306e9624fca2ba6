#!/usr/bin/env bash
# Make sure Redis and PostgreSQL answer and that the database exists, then
# write .deps/env (export REDIS_URL=... / export DATABASE_URL=...).
#
# Works on a fresh Debian machine, as root or with passwordless sudo, without
# systemd. Order of preference for each service:
#   1. something already answers on the URL's host:port -> use it;
#   2. local host: install the Debian package if missing (root/sudo) and start
#      a server on that port (Redis in .deps/, PostgreSQL as a Debian cluster,
#      or, without root, a private cluster in .deps/);
#   3. a running Docker engine -> `docker compose up -d <service>`;
#   4. print what to install and exit 1.
#
# Inputs: REDIS_URL    (default redis://127.0.0.1:6379)
#         DATABASE_URL (default postgres://postgres@127.0.0.1:5432/boxoffice)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/.deps"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/boxoffice}"
export PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-5}"

mkdir -p "$DEPS"

say() { printf '%s\n' "$*"; }
die() {
    printf 'deps: ERROR: %s\n' "$1" >&2
    shift
    local line
    for line in "$@"; do printf '      %s\n' "$line" >&2; done
    exit 1
}

# URL with any password replaced by ***, for printing.
mask() {
    if [[ $1 =~ ^([^:/]+://[^:/@]*):[^@]*@(.*)$ ]]; then
        printf '%s:***@%s' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
    else
        printf '%s' "$1"
    fi
}

# Split "host[:port]" or "[v6addr][:port]" into HP_HOST / HP_PORT.
split_hostport() {
    local hp="$1" default_port="$2"
    local re6='^\[([^]]+)\](:([0-9]+))?$' re4='^([^:]*)(:([0-9]+))?$'
    if [[ $hp =~ $re6 ]] || [[ $hp =~ $re4 ]]; then
        HP_HOST="${BASH_REMATCH[1]:-127.0.0.1}"
        HP_PORT="${BASH_REMATCH[3]:-$default_port}"
    else
        return 1
    fi
}

is_local() {
    case "$1" in
        127.0.0.1 | localhost | ::1) return 0 ;;
        *) return 1 ;;
    esac
}

# ---------------------------------------------------------------- parse URLs
case "$REDIS_URL" in
    redis://*) ;;
    *) die "REDIS_URL must look like redis://host:port[/db], got '$(mask "$REDIS_URL")'" ;;
esac
_rest="${REDIS_URL#redis://}"
_rest="${_rest%%/*}"
_rest="${_rest%%\?*}"
split_hostport "${_rest##*@}" 6379 || die "cannot parse host:port in REDIS_URL '$(mask "$REDIS_URL")'"
REDIS_HOST="$HP_HOST" REDIS_PORT="$HP_PORT"

case "$DATABASE_URL" in
    postgres://* | postgresql://*) ;;
    *) die "DATABASE_URL must look like postgres://user[:pass]@host:port/db, got '$(mask "$DATABASE_URL")'" ;;
esac
_scheme="${DATABASE_URL%%://*}"
_rest="${DATABASE_URL#*://}"
_query=""
if [[ $_rest == *\?* ]]; then
    _query="?${_rest#*\?}"
    _rest="${_rest%%\?*}"
fi
_auth="${_rest%%/*}" # user[:pass]@host:port
_path=""
[[ $_rest == */* ]] && _path="${_rest#*/}"
PG_USER=""
if [[ $_auth == *@* ]]; then
    _userinfo="${_auth%@*}"
    PG_USER="${_userinfo%%:*}"
fi
PG_USER="${PG_USER:-$(id -un)}"
split_hostport "${_auth##*@}" 5432 || die "cannot parse host:port in DATABASE_URL '$(mask "$DATABASE_URL")'"
PG_HOST="$HP_HOST" PG_PORT="$HP_PORT"
PG_DB="${_path:-$PG_USER}"
ADMIN_URL="${_scheme}://${_auth}/postgres${_query}"

# ------------------------------------------------------- privileges, apt, docker
SUDO=()
CAN_ROOT=0
if [[ $(id -u) -eq 0 ]]; then
    CAN_ROOT=1
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
    CAN_ROOT=1
fi

can_apt() { [[ $CAN_ROOT -eq 1 ]] && command -v apt-get >/dev/null 2>&1; }

APT_UPDATED=0
apt_install() {
    local log="$DEPS/apt.log"
    if [[ $APT_UPDATED -eq 0 ]]; then
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update >>"$log" 2>&1 ||
            { tail -n 20 "$log" >&2; die "apt-get update failed (full log: $log)"; }
        APT_UPDATED=1
    fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >>"$log" 2>&1 ||
        { tail -n 20 "$log" >&2; die "apt-get install $* failed (full log: $log)"; }
}

docker_ok() {
    command -v docker >/dev/null 2>&1 && timeout 15 docker info >/dev/null 2>&1
}

compose_up() { # compose_up SERVICE
    local -a compose=(docker compose)
    if ! docker compose version >/dev/null 2>&1; then
        command -v docker-compose >/dev/null 2>&1 ||
            die "a Docker engine runs but neither 'docker compose' nor 'docker-compose' is installed" \
                "install the compose plugin: apt-get install -y docker-compose-plugin"
        compose=(docker-compose)
    fi
    (cd "$ROOT" && REDIS_PORT="$REDIS_PORT" POSTGRES_PORT="$PG_PORT" "${compose[@]}" up -d "$1") >>"$DEPS/compose.log" 2>&1 ||
        { tail -n 20 "$DEPS/compose.log" >&2; die "docker compose up -d $1 failed (full log: $DEPS/compose.log)"; }
}

# wait_until SECONDS CMD...: poll CMD every 0.2 s.
wait_until() {
    local tries=$(($1 * 5))
    shift
    while ((tries-- > 0)); do
        "$@" && return 0
        sleep 0.2
    done
    return 1
}

# -------------------------------------------------------------------- Redis
redis_ping() {
    local out
    if command -v redis-cli >/dev/null 2>&1; then
        out="$(timeout 3 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>&1)" || true
    else
        # shellcheck disable=SC2016 # $0/$1 expand in the child bash
        out="$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "PING\r\n" >&3 && IFS= read -r l <&3 && printf "%s" "$l"' \
            "$REDIS_HOST" "$REDIS_PORT" 2>/dev/null)" || true
    fi
    # NOAUTH: a password-protected server still counts as "answering".
    [[ $out == PONG* || $out == +PONG* || $out == *NOAUTH* ]]
}

redis_start_local() {
    local dir="$DEPS/redis-$REDIS_PORT" log="$DEPS/redis-$REDIS_PORT.log"
    mkdir -p "$dir"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
        --save "" --appendonly no --dir "$dir" --logfile "$log" \
        --pidfile "$DEPS/redis-$REDIS_PORT.pid" ||
        die "redis-server failed to start on port $REDIS_PORT (log: $log)"
    wait_until 10 redis_ping ||
        { tail -n 20 "$log" >&2 || true; die "redis-server on port $REDIS_PORT did not answer PING within 10 s (log: $log)"; }
}

REDIS_SHOWN="$(mask "$REDIS_URL")"
if redis_ping; then
    say "redis: using $REDIS_SHOWN (already running)"
elif is_local "$REDIS_HOST"; then
    did=""
    if ! command -v redis-server >/dev/null 2>&1 && can_apt; then
        apt_install redis-server redis-tools
        did="installed redis-server with apt-get and "
    fi
    if [[ -n $did ]] && wait_until 3 redis_ping; then
        say "redis: ${did}using $REDIS_SHOWN (started by the package)"
    elif command -v redis-server >/dev/null 2>&1; then
        redis_start_local
        say "redis: ${did}started redis-server on 127.0.0.1:$REDIS_PORT (no persistence; log .deps/redis-$REDIS_PORT.log; stop: redis-cli -p $REDIS_PORT shutdown nosave)"
    elif docker_ok; then
        compose_up redis
        wait_until 60 redis_ping || die "docker compose service redis did not answer on port $REDIS_PORT within 60 s"
        say "redis: started docker compose service redis on port $REDIS_PORT"
    else
        die "nothing answers on $REDIS_HOST:$REDIS_PORT and I cannot start Redis here (no redis-server, no root or passwordless sudo to install it, no running Docker engine)." \
            "Install it:       sudo apt-get install -y redis-server" \
            "or start Docker:  docker compose up -d redis" \
            "then re-run scripts/deps.sh (or set REDIS_URL to a running Redis 7)."
    fi
else
    die "REDIS_URL points to $REDIS_HOST:$REDIS_PORT, which does not answer PING." \
        "Start Redis there, or unset REDIS_URL to use/start a local one on 127.0.0.1:6379."
fi
# The scripts are a Redis function library (FUNCTION LOAD, Redis 7.0+).
if command -v redis-cli >/dev/null 2>&1; then
    REDIS_VERSION="$(timeout 3 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" info server 2>/dev/null | tr -d '\r' | sed -n 's/^redis_version://p')"
    [[ -z $REDIS_VERSION || ${REDIS_VERSION%%.*} -ge 7 ]] ||
        die "Redis on $REDIS_SHOWN is $REDIS_VERSION; boxoffice needs Redis 7.0 or later (its scripts are a function library)."
fi

# --------------------------------------------------------------- PostgreSQL
pg_ping() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 3
    else
        # shellcheck disable=SC2016 # $0/$1 expand in the child bash
        timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$PG_HOST" "$PG_PORT" 2>/dev/null
    fi
}

pg_server_bindir() { # newest installed server's bin dir, or fail
    local d best
    # glob order is lexical; pick the highest major version numerically
    best="$(for d in /usr/lib/postgresql/*/bin; do if [[ -x $d/postgres ]]; then printf '%s\n' "$d"; fi; done | sort -V | tail -n 1)"
    [[ -n $best ]] && printf '%s' "$best"
}

# Prints "VER NAME STATUS" of the Debian cluster configured on $PG_PORT, if any.
pg_cluster_on_port() {
    pg_lsclusters --no-header 2>/dev/null | awk -v p="$PG_PORT" '$3 == p { print $1, $2, $4; exit }'
}

# Put local trust rules at the top of a Debian cluster's pg_hba.conf (once).
pg_trust_local() { # VER NAME
    local hba="/etc/postgresql/$1/$2/pg_hba.conf" tmp
    "${SUDO[@]}" grep -q 'boxoffice scripts/deps.sh' "$hba" && return 0
    tmp="$(mktemp)"
    {
        printf '# boxoffice scripts/deps.sh: passwordless TCP from this machine, for development\n'
        printf 'host all all 127.0.0.1/32 trust\n'
        printf 'host all all ::1/128 trust\n'
        "${SUDO[@]}" cat "$hba"
    } >"$tmp"
    "${SUDO[@]}" cp "$tmp" "$hba" # cp onto an existing file keeps its owner and mode
    rm -f "$tmp"
}

pg_ctl_cluster() { # VER NAME ACTION
    "${SUDO[@]}" pg_ctlcluster --skip-systemctl-redirect "$1" "$2" "$3" >>"$DEPS/postgres.log" 2>&1 ||
        { tail -n 20 "$DEPS/postgres.log" >&2; die "pg_ctlcluster $1 $2 $3 failed (log: $DEPS/postgres.log, /var/log/postgresql/postgresql-$1-$2.log)"; }
}

# Debian cluster path (root or sudo). $1 = 1 if postgresql was just installed.
pg_start_debian_cluster() {
    local fresh="$1" ver name status created=0 trusted="" did=""
    read -r ver name status < <(pg_cluster_on_port) || true
    if [[ -z ${ver:-} ]]; then
        ver="$(basename "$(dirname "$(pg_server_bindir)")")"
        name=boxoffice
        [[ -d /etc/postgresql/$ver/$name ]] && name="boxoffice-$PG_PORT"
        "${SUDO[@]}" pg_createcluster "$ver" "$name" -p "$PG_PORT" >>"$DEPS/postgres.log" 2>&1 ||
            { tail -n 20 "$DEPS/postgres.log" >&2; die "pg_createcluster $ver $name -p $PG_PORT failed (log: $DEPS/postgres.log)"; }
        created=1
        status=down
    fi
    if [[ $created -eq 1 || $fresh -eq 1 ]]; then
        pg_trust_local "$ver" "$name"
        trusted="; pg_hba.conf: trust for 127.0.0.1/32 and ::1/128"
    fi
    [[ $fresh -eq 1 ]] && did="installed postgresql with apt-get and "
    if [[ $status == online* ]]; then
        # e.g. the package's postinst already started it
        pg_ctl_cluster "$ver" "$name" reload
        did="${did}reloaded cluster $ver/$name on port $PG_PORT"
    else
        pg_ctl_cluster "$ver" "$name" start
        [[ $created -eq 1 ]] && did="${did}created and "
        did="${did}started cluster $ver/$name on port $PG_PORT"
    fi
    wait_until 20 pg_ping || die "cluster $ver/$name does not answer on $PG_HOST:$PG_PORT (log: /var/log/postgresql/postgresql-$ver-$name.log)"
    say "postgres: ${did}${trusted} (stop: pg_ctlcluster $ver $name stop; remove: pg_dropcluster --stop $ver $name)"
}

# Private cluster in .deps/ for a non-root user without sudo.
pg_start_private_cluster() {
    local bindir data="$DEPS/pg-$PG_PORT" log="$DEPS/pg-$PG_PORT.log" did=""
    bindir="$(pg_server_bindir)"
    if [[ ! -f $data/PG_VERSION ]]; then
        "$bindir/initdb" -D "$data" -U "$PG_USER" --auth=trust -E UTF8 >>"$DEPS/postgres.log" 2>&1 ||
            { tail -n 20 "$DEPS/postgres.log" >&2; die "initdb -D $data failed (log: $DEPS/postgres.log)"; }
        did="created (trust auth) and "
    fi
    "$bindir/pg_ctl" -D "$data" -l "$log" -w -t 20 \
        -o "-p $PG_PORT -c listen_addresses=localhost -c unix_socket_directories=''" start >>"$DEPS/postgres.log" 2>&1 ||
        { tail -n 20 "$log" >&2 || true; die "pg_ctl start failed (log: $log)"; }
    wait_until 20 pg_ping || die "private cluster does not answer on $PG_HOST:$PG_PORT (log: $log)"
    say "postgres: ${did}started private cluster .deps/pg-$PG_PORT on port $PG_PORT (stop: $bindir/pg_ctl -D .deps/pg-$PG_PORT stop)"
}

PG_SHOWN="$(mask "$DATABASE_URL")"
if pg_ping; then
    say "postgres: using ${PG_HOST}:${PG_PORT} (already running)"
elif is_local "$PG_HOST"; then
    fresh=0
    if ! pg_server_bindir >/dev/null && can_apt; then
        apt_install postgresql
        fresh=1
    fi
    if pg_server_bindir >/dev/null && command -v pg_lsclusters >/dev/null 2>&1 && [[ $CAN_ROOT -eq 1 ]]; then
        pg_start_debian_cluster "$fresh"
    elif pg_server_bindir >/dev/null && [[ $(id -u) -ne 0 ]]; then
        pg_start_private_cluster
    elif docker_ok; then
        compose_up postgres
        wait_until 60 pg_ping || die "docker compose service postgres did not answer on port $PG_PORT within 60 s"
        say "postgres: started docker compose service postgres on port $PG_PORT"
    else
        die "nothing answers on $PG_HOST:$PG_PORT and I cannot start PostgreSQL here (that needs Debian's postgresql packages plus root or passwordless sudo, or a running Docker engine)." \
            "Install it:       sudo apt-get install -y postgresql" \
            "or start Docker:  docker compose up -d postgres" \
            "then re-run scripts/deps.sh (or set DATABASE_URL to a running PostgreSQL 15+)."
    fi
else
    die "DATABASE_URL points to $PG_HOST:$PG_PORT, which does not answer." \
        "Start PostgreSQL there, or unset DATABASE_URL to use/start a local one on 127.0.0.1:5432."
fi

# ----------------------------------------------------------------- database
if ! command -v psql >/dev/null 2>&1; then
    if can_apt; then
        apt_install postgresql-client
        say "psql: installed postgresql-client with apt-get"
    else
        die "psql is missing and I cannot install it (not root, no passwordless sudo)." \
            "Install it: sudo apt-get install -y postgresql-client"
    fi
fi

if [[ $PG_DB == postgres ]]; then
    say "database: postgres (built in, nothing to create)"
else
    err="$DEPS/psql.err"
    if ! exists="$(psql -X -v ON_ERROR_STOP=1 -tA "$ADMIN_URL" \
        -c "select 1 from pg_database where datname = '${PG_DB//\'/\'\'}'" 2>"$err")"; then
        cat "$err" >&2
        die "cannot connect to $(mask "$ADMIN_URL") as '$PG_USER'." \
            "If the server wants a password, put it in DATABASE_URL (postgres://user:pass@host:port/db)," \
            "or allow local trust: add 'host all all 127.0.0.1/32 trust' at the top of pg_hba.conf and reload."
    fi
    if [[ $exists == 1 ]]; then
        say "database: $PG_DB already exists"
    else
        psql -X -q -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "create database \"${PG_DB//\"/\"\"}\"" 2>"$err" ||
            { cat "$err" >&2; die "create database $PG_DB failed on $PG_HOST:$PG_PORT"; }
        say "database: created $PG_DB on $PG_HOST:$PG_PORT"
    fi
    rm -f "$err"
fi

# ------------------------------------------------ Chromium (make test only)
# The dashboard test renders the page in headless Chromium. `--with-chromium`
# installs Debian's package when missing; without root the test skips with
# a message instead of failing.
if [[ ${1:-} == --with-chromium ]]; then
    if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
        say "chromium: found ($(command -v chromium || command -v chromium-browser))"
    elif can_apt; then
        # Not fatal: without it only the dashboard test is skipped.
        if (apt_install chromium); then
            say "chromium: installed Debian's chromium for the dashboard test"
        else
            say "chromium: apt-get install chromium failed: the dashboard test will be skipped"
        fi
    else
        say "chromium: not installed and no root/apt: the dashboard test will be skipped (apt-get install chromium)"
    fi
fi

# ---------------------------------------------------------------- .deps/env
{
    printf '# written by scripts/deps.sh; source it: . .deps/env\n'
    printf 'export REDIS_URL=%q\n' "$REDIS_URL"
    printf 'export DATABASE_URL=%q\n' "$DATABASE_URL"
} >"$DEPS/env"
say "env: wrote .deps/env"
say "deps: ready: REDIS_URL=$REDIS_SHOWN DATABASE_URL=$PG_SHOWN (. .deps/env to export them)"
