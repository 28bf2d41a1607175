//! A real Prometheus scrapes `/metrics` (server metrics and a metrics-source
//! plugin's families), and a real Alertmanager delivers an alert group to an
//! alert-handler plugin.

use std::time::Duration;

use capstan_tests::{TestServer, peers};
use serde_json::{Value, json};

async fn query(prometheus: &str, expr: &str) -> Value {
    let encoded: String = expr
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    let r = capstan_tests::client()
        .get(format!("{prometheus}/api/v1/query?query={encoded}"))
        .send()
        .await
        .unwrap();
    r.json().await.unwrap()
}

#[tokio::test]
async fn prometheus_scrapes_server_and_plugin_metrics() {
    let server = TestServer::start_with(|c| c.bundled_plugins = true).await;
    server
        .invoke(
            "render-deployment",
            json!({ "params": { "name": "web", "image": "nginx:1.27.0" } }),
        )
        .await;
    let target = server.url.trim_start_matches("http://").to_string();
    let prom = peers::prometheus(&target, server.token.as_deref())
        .await
        .expect("prometheus starts");
    let mut last = Value::Null;
    for _ in 0..60 {
        last = query(&prom.url, "capstan_plugin_http_probe_targets").await;
        if last["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        last["data"]["result"][0]["value"][1], "0",
        "plugin family scraped: {last}"
    );
    let ok = query(
        &prom.url,
        r#"capstan_plugin_invocations_total{plugin="render-deployment",outcome="ok"}"#,
    )
    .await;
    assert_eq!(ok["data"]["result"][0]["value"][1], "1", "{ok}");
    let up = query(&prom.url, "up{job=\"capstan\"}").await;
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
}

#[tokio::test]
async fn alertmanager_delivers_alert_groups_to_a_handler() {
    let server = TestServer::start_with(|c| c.bundled_plugins = true).await;
    let webhook = format!("{}/v1/plugins/alert-notify/invoke", server.url);
    let am = peers::alertmanager(&webhook, server.token.as_deref())
        .await
        .expect("alertmanager starts");
    let alert = json!([{
        "labels": { "alertname": "QueueTooDeep", "severity": "warning", "queue": "jobs" },
        "annotations": { "summary": "Queue jobs depth is 42", "runbook": "restart-worker" },
    }]);
    let r = capstan_tests::client()
        .post(format!("{}/api/v2/alerts", am.url))
        .json(&alert)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let mut recent = Value::Null;
    for _ in 0..60 {
        let (_, r) = server.get("/v1/plugins/alert-notify/invocations").await;
        recent = r;
        if recent.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let calls = recent.as_array().expect("invocations");
    assert!(!calls.is_empty(), "alertmanager never delivered the group");
    assert_eq!(calls[0]["call"], "handle");
    assert_eq!(
        calls[0]["outcome"], "ok",
        "the handler accepted Alertmanager's payload: {recent}"
    );
}
