#!/usr/bin/env bash
# Runs every test of the workspace against real peers.
#
# Installs (once) what the tests need that a fresh machine lacks: Debian's
# etcd, curl, openssl and a kube-apiserver built from Debian's source package
# (cached under ~/.cache/capstan, ~5-9 min the first time). Then runs
# `cargo test --workspace`. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain (rust-toolchain.toml; wasm32-wasip2 target)"
rustup show active-toolchain
rustup target add wasm32-wasip2 >/dev/null

step "test peers: etcd, curl, openssl, kube-apiserver"
bash .ci/kube-testenv.sh install
bash .ci/kube-testenv.sh build

step "cargo test --workspace"
cargo test --workspace "$@"
