#!/usr/bin/env bash
# Runs every test of the workspace against real peers.
#
# Installs (once) what the tests need that a fresh machine lacks: Debian's
# etcd, curl, openssl and a kube-apiserver built from Debian's source package
# (cached under ~/.cache/capstan, ~5-9 min the first time), Prometheus,
# Alertmanager and Schemathesis (PyPI). Then runs `cargo test --workspace`
# and the API contract check (tests/contract.sh) against the built server.
# Extra arguments go to cargo test. Some tests mount a small tmpfs (a full
# disk), so run as root, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain (rust-toolchain.toml; wasm32-wasip2 target)"
rustup show active-toolchain
rustup target add wasm32-wasip2 >/dev/null

step "test peers: Prometheus, Alertmanager, etcd, curl, openssl, kube-apiserver"
if ! command -v prometheus >/dev/null || ! command -v prometheus-alertmanager >/dev/null; then
    as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null
fi
bash .ci/kube-testenv.sh install
bash .ci/kube-testenv.sh build

step "cargo test --workspace --no-fail-fast"
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?

step "API contract: Schemathesis against the served OpenAPI document"
cargo build -p capstan --bin capstan --quiet
bash tests/contract.sh || status=$?
exit $status
