#!/usr/bin/env python3
"""Seeds a contract-run server with one object of each kind, then prints
Schemathesis dictionaries and per-operation bindings (TOML) that hand the
objects' names and ids to the fuzzer, so that its requests reach the
handlers' logic instead of answering 404 for random names.

    seed.py BASE_URL ADMIN_TOKEN [CLUSTER PROVISIONER_WASM] > extra.toml

With CLUSTER (a cluster of the server's config, a real kube-apiserver) and
the bundled project-provisioner's component, that plugin is uploaded again
as 1.2.0 with the kube grants its manifest documents (commented out there),
and a provision of it with one plan is stored too.

Bindings draw a seeded value with probability 0.7 and a generated one
otherwise. Deletions of whole objects are not bound: the fuzzer would
delete what the other operations need early in the run.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

BASE, ADMIN = sys.argv[1].rstrip("/"), sys.argv[2]
CLUSTER = sys.argv[3] if len(sys.argv) > 3 else ""
PROVISIONER_WASM = sys.argv[4] if len(sys.argv) > 4 else ""


def call(method, path, body=None, token=ADMIN, ok=(200, 201, 202, 204), raw=None):
    data = None if body is None else json.dumps(body).encode()
    content_type = "application/json"
    if raw is not None:
        data, content_type = raw
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    if status not in ok:
        sys.exit(f"seed: {method} {path} answered {status}: {text}")
    return json.loads(text) if text else None


def wait_for(what, probe, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    sys.exit(f"seed: {what} did not happen within {timeout:.0f} s")


PIPELINE = {
    "name": "contract",
    "project": "default",
    "triggers": [
        {"push": {"provider": "github", "repo": "acme/shop",
                  "branches": ["main"], "secret": "contract-hook"}},
        "manual",
    ],
    "steps": [
        {"id": "render", "plugin": "render-deployment",
         "params": {"name": "web", "image": "registry.local/web:1.4.2",
                    "replicas": 2, "port": 8080}},
        {"id": "gate", "needs": ["render"],
         "approval": {"approvers": {"role": "admin"}, "required": 1, "timeout": "24h"}},
    ],
}

ALERT_GROUP = {
    "version": "4", "groupKey": '{}:{alertname="DiskFull"}', "truncatedAlerts": 0,
    "status": "firing", "receiver": "contract", "groupLabels": {"alertname": "DiskFull"},
    "commonLabels": {"alertname": "DiskFull", "team": "web"}, "commonAnnotations": {},
    "externalURL": "http://alertmanager.local:9093",
    "alerts": [{
        "status": "firing", "labels": {"alertname": "DiskFull", "team": "web"},
        "annotations": {"summary": "disk full"}, "startsAt": "2026-12-03T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus.local/graph",
        "fingerprint": "c0ffee0000000001",
    }],
}


def granted_provisioner():
    """The bundled manifest with its documented kube grants, as 1.2.0."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "..", "plugins", "project-provisioner", "capstan.toml")
    lines, grants = [], False
    for line in open(path, encoding="utf-8").read().splitlines():
        if line.startswith('version = '):
            line = 'version = "1.2.0"'
        grants = grants or line == "# [[grants.kube]]"
        if grants and line.startswith("# "):
            line = line[2:]
        lines.append(line)
    return "\n".join(lines) + "\n"


def upload(manifest, component):
    boundary = "contract-seed-boundary"
    parts = []
    for name, content_type, payload in [
            ("manifest", "text/plain", manifest.encode()),
            ("component", "application/wasm", component)]:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                     f'filename="{name}"\r\nContent-Type: {content_type}\r\n\r\n'.encode()
                     + payload + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    call("POST", "/v1/plugins?activate=true",
         raw=(body, f"multipart/form-data; boundary={boundary}"))


def pending_approvals(n):
    ids = [a["id"] for a in call("GET", "/v1/approvals?state=pending")["approvals"]]
    return ids if len(ids) >= n else None


