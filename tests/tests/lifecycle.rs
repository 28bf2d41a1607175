//! Upload, invoke, replace, roll back, delete, restart: the plugin lifecycle
//! over the real HTTP API, with every kind of malformed plugin refused precisely.

use capstan_tests::{TestServer, bundled, guest, guests, manifest};
use serde_json::{Value, json};

fn step_manifest(version: &str) -> String {
    manifest("step", version, "deploy-step", "")
}

#[tokio::test]
async fn every_bundled_role_is_invoked_with_typed_json() {
    let server = TestServer::start_with(|c| c.bundled_plugins = true).await;
    let (status, list) = server.get("/v1/plugins").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "alert-notify",
            "http-probe",
            "http-step",
            "project-provisioner",
            "render-deployment",
            "tcp-probe",
            "wait-rollout"
        ]
    );

    let (status, body) = server
        .invoke("render-deployment", json!({ "params": { "name": "web", "image": "registry.local/web:1.4.2", "replicas": 3, "port": 8080 } }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["outcome"], "succeeded");
    let objects: Value =
        serde_json::from_str(body["result"]["outputs"]["manifest"].as_str().unwrap()).unwrap();
    assert_eq!(objects[0]["kind"], "Deployment");
    assert_eq!(objects[0]["spec"]["replicas"], 3);
    assert_eq!(objects[1]["kind"], "Service");

    let (status, body) = server
        .invoke(
            "render-deployment",
            json!({ "params": { "name": "web", "image": "nginx:latest" } }),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["details"]["message"]
            .as_str()
            .unwrap()
            .contains("pinned"),
        "{body}"
    );

    let (status, body) = server
        .invoke("project-provisioner", json!({ "spec": { "name": "shop", "team": "payments", "environments": ["dev", "prod"] } }))
        .await;
    assert_eq!(status, 200, "{body}");
    let objects = body["result"]["objects"].as_array().unwrap();
    // Per environment: Namespace, LimitRange, ResourceQuota, the team's
    // RoleBinding and two NetworkPolicies.
    assert_eq!(objects.len(), 12);
    assert_eq!(objects[0]["wave"], 0, "namespaces come first");
    assert!(
        objects
            .iter()
            .any(|o| o["kind"] == "ResourceQuota" && o["namespace"] == "shop-prod")
    );

    // Captured from Alertmanager 0.25 (shared/fixtures/alertmanager/firing-v4.json).
    let fixture = include_str!("../fixtures/firing-v4.json");
    let (status, body) = server
        .invoke("alert-notify", serde_json::from_str(fixture).unwrap())
        .await;
    assert_eq!(status, 200, "{body}");
    let actions = body["result"].as_array().unwrap();
    assert_eq!(actions[0]["type"], "notify");
    assert_eq!(actions[0]["body"]["text"], "FIRING (1): QueueTooDeep");
    assert_eq!(actions[1]["type"], "run_pipeline");
    assert_eq!(actions[1]["pipeline"], "restart-worker");

    let (status, body) = server.invoke("http-probe", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"][0]["name"], "targets");

    // Bundled plugins are granted nothing: wait-rollout's cluster read is denied.
    let (status, body) = server
        .invoke(
            "wait-rollout",
            json!({ "params": { "name": "web", "namespace": "team-a" } }),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["details"]["message"]
            .as_str()
            .unwrap()
            .contains("cluster `default` is not granted"),
        "{body}"
    );
}

#[tokio::test]
async fn malformed_plugins_are_refused_with_precise_errors() {
    let server = TestServer::start().await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not wasm",
            b"#!/bin/sh\necho hi\n".to_vec(),
            "not a WebAssembly binary",
        ),
        (
            "core module",
            wat::parse_str("(module (func (export \"run\")))").unwrap(),
            "core WebAssembly module, not a component",
        ),
        (
            "empty component",
            wat::parse_str("(component)").unwrap(),
            "does not export `capstan:plugin/deploy-step@0.1.0`; it exports no interfaces",
        ),
        (
            "wrong world",
            bundled("project-provisioner").1,
            "it looks like a `provisioner` plugin",
        ),
        (
            "truncated",
            guest(guests::FAULT_STEP)[..2000].to_vec(),
            "does not compile",
        ),
    ];
    for (what, bytes, expected) in cases {
        let (status, body) = server.upload(&step_manifest("1.0.0"), &bytes).await;
        assert_eq!(status, 422, "{what}: {body}");
        assert_eq!(body["error"]["code"], "invalid_component", "{what}: {body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(expected),
            "{what}: expected `{expected}` in `{msg}`"
        );
    }
    let (status, body) = server
        .upload(
            "name = \"x\"\nrole = \"deploy-step\"\n",
            &guest(guests::FAULT_STEP),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], "invalid_manifest");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing field `version`"),
        "{body}"
    );
    // Nothing was stored by any of these.
    let (_, list) = server.get("/v1/plugins").await;
    assert!(
        list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["active_version"].is_null()),
        "{list}"
    );
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let server = TestServer::start().await;
    server
        .install(&step_manifest("1.0.0"), &guest(guests::FAULT_STEP))
        .await;
    let (status, body) = server.invoke("nope", json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = server.invoke("step", json!({ "action": "plan" })).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a deploy step has run and rollback")
    );
    let (status, body) = server
        .invoke("step", json!({ "params": {}, "surprise": 1 }))
        .await;
    capstan_tests::assert_error(status, &body, 400, "unknown field `surprise`");
    let r = server
        .request(reqwest::Method::POST, "/v1/plugins/step/invoke")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let big = "x".repeat(3 << 20);
    let r = server
        .request(reqwest::Method::POST, "/v1/plugins/step/invoke")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let (status, _) = server.get("/v1/no-such-route").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn upload_swap_and_rollback() {
    let server = TestServer::start().await;
    let wasm = guest(guests::FAULT_STEP);
    let (status, body) = server.upload(&step_manifest("1.0.0"), &wasm).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["active"], true);
    // Same version, same bytes: nothing changes.
    let (status, body) = server.upload(&step_manifest("1.0.0"), &wasm).await;
    assert_eq!((status, body["changed"].as_bool()), (200, Some(false)));
    // Same version, other content: conflict.
    let (status, body) = server
        .upload(&step_manifest("1.0.0"), &guest(guests::PROBE))
        .await;
    assert_eq!(status, 409, "{body}");

    server
        .install(
            &manifest(
                "step",
                "2.0.0",
                "deploy-step",
                "[settings]\nflavour = \"two\"",
            ),
            &wasm,
        )
        .await;
    let (_, detail) = server.get("/v1/plugins/step").await;
    assert_eq!(detail["active_version"], "2.0.0");
    assert_eq!(detail["versions"].as_array().unwrap().len(), 2);

    // A version that fails to load never replaces the working one.
    let (status, _) = server.upload(&step_manifest("3.0.0"), b"garbage").await;
    assert_eq!(status, 422);
    let (_, detail) = server.get("/v1/plugins/step").await;
    assert_eq!(detail["active_version"], "2.0.0");
    assert_eq!(detail["last_error"]["version"], "3.0.0");
    let (status, body) = server
        .invoke("step", json!({ "params": { "echo": 2 } }))
        .await;
    assert_eq!(
        (status, body["invocation"]["version"].as_str()),
        (200, Some("2.0.0"))
    );

    let (status, body) = server
        .send(reqwest::Method::POST, "/v1/plugins/step/rollback", None)
        .await;
    assert_eq!(
        (status, body["active_version"].as_str()),
        (200, Some("1.0.0")),
        "{body}"
    );
    let (_, body) = server
        .invoke("step", json!({ "params": { "echo": 1 } }))
        .await;
    assert_eq!(body["invocation"]["version"], "1.0.0");
    let (status, body) = server
        .send(reqwest::Method::POST, "/v1/plugins/step/rollback", None)
        .await;
    assert_eq!(status, 409, "{body}");

    let (status, _) = server
        .send(
            reqwest::Method::PUT,
            "/v1/plugins/step/active",
            Some(json!({ "version": "2.0.0" })),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .send(
            reqwest::Method::PUT,
            "/v1/plugins/step/active",
            Some(json!({ "version": "9.9.9" })),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = server
        .send(
            reqwest::Method::DELETE,
            "/v1/plugins/step/versions/2.0.0",
            None,
        )
        .await;
    assert_eq!(status, 409, "the active version cannot be deleted");
    let (status, _) = server
        .send(
            reqwest::Method::DELETE,
            "/v1/plugins/step/versions/1.0.0",
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = server
        .send(reqwest::Method::DELETE, "/v1/plugins/step", None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = server.invoke("step", json!({})).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn hot_swap_under_load_fails_no_call() {
    let server = TestServer::start().await;
    let wasm = guest(guests::FAULT_STEP);
    server.install(&step_manifest("1.0.0"), &wasm).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (url, token, stop) = (server.url.clone(), server.token.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let client = capstan_tests::client();
            let (mut ok, mut failed, mut versions) =
                (0u32, Vec::new(), std::collections::BTreeSet::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut rb = client
                    .post(format!("{url}/v1/plugins/step/invoke"))
                    .json(&json!({ "params": { "fault": "ok" } }));
                if let Some(t) = &token {
                    rb = rb.bearer_auth(t);
                }
                let r = rb.send().await.unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap();
                if status == 200 {
                    ok += 1;
                    versions.insert(body["invocation"]["version"].as_str().unwrap().to_string());
                } else {
                    failed.push(body);
                }
            }
            (ok, failed, versions)
        }));
    }
    for v in 2..=6 {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        server
            .install(&step_manifest(&format!("{v}.0.0")), &wasm)
            .await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    let mut seen = std::collections::BTreeSet::new();
    for w in workers {
        let (ok, failed, versions) = w.await.unwrap();
        assert!(
            failed.is_empty(),
            "calls failed during hot swap: {failed:?}"
        );
        total += ok;
        seen.extend(versions);
    }
    assert!(total > 20, "only {total} calls made");
    assert!(seen.contains("1.0.0") && seen.contains("6.0.0"), "{seen:?}");
}

#[tokio::test]
async fn restart_restores_every_plugin_and_active_version() {
    let server = TestServer::start().await;
    let wasm = guest(guests::FAULT_STEP);
    server.install(&step_manifest("1.0.0"), &wasm).await;
    server.install(&step_manifest("1.1.0"), &wasm).await;
    server
        .send(reqwest::Method::POST, "/v1/plugins/step/rollback", None)
        .await;
    let (m, b) = bundled("alert-notify");
    server.install(&m, &b).await;
    let dir = server.stop().await;

    let server = TestServer::start_in(dir, |_| {}).await;
    let (status, ready) = server.get("/readyz").await;
    assert_eq!((status, ready.as_str()), (200, Some("ready")));
    let (_, detail) = server.get("/v1/plugins/step").await;
    assert_eq!(detail["active_version"], "1.0.0");
    assert_eq!(detail["versions"].as_array().unwrap().len(), 2);
    let (status, _) = server
        .invoke("step", json!({ "params": { "fault": "ok" } }))
        .await;
    assert_eq!(status, 200);
    let (_, list) = server.get("/v1/plugins").await;
    assert_eq!(list["plugins"].as_array().unwrap().len(), 2);
    // Compiled artifacts were cached on disk and reused.
    let artifacts = std::fs::read_dir(server.dir.path().join("artifacts"))
        .unwrap()
        .count();
    assert_eq!(artifacts, 2, "one artifact per distinct component");
}

#[tokio::test]
async fn plugins_directory_is_hot_reloaded() {
    let server = TestServer::start().await;
    let dir = server.dir.path().join("plugins");
    let wasm = guest(guests::FAULT_STEP);
    std::fs::write(dir.join("dropped.wasm"), &wasm).unwrap();
    std::fs::write(
        dir.join("dropped.toml"),
        manifest("dropped", "1.0.0", "deploy-step", ""),
    )
    .unwrap();
    let version = wait_for_version(&server, "dropped", "1.0.0").await;
    assert_eq!(version, "1.0.0");

    // A broken version in the directory shows its error and keeps 1.0.0 serving.
    std::fs::write(
        dir.join("dropped.toml"),
        manifest("dropped", "2.0.0", "deploy-step", "[limits]\nmemory_mb = 0"),
    )
    .unwrap();
    let errors = wait_for(|| async {
        let (_, list) = server.get("/v1/plugins").await;
        let e = list["directory_errors"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert!(
        errors
            .values()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .contains("limits.memory_mb"),
        "{errors:?}"
    );
    let (status, body) = server
        .invoke("dropped", json!({ "params": { "fault": "ok" } }))
        .await;
    assert_eq!(
        (status, body["invocation"]["version"].as_str()),
        (200, Some("1.0.0"))
    );

    std::fs::write(
        dir.join("dropped.toml"),
        manifest("dropped", "2.0.0", "deploy-step", ""),
    )
    .unwrap();
    assert_eq!(wait_for_version(&server, "dropped", "2.0.0").await, "2.0.0");
}

async fn wait_for_version(server: &TestServer, name: &str, version: &str) -> String {
    wait_for(|| async {
        let (_, detail) = server.get(&format!("/v1/plugins/{name}")).await;
        (detail["active_version"] == version).then(|| version.to_string())
    })
    .await
}

async fn wait_for<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    for _ in 0..100 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("condition not met within 10 s");
}

#[tokio::test]
async fn openapi_document_lists_the_api() {
    let server = TestServer::start().await;
    let (status, doc) = server.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/plugins",
        "/v1/plugins/{name}/invoke",
        "/v1/plugins/{name}/rollback",
        "/metrics",
        "/readyz",
    ] {
        assert!(doc["paths"].get(path).is_some(), "missing {path}");
    }
    assert!(doc["components"]["schemas"].get("ErrorBody").is_some());
}

#[tokio::test]
async fn graceful_shutdown_drains_calls_in_flight() {
    let server = TestServer::start().await;
    server
        .install(&step_manifest("1.0.0"), &guest(guests::FAULT_STEP))
        .await;
    let in_flight = {
        let rb = server
            .request(reqwest::Method::POST, "/v1/plugins/step/invoke")
            .json(&json!({ "params": { "fault": "slow", "ms": 1500 } }));
        tokio::spawn(async move { rb.send().await.map(|r| r.status().as_u16()) })
    };
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let url = server.url.clone();
    server.stop().await;
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "the call in flight finished"
    );
    assert!(
        capstan_tests::client()
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_err(),
        "no new connections after shutdown"
    );
}
