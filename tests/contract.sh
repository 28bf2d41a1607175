#!/usr/bin/env bash
# The API contract, checked as an API caller would: Schemathesis (property-
# based, every check, fixed seed) against the OpenAPI document the server
# serves, with the bundled plugins loaded. Exceptions are in
# tests/contract/schemathesis.toml, each with its reason. Before the run,
# tests/contract/seed.py stores one object of each kind (pipeline, runs
# waiting for approval, channel, delivery, route, alert group, provision and
# plan when there is a cluster) and hands their
# names and ids to the fuzzer, so that its requests reach the handlers' logic
# rather than 404. Fails on any failure.
#
#   tests/contract.sh [CAPSTAN_BINARY]     (default: target/debug/capstan)
#
# With the test kube-apiserver at hand (.ci/kube-testenv.sh build) and
# target/debug/kube-testenv built, the server gets a real cluster `test`, so
# that provisions, plans and applies are fuzzed against it too.
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
pid=
cleanup() {
    [ -z "$pid" ] || { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; } || true
    exec 4>&- 2>/dev/null || true  # kube-testenv stops when its stdin closes
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token="contract-admin-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
# No per-token rate limit: the fuzzer sends thousands of requests.
printf '[api]\nrate_limit_per_sec = 0\n' > "$work/capstan.toml"
kube_env=${CARGO_TARGET_DIR:-target}/debug/kube-testenv
wasm=${CARGO_TARGET_DIR:-target}/wasm-guests/wasm32-wasip2/guest/project_provisioner.wasm
kube_apiserver=${CAPSTAN_KUBE_APISERVER:-${CAPSTAN_CACHE:-$HOME/.cache/capstan}/kube/bin/kube-apiserver}
cluster=
if [ -x "$kube_env" ] && [ -x "$kube_apiserver" ] && [ -f "$wasm" ]; then
    # It runs until fd 4, the write end of its stdin, closes (with this script).
    mkfifo "$work/kube.in"
    "$kube_env" < "$work/kube.in" > "$work/kube.out" 2> "$work/kube.log" &
    kube_pid=$!
    exec 4> "$work/kube.in"
    for _ in $(seq 600); do
        [ -s "$work/kube.out" ] && break
        kill -0 "$kube_pid" 2>/dev/null || { cat "$work/kube.log" >&2; echo "kube-testenv exited" >&2; exit 1; }
        sleep 0.1
    done
    [ -s "$work/kube.out" ] || { echo "kube-testenv did not start in 60 s" >&2; exit 1; }
    printf '[[kube.clusters]]\nname = "test"\nkubeconfig = "%s"\n' "$(head -1 "$work/kube.out")" >> "$work/capstan.toml"
    cluster=test
else
    echo "contract: no test kube-apiserver ($kube_apiserver), $kube_env or built project-provisioner: provisions are fuzzed without a cluster" >&2
fi
CAPSTAN_ADMIN_TOKEN=$token RUST_LOG=warn "$bin" serve --config "$work/capstan.toml" \
    --listen "127.0.0.1:$port" --data-dir "$work/data" > "$work/server.log" 2>&1 4>&- &
pid=$!
for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/server.log"; echo "capstan exited" >&2; exit 1; }
    sleep 0.2
done
cp tests/contract/schemathesis.toml "$work/schemathesis.toml"
python3 tests/contract/seed.py "http://127.0.0.1:$port" "$token" $cluster ${cluster:+"$wasm"} >> "$work/schemathesis.toml" ||
    { tail -20 "$work/server.log"; echo "seeding the server failed" >&2; exit 1; }
status=0
schemathesis --config-file "$work/schemathesis.toml" run \
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
