#!/usr/bin/env bash
# Runs every test of the workspace against real peers.
#
# Installs (once) what the tests need that a fresh machine lacks: Debian's
# etcd, curl, openssl and a kube-apiserver built from Debian's source package
# (cached under ~/.cache/capstan, ~5-9 min the first time), Prometheus,
# Alertmanager, HAProxy, Redis, MariaDB, PostgreSQL and Schemathesis (PyPI). Starts a
# throwaway PostgreSQL cluster (.ci/postgres.sh: /tmp/capstan-pg, port 55432
# or the next free one; left running for the next run, `bash .ci/postgres.sh
# stop` stops it) and exports its URL as CAPSTAN_TEST_PG, unless
# CAPSTAN_TEST_PG is already set (a PostgreSQL of your own: role with
# CREATEDB). Then runs `cargo test --workspace`, the end-to-end tests (the
# capstan-tests crate) a second time with every server on PostgreSQL, and
# the API contract check (tests/contract.sh) against the built server. Extra arguments go to cargo
# test. Some tests mount a small tmpfs (a full disk), so run as root, as CI
# does.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain (rust-toolchain.toml; wasm32-wasip2 target)"
rustup show active-toolchain
rustup target add wasm32-wasip2 >/dev/null

step "test peers: Prometheus, Alertmanager, HAProxy, etcd, curl, openssl, kube-apiserver"
missing=()
need() { [ -x "$2" ] || missing+=("$1"); }  # package, the binary the tests run
need prometheus /usr/bin/prometheus
need prometheus-alertmanager /usr/bin/prometheus-alertmanager
need haproxy /usr/sbin/haproxy
need redis-server /usr/bin/redis-server
need mariadb-server /usr/sbin/mariadbd
if [ ${#missing[@]} -gt 0 ]; then
    as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
bash .ci/kube-testenv.sh install
bash .ci/kube-testenv.sh build

step "PostgreSQL (.ci/postgres.sh)"
if [ -z "${CAPSTAN_TEST_PG:-}" ]; then
    CAPSTAN_TEST_PG=$(bash .ci/postgres.sh start)
fi
export CAPSTAN_TEST_PG
echo "CAPSTAN_TEST_PG=$(sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#' <<<"$CAPSTAN_TEST_PG")"

# With PostgreSQL at hand, a test that would quietly skip it fails instead.
export CAPSTAN_REQUIRE_PG=1

step "cargo test --workspace --no-fail-fast (store tests on SQLite and PostgreSQL; servers on SQLite)"
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?

step "the end-to-end tests again, every server on PostgreSQL (CAPSTAN_TEST_BACKEND=postgres)"
CAPSTAN_TEST_BACKEND=postgres cargo test -p capstan-tests --no-fail-fast "$@" || status=$?

step "API contract: Schemathesis against the served OpenAPI document"
# The server, and the test cluster for its provisions (kube-testenv).
cargo build -p capstan -p capstan-tests --bin capstan --bin kube-testenv --quiet
bash tests/contract.sh || status=$?
exit $status
