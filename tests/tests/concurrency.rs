//! Per-plugin concurrency limits: a plugin spinning until its deadline holds
//! at most its own share of invoke slots, so the other plugins keep being
//! served; its extra calls get 503 `overloaded` naming the plugin's limit.

use capstan_tests::{TestServer, guest, guests, manifest};
use serde_json::{Value, json};
use tokio::task::{JoinHandle, JoinSet};

/// A server with `max` slots and `share` per plugin, a short queue wait, and
/// `healthy` installed (the fault-step guest).
async fn server_with(max: usize, share: usize) -> TestServer {
    let server = TestServer::start_with(|c| {
        c.limits.max_concurrent = max;
        c.limits.max_concurrent_per_plugin = Some(share);
        c.limits.queue_wait_ms = 50;
    })
    .await;
    let healthy = manifest("healthy", "1.0.0", "deploy-step", "");
    server.install(&healthy, &guest(guests::FAULT_STEP)).await;
    server
}

/// Installs `name` (the fault-step guest) with a 5 s deadline and `limits`.
async fn install_spinner(server: &TestServer, name: &str, version: &str, limits: &str) {
    let m = spinner_manifest(name, version, limits);
    server.install(&m, &guest(guests::FAULT_STEP)).await;
}

fn spinner_manifest(name: &str, version: &str, limits: &str) -> String {
    manifest(
        name,
        version,
        "deploy-step",
        &format!("[limits]\ndeadline_ms = 5000\n{limits}"),
    )
}

/// Starts a call of `plugin` that spins until its deadline.
fn spin(server: &TestServer, plugin: &str) -> impl Future<Output = (u16, Value)> + use<> {
    let rb = server
        .request(
            reqwest::Method::POST,
            &format!("/v1/plugins/{plugin}/invoke"),
        )
        .json(&json!({ "params": { "fault": "loop" } }));
    async move { capstan_tests::status_json(rb.send().await.unwrap()).await }
}

async fn metrics(server: &TestServer) -> String {
    let r = server.request(reqwest::Method::GET, "/metrics");
    r.send().await.unwrap().text().await.unwrap()
}

