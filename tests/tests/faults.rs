//! Every fault guest gets a precise error within its deadline, and the server
//! keeps serving other plugins while it happens.

use capstan_tests::{TestServer, guest, guests, manifest};
use serde_json::json;

async fn server_with_fault_step(limits: &str) -> TestServer {
    let server = TestServer::start().await;
    let m = manifest(
        "fault",
        "1.0.0",
        "deploy-step",
        &format!("[limits]\n{limits}"),
    );
    server.install(&m, &guest(guests::FAULT_STEP)).await;
    let healthy = manifest("healthy", "1.0.0", "deploy-step", "");
    server.install(&healthy, &guest(guests::FAULT_STEP)).await;
    server
}

async fn fault(
    server: &TestServer,
    kind: &str,
    extra: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut params = json!({ "fault": kind });
    params
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    server.invoke("fault", json!({ "params": params })).await
}

async fn assert_healthy_still_serves(server: &TestServer) {
    let (status, body) = server
        .invoke("healthy", json!({ "params": { "fault": "ok", "echo": 7 } }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["message"], "echo 7");
}

#[tokio::test]
async fn infinite_loop_is_stopped_at_its_deadline() {
    let server = server_with_fault_step("deadline_ms = 300").await;
    let (status, body) = fault(&server, "loop", json!({})).await;
    assert_eq!(body["error"]["code"], "deadline_exceeded");
    capstan_tests::assert_error(status, &body, 504, "300 ms");
    assert_healthy_still_serves(&server).await;
}

#[tokio::test]
async fn other_plugins_keep_serving_while_one_loops() {
    let server = server_with_fault_step("deadline_ms = 4000").await;
    let looping = {
        let (url, token) = (server.url.clone(), server.token.clone());
        tokio::spawn(async move {
            let c = capstan_tests::client();
            let mut rb = c
                .post(format!("{url}/v1/plugins/fault/invoke"))
                .json(&json!({ "params": { "fault": "loop" } }));
            if let Some(t) = token {
                rb = rb.bearer_auth(t);
            }
            rb.send().await.unwrap().status().as_u16()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for _ in 0..5 {
        assert_healthy_still_serves(&server).await;
    }
    // The healthy calls were answered while the loop was still running.
    assert!(
        !looping.is_finished(),
        "healthy calls had to wait for the looping plugin"
    );
    assert_eq!(looping.await.unwrap(), 504);
}

#[tokio::test]
async fn unbounded_allocation_hits_the_memory_cap() {
    let server = server_with_fault_step("memory_mb = 16").await;
    let (status, body) = fault(&server, "oom", json!({})).await;
    assert_eq!(body["error"]["code"], "memory_limit_exceeded", "{body}");
    capstan_tests::assert_error(status, &body, 500, &(16u64 << 20).to_string());
    assert_healthy_still_serves(&server).await;
}

#[tokio::test]
async fn trap_and_panic_are_reported_with_what_the_guest_said() {
    let server = server_with_fault_step("").await;
    let (status, body) = fault(&server, "trap", json!({})).await;
    assert_eq!(body["error"]["code"], "trap");
    capstan_tests::assert_error(status, &body, 500, "unreachable");

    let (status, body) = fault(&server, "panic", json!({})).await;
    assert_eq!(body["error"]["code"], "trap");
    capstan_tests::assert_error(status, &body, 500, "fault-step was asked to panic");
    assert_healthy_still_serves(&server).await;
}

#[tokio::test]
async fn stack_overflow_is_named() {
    let server = server_with_fault_step("").await;
    let (status, body) = fault(&server, "stack", json!({})).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "stack_overflow", "{body}");
    assert_healthy_still_serves(&server).await;
}

#[tokio::test]
async fn huge_result_is_refused() {
    let server = server_with_fault_step("memory_mb = 64").await;
    let (status, body) = fault(&server, "huge", json!({ "bytes": 6 << 20 })).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "result_too_large", "{body}");
    // A result under the limit is fine.
    let (status, body) = fault(&server, "huge", json!({ "bytes": 1000 })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["message"].as_str().unwrap().len(), 1000);
}

#[tokio::test]
async fn fuel_limit_stops_a_plugin_and_is_accounted() {
    let server = server_with_fault_step("fuel = 5000000").await;
    let (status, body) = fault(&server, "loop", json!({})).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "fuel_exhausted", "{body}");
    let (status, body) = fault(&server, "ok", json!({ "echo": 1 })).await;
    assert_eq!(status, 200, "{body}");
    let used = body["invocation"]["fuel_used"].as_u64().unwrap();
    assert!(used > 0 && used < 5_000_000, "{body}");
}

#[tokio::test]
async fn typed_plugin_errors_map_to_4xx() {
    let server = server_with_fault_step("").await;
    let (status, body) = fault(&server, "error", json!({})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "plugin_error");
    assert_eq!(body["error"]["details"]["kind"], "invalid-input");
    assert_eq!(
        body["error"]["details"]["message"],
        "fault-step was asked to fail"
    );
}

#[tokio::test]
async fn concurrency_limit_answers_503_with_retry_after() {
    let server = TestServer::start_with(|c| {
        c.limits.max_concurrent = 1;
        c.limits.queue_wait_ms = 50;
    })
    .await;
    server
        .install(
            &manifest(
                "fault",
                "1.0.0",
                "deploy-step",
                "[limits]\ndeadline_ms = 5000",
            ),
            &guest(guests::FAULT_STEP),
        )
        .await;
    let busy = {
        let (url, token) = (server.url.clone(), server.token.clone());
        tokio::spawn(async move {
            let mut rb = capstan_tests::client()
                .post(format!("{url}/v1/plugins/fault/invoke"))
                .json(&json!({ "params": { "fault": "slow", "ms": 2000 } }));
            if let Some(t) = token {
                rb = rb.bearer_auth(t);
            }
            rb.send().await.unwrap().status().as_u16()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let r = server
        .request(reqwest::Method::POST, "/v1/plugins/fault/invoke")
        .json(&json!({ "params": { "fault": "ok" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    assert_eq!(busy.await.unwrap(), 200);
}

#[tokio::test]
async fn failures_are_counted_in_metrics() {
    let server = server_with_fault_step("deadline_ms = 200").await;
    fault(&server, "loop", json!({})).await;
    fault(&server, "trap", json!({})).await;
    fault(&server, "ok", json!({})).await;
    let text = server.metrics().await;
    assert!(
        text.contains(
            r#"capstan_plugin_invocation_errors_total{plugin="fault",kind="deadline_exceeded"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"capstan_plugin_invocation_errors_total{plugin="fault",kind="trap"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"capstan_plugin_invocations_total{plugin="fault",call="run",outcome="ok"} 1"#
        ),
        "{text}"
    );
    let (_, recent) = server.get("/v1/plugins/fault/invocations").await;
    let outcomes: Vec<&str> = recent
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["deadline_exceeded", "trap", "ok"]);
}
