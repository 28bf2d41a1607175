#!/usr/bin/env bash
# A throwaway PostgreSQL for the tests, without systemd or containers:
# Debian's `postgresql` package, a cluster of its own made with initdb under
# $CAPSTAN_PG_DIR, listening on 127.0.0.1 only.
#
#   .ci/postgres.sh [start]   install postgresql if missing, create the cluster
#                             if missing, start it if stopped (reuse it if it
#                             runs); print its URL on stdout
#   .ci/postgres.sh url       print the URL of the running cluster (exit 1 if stopped)
#   .ci/postgres.sh reset     drop every database but `capstan` owned by role capstan
#   .ci/postgres.sh stop      stop the cluster (fast shutdown); keeps its files
#   .ci/postgres.sh destroy   stop the cluster and remove $CAPSTAN_PG_DIR
#
# The URL is postgres://capstan:capstan@127.0.0.1:PORT/capstan, also written to
# $CAPSTAN_PG_DIR/url. Role `capstan` (password `capstan`, CREATEDB) owns the
# database `capstan`; tests create one database each. The superuser `postgres`
# connects over the Unix socket in $CAPSTAN_PG_DIR/run without a password:
#   psql -h "$CAPSTAN_PG_DIR/run" -p PORT -U postgres
# Everything on stdout but the URL goes to stderr; the server logs to
# $CAPSTAN_PG_DIR/postgres.log.
#
# As root the cluster belongs to the `postgres` system user (made by the
# package) and commands run through runuser; as another user it belongs to
# that user (installing the package then needs sudo).
#
# Environment:
#   CAPSTAN_PG_DIR    cluster directory (default /tmp/capstan-pg); its parents
#                     must be searchable by the cluster's owner
#   CAPSTAN_PG_PORT   preferred port (default 55432); when it is taken by
#                     something else, the next free one up to +100 is used
set -Eeuo pipefail

DIR="${CAPSTAN_PG_DIR:-/tmp/capstan-pg}"
DATA="$DIR/data"
SOCK="$DIR/run"
LOG="$DIR/postgres.log"
PREFERRED_PORT="${CAPSTAN_PG_PORT:-55432}"
ROLE=capstan
PASSWORD=capstan

