#!/usr/bin/env bash
# The API contract, checked as an API caller would: Schemathesis (property-
# based, every check, fixed seed) against the OpenAPI document the server
# serves, with the bundled plugins loaded. Exceptions are in
# tests/contract/schemathesis.toml, each with its reason. Fails on any failure.
#
#   tests/contract.sh [CAPSTAN_BINARY]     (default: target/debug/capstan)
#
# Environment: CONTRACT_MAX_TIME (seconds, default 150), CONTRACT_SEED (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-${CARGO_TARGET_DIR:-target}/debug/capstan}
version=4.32.5
if ! schemathesis --version 2>/dev/null | grep -q "$version"; then
    python3 -m pip install -q --disable-pip-version-check "schemathesis==$version"
fi
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token="contract-admin-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
# No per-token rate limit: the fuzzer sends thousands of requests.
printf '[api]\nrate_limit_per_sec = 0\n' > "$work/capstan.toml"
CAPSTAN_ADMIN_TOKEN=$token RUST_LOG=warn "$bin" serve --config "$work/capstan.toml" \
    --listen "127.0.0.1:$port" --data-dir "$work/data" > "$work/server.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/server.log"; echo "capstan exited" >&2; exit 1; }
    sleep 0.2
done
status=0
schemathesis --config-file tests/contract/schemathesis.toml run \
    "http://127.0.0.1:$port/openapi.json" \
    -H "Authorization: Bearer $token" \
    --seed "${CONTRACT_SEED:-1}" --max-time "${CONTRACT_MAX_TIME:-150}" \
    --report junit --report-dir "$work/report" || status=$?
if grep -q "panicked" "$work/server.log"; then
    echo "the server panicked during the contract run:" >&2
    grep -B2 -A8 "panicked" "$work/server.log" >&2
    status=1
fi
exit $status