/// Waits until `plugin` has `n` calls in flight (its gauge in /metrics).
async fn wait_in_flight(server: &TestServer, plugin: &str, n: usize) {
    let line = format!("capstan_plugin_invocations_in_flight{{plugin=\"{plugin}\"}} {n}\n");
    for _ in 0..1000 {
        if metrics(server).await.contains(&line) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("never saw `{}`:\n{}", line.trim(), metrics(server).await);
}

async fn assert_healthy(server: &TestServer, n: u64) {
    let (status, body) = server
        .invoke("healthy", json!({ "params": { "fault": "ok", "echo": n } }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["message"], format!("echo {n}"));
}

async fn ok_call(server: &TestServer, plugin: &str) -> (u16, Value) {
    server
        .invoke(plugin, json!({ "params": { "fault": "ok", "echo": 1 } }))
        .await
}

#[track_caller]
fn assert_overloaded(status: u16, body: &Value, limit: &str, max: usize) {
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert_eq!(body["error"]["details"]["limit"], limit, "{body}");
    assert_eq!(body["error"]["details"]["max_concurrent"], max, "{body}");
}

#[track_caller]
fn assert_deadline((status, body): (u16, Value)) {
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "deadline_exceeded", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_plugin_holds_only_its_share_and_others_keep_being_served() {
    let server = server_with(8, 2).await;
    install_spinner(&server, "spinner", "1.0.0", "").await;
    // As many spinning calls as the server has slots: without a per-plugin
    // limit they would take all of them and `healthy` would get 503.
    let mut calls = JoinSet::new();
    for _ in 0..8 {
        calls.spawn(spin(&server, "spinner"));
    }
    // Six are refused after the 50 ms queue wait; the two admitted spin for 5 s.
    for _ in 0..6 {
        let (status, body) = calls.join_next().await.unwrap().unwrap();
        assert_overloaded(status, &body, "plugin", 2);
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("this plugin already runs 2"), "{body}");
    }
    wait_in_flight(&server, "spinner", 2).await;
    for n in 0..5 {
        assert_healthy(&server, n).await;
    }
    // ... answered while both spinning calls were still running.
    assert!(calls.try_join_next().is_none(), "the spinners had ended");
    let text = metrics(&server).await;
    let refused =
        r#"capstan_plugin_invocations_overloaded_total{plugin="spinner",limit="plugin"} 6"#;
    assert!(text.contains(refused), "{text}");
    while let Some(r) = calls.join_next().await {
        assert_deadline(r.unwrap());
    }
    // Once its calls have ended, the spinner is served again.
    let (status, body) = ok_call(&server, "spinner").await;
    assert_eq!(status, 200, "{body}");
    wait_in_flight(&server, "spinner", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_sets_a_plugins_own_limit_within_the_servers() {
    let server = server_with(8, 2).await;
    // Above the server's share is fine, above the server's limit is not.
    install_spinner(&server, "wide", "1.0.0", "max_concurrent = 8").await;
    for (n, needle) in [
        ("9", "above the server's [limits] max_concurrent of 8"),
        ("0", "at least 1"),
    ] {
        let m = spinner_manifest("wide", "1.0.1", &format!("max_concurrent = {n}"));
        let (status, body) = server.upload(&m, &guest(guests::FAULT_STEP)).await;
        capstan_tests::assert_error(status, &body, 422, "limits.max_concurrent");
        capstan_tests::assert_error(status, &body, 422, needle);
    }

    install_spinner(&server, "narrow", "1.0.0", "max_concurrent = 1").await;
    let running = tokio::spawn(spin(&server, "narrow"));
    wait_in_flight(&server, "narrow", 1).await;
    let (status, body) = ok_call(&server, "narrow").await;
    assert_overloaded(status, &body, "plugin", 1);
    // `wide` may run three at once, past the server's default share of 2.
    let wide: Vec<JoinHandle<_>> = (0..3)
        .map(|_| tokio::spawn(spin(&server, "wide")))
        .collect();
    wait_in_flight(&server, "wide", 3).await;
    assert_healthy(&server, 1).await;
    assert_deadline(running.await.unwrap());
    for w in wide {
        assert_deadline(w.await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_swap_keeps_counting_the_calls_still_running() {
    let server = server_with(8, 2).await;
    install_spinner(&server, "spinner", "1.0.0", "").await;
    let old: Vec<JoinHandle<_>> = (0..2)
        .map(|_| tokio::spawn(spin(&server, "spinner")))
        .collect();
    wait_in_flight(&server, "spinner", 2).await;
    // A new version becomes active while 1.0.0's two calls still spin: they
    // still count, so 1.1.0 gets no place beyond the plugin's share.
    install_spinner(&server, "spinner", "1.1.0", "").await;
    let (_, listed) = server.get("/v1/plugins/spinner").await;
    assert_eq!(listed["active_version"], "1.1.0", "{listed}");
    let (status, body) = ok_call(&server, "spinner").await;
    assert_overloaded(status, &body, "plugin", 2);
    for call in old {
        assert_deadline(call.await.unwrap());
    }
    let (status, body) = ok_call(&server, "spinner").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["invocation"]["version"], "1.1.0", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_limit_is_named_when_it_is_the_one_reached() {
    let server = server_with(2, 1).await;
    install_spinner(&server, "one", "1.0.0", "").await;
    install_spinner(&server, "two", "1.0.0", "").await;
    let calls = [
        tokio::spawn(spin(&server, "one")),
        tokio::spawn(spin(&server, "two")),
    ];
    wait_in_flight(&server, "one", 1).await;
    wait_in_flight(&server, "two", 1).await;
    let (status, body) = ok_call(&server, "healthy").await;
    assert_overloaded(status, &body, "server", 2);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("the server already runs 2"), "{body}");
    for call in calls {
        assert_deadline(call.await.unwrap());
    }
    assert_healthy(&server, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_above_a_smaller_server_limit_after_restart_is_capped_not_refused() {
    let server = server_with(8, 2).await;
    install_spinner(&server, "wide", "1.0.0", "max_concurrent = 8").await;
    let dir = server.stop().await;
    let server = TestServer::start_in(dir, |c| {
        c.limits.max_concurrent = 3;
        c.limits.queue_wait_ms = 50;
    })
    .await;
    // The stored version still loads and runs, with at most the server's 3.
    let (status, body) = ok_call(&server, "wide").await;
    assert_eq!(status, 200, "{body}");
    let calls: Vec<JoinHandle<_>> = (0..3)
        .map(|_| tokio::spawn(spin(&server, "wide")))
        .collect();
    wait_in_flight(&server, "wide", 3).await;
    let (status, body) = ok_call(&server, "wide").await;
    assert_overloaded(status, &body, "plugin", 3);
    for call in calls {
        assert_deadline(call.await.unwrap());
    }
}