def seed():
    call("PUT", "/v1/secrets/contract-hook", {"value": "contract-webhook-secret"})
    # A second admin starts the runs, so that the fuzzer's admin may decide
    # their approvals (the one who starts a run may not approve it).
    # Admin of project `default` only: the fuzzer may revoke tokens, but never
    # the last global admin (its own).
    starter = call("POST", "/v1/tokens",
                   {"name": "contract-starter", "projects": {"default": "admin"}})["token"]
    call("PUT", "/v1/pipelines/contract", PIPELINE)
    runs = [call("POST", "/v1/pipelines/contract/runs", {}, token=starter)["run"]["id"]
            for _ in range(3)]
    approvals = wait_for("the runs' approvals", lambda: pending_approvals(len(runs)))
    call("PUT", "/v1/notify/channels/contract",
         {"name": "contract", "project": "default", "type": "slack",
          "webhook_secret": "contract-hook"})
    delivery = call("POST", "/v1/notify/channels/contract/send",
                    {"body": "contract seed", "idempotency_key": "contract-seed"})["id"]
    call("PUT", "/v1/alerts/routes/contract",
         {"project": "default", "handlers": ["alert-notify"], "matchers": ['team="web"']})
    call("POST", "/v1/alerts/alertmanager/contract", ALERT_GROUP)
    groups = wait_for("the alert group", lambda: [
        g["id"] for g in call("GET", "/v1/alerts/groups")["groups"]])
    provisions, plans = [], []
    if CLUSTER:
        with open(PROVISIONER_WASM, "rb") as f:
            upload(granted_provisioner(), f.read())
        call("POST", "/v1/provisions",
             {"name": "contract", "plugin": "project-provisioner", "cluster": CLUSTER,
              "project": "default",
              "spec": {"name": "shop", "team": "payments", "environments": ["dev"]}})
        provisions = ["contract"]
        plans = [call("POST", "/v1/provisions/contract/plans")["id"]]
    return {
        "provisions": provisions or ["contract"],
        "plans": plans or ["none"],
        "plugins": ["render-deployment", "http-step", "alert-notify", "project-provisioner"],
        "versions": ["1.0.0", "1.1.0"],
        "pipelines": ["contract"],
        "runs": runs,
        "approvals": approvals,
        "channels": ["contract"],
        "deliveries": [delivery],
        "routes": ["contract"],
        "groups": groups,
        "projects": ["default"],
        "providers": ["github", "gitlab"],
    }


# (path regex, the one method, or None for every method but DELETE,
#  {path parameter: dictionary})
BINDINGS = [
    ("^/v1/plugins/\\{name\\}", None, {"name": "plugins"}),
    ("^/v1/plugins/\\{name\\}/versions/\\{version\\}$", "DELETE",
     {"name": "plugins", "version": "versions"}),
    ("^/v1/pipelines/\\{name\\}", None, {"name": "pipelines"}),
    ("^/v1/runs/\\{id\\}", None, {"id": "runs"}),
    ("^/v1/approvals/\\{id\\}", None, {"id": "approvals"}),
    ("^/v1/notify/channels/\\{name\\}", None, {"name": "channels"}),
    ("^/v1/notify/deliveries/\\{id\\}$", None, {"id": "deliveries"}),
    ("^/v1/alerts/routes/\\{name\\}$", None, {"name": "routes"}),
    ("^/v1/alerts/groups/\\{id\\}$", None, {"id": "groups"}),
    ("^/v1/alerts/alertmanager/\\{receiver\\}$", None, {"receiver": "routes"}),
    ("^/v1/ceilings/\\{project\\}", None, {"project": "projects"}),
    ("^/v1/ceilings/\\{project\\}/\\{plugin\\}$", None,
     {"project": "projects", "plugin": "plugins"}),
    ("^/v1/provisions/\\{name\\}", None, {"name": "provisions"}),
    ("^/v1/provisions/\\{name\\}/plans/\\{id\\}", None,
     {"name": "provisions", "id": "plans"}),
    ("^/v1/hooks/\\{provider\\}/\\{pipeline\\}$", None,
     {"provider": "providers", "pipeline": "pipelines"}),
]


def toml_list(values):
    return "[" + ", ".join(json.dumps(str(v)) for v in values) + "]"


def main():
    known = seed()
    out = ["", "# Generated by tests/contract/seed.py for this run."]
    for name, values in known.items():
        out += [f"[dictionaries.{name}]", f"values = {toml_list(values)}", ""]
    for regex, method, params in BINDINGS:
        out += ["[[operations]]", f"include-path-regex = {json.dumps(regex)}",
                f'include-method = "{method}"' if method else 'exclude-method = "DELETE"']
        for param, dictionary in params.items():
            out.append(f'parameters."path.{param}" = '
                       f'{{ dictionary = "{dictionary}", probability = 0.7 }}')
        out.append("")
    print("\n".join(out))


main()