log() { printf 'postgres.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
trap 'rc=$?; log "error: command failed (exit $rc) at line $LINENO: $BASH_COMMAND"; exit $rc' ERR

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Runs a command as the cluster's owner: `postgres` when we are root.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

install_package() {
    if [ -n "$(pg_bindir 2>/dev/null)" ]; then return 0; fi
    log "installing Debian's postgresql"
    if [[ "$(apt-cache policy postgresql 2>/dev/null || true)" != *"Candidate: "[0-9]* ]]; then
        as_root apt-get update -qq >/dev/null
    fi
    local out
    out=$(mktemp)
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends postgresql >"$out" 2>&1; then
        tail -n 30 "$out" >&2
        rm -f "$out"
        die "apt-get install postgresql failed"
    fi
    rm -f "$out"
    # The package creates and starts the `main` cluster where systemd or
    # sysvinit runs; the tests do not use it (it would also take port 5432).
}

# The newest installed server's bin directory (/usr/lib/postgresql/N/bin).
pg_bindir() {
    local d
    d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
    [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

running() { [ -d "$DATA" ] && as_owner "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1; }

current_port() { cat "$DIR/port" 2>/dev/null; }

url() { echo "postgres://$ROLE:$PASSWORD@127.0.0.1:$(current_port)/$ROLE"; }

pick_port() {
    local p
    for ((p = PREFERRED_PORT; p <= PREFERRED_PORT + 100; p++)); do
        if ! port_in_use "$p"; then echo "$p"; return 0; fi
    done
    die "no free port in $PREFERRED_PORT..$((PREFERRED_PORT + 100))"
}

init_cluster() {
    mkdir -p "$DIR"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$DIR"; fi
    # Readable by all (the url and port files); initdb makes data/ 0700.
    chmod 755 "$DIR"
    if ! as_owner test -w "$DIR"; then
        die "$DIR is not writable by the cluster's owner: set CAPSTAN_PG_DIR to a directory it can reach (e.g. under /tmp)"
    fi
    log "initdb into $DATA"
    as_owner mkdir -p "$SOCK"
    # Local socket: trust (the superuser, for setup); TCP: passwords only.
    as_owner "$BIN/initdb" -D "$DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >"$DIR/initdb.log" 2>&1 \
        || { tail -n 20 "$DIR/initdb.log" >&2; die "initdb failed"; }
    echo "include_if_exists = 'capstan-test.conf'" | as_owner tee -a "$DATA/postgresql.conf" >/dev/null
}

# Settings for tests, rewritten at every start (the port may change).
write_settings() {
    as_owner tee "$DATA/capstan-test.conf" >/dev/null <<EOF
# Written by .ci/postgres.sh at every start.
listen_addresses = '127.0.0.1'
port = $1
unix_socket_directories = '$SOCK'
# One database per test, each test with a pool of a few connections, several
# test processes at once: 200 leaves headroom over the default 100.
max_connections = 200
# Durable as in production (fsync, synchronous_commit stay on): tests check
# that acknowledged writes survive; the data is small enough for it to be cheap.
shared_buffers = 128MB
# Tests wait on locks (leases): report the deadlocks fast.
deadlock_timeout = 200ms
log_min_messages = warning
log_connections = off
EOF
}

cmd_start() {
    install_package
    BIN=$(pg_bindir) || die "no PostgreSQL server under /usr/lib/postgresql"
    if running; then
        log "reusing the cluster running in $DATA"
    else
        if [ ! -f "$DATA/PG_VERSION" ]; then init_cluster; fi
        local port started=$SECONDS
        port=$(pick_port)
        write_settings "$port"
        echo "$port" >"$DIR/port"
        log "starting PostgreSQL $(cat "$DATA/PG_VERSION") on 127.0.0.1:$port"
        as_owner touch "$LOG"
        if ! as_owner "$BIN/pg_ctl" start -D "$DATA" -l "$LOG" -w -t 60 >/dev/null; then
            tail -n 30 "$LOG" >&2
            die "PostgreSQL did not start"
        fi
        log "started in $((SECONDS - started)) s"
    fi
    setup_role
    url >"$DIR/url"
    url
}

# psql as the superuser over the Unix socket.
superuser_psql() {
    as_owner "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$(current_port)" -U postgres -d postgres "$@"
}

setup_role() {
    superuser_psql >/dev/null <<EOF
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
    CREATE ROLE $ROLE;
  END IF;
END \$\$;
ALTER ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD';
SELECT 'CREATE DATABASE $ROLE OWNER $ROLE'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$ROLE') \gexec
EOF
}

cmd_url() {
    BIN=$(pg_bindir) || die "PostgreSQL is not installed"
    running || die "the cluster in $DATA is not running: run $0 start"
    url
}

cmd_reset() {
    BIN=$(pg_bindir) || die "PostgreSQL is not installed"
    running || die "the cluster in $DATA is not running"
    local dbs
    dbs=$(superuser_psql -At -c "SELECT datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba
        WHERE r.rolname = '$ROLE' AND datname <> '$ROLE'")
    local db n=0
    for db in $dbs; do
        superuser_psql -c "DROP DATABASE \"$db\" WITH (FORCE)"
        n=$((n + 1))
    done
    log "dropped $n database(s)"
}

cmd_stop() {
    BIN=$(pg_bindir) || { log "PostgreSQL is not installed: nothing to stop"; return 0; }
    if running; then
        as_owner "$BIN/pg_ctl" stop -D "$DATA" -m fast -w -t 60 >/dev/null
        log "stopped the cluster in $DATA"
    else
        log "the cluster in $DATA is not running"
    fi
}

cmd_destroy() {
    cmd_stop
    rm -rf "$DIR"
    log "removed $DIR"
}

case "${1:-start}" in
start) cmd_start ;;
url) cmd_url ;;
reset) cmd_reset ;;
stop) cmd_stop ;;
destroy) cmd_destroy ;;
*) die "usage: $0 [start|url|reset|stop|destroy]" ;;
esac
