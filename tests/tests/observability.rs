//! A real Prometheus scrapes `/metrics` (server metrics and a metrics-source
//! plugin's families), and a real Alertmanager delivers an alert group to an
//! alert-handler plugin.

use std::time::Duration;

use capstan_tests::{TestServer, guest, guests, manifest, peers};
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
        last = query(&prom.url, "capstan_plugin_http__probe_targets").await;
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

/// A metrics-source manifest for the metrics-emit guest with `families`.
fn emitter(name: &str, families: Value) -> String {
    let settings = format!(
        "[settings]\nfamilies = {:?}\n\n[metrics]\nmode = \"scrape\"\n",
        families.to_string()
    );
    manifest(name, "1.0.0", "metrics-source", &settings)
}

/// Polls an instant query until it returns a series (or 30 s pass).
async fn series(prometheus: &str, expr: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..60 {
        last = query(prometheus, expr).await;
        if last["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    last["data"]["result"].clone()
}

#[tokio::test]
async fn plugin_families_never_collide_and_special_values_scrape() {
    let server = TestServer::start().await;
    let gauge =
        |name: &str, values: &[&str]| json!({ "name": name, "type": "gauge", "values": values });
    for (plugin, families) in [
        ("a", json!([gauge("b_x", &["1"])])),
        ("a-b", json!([gauge("x", &["2"])])),
        (
            "odd",
            json!([
                gauge("special", &["inf", "-inf", "NaN", "0.25"]),
                { "name": "runs", "type": "counter", "values": ["NaN", "5"] },
            ]),
        ),
    ] {
        server
            .install(&emitter(plugin, families), &guest(guests::METRICS_EMIT))
            .await;
    }
    let text = server.metrics().await;
    for line in [
        "capstan_plugin_a_b_x{i=\"0\"} 1\n",
        "capstan_plugin_a__b_x{i=\"0\"} 2\n",
        "capstan_plugin_odd_special{i=\"0\"} +Inf\n",
        "capstan_plugin_odd_special{i=\"1\"} -Inf\n",
        "capstan_plugin_odd_special{i=\"2\"} NaN\n",
        "capstan_plugin_odd_runs_total{i=\"1\"} 5\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(
        !text.contains("odd_runs_total{i=\"0\"}"),
        "a NaN counter is dropped"
    );

    // A real Prometheus scrapes it all: the target is up and each plugin's
    // series is its own.
    let target = server.url.trim_start_matches("http://").to_string();
    let prom = peers::prometheus(&target, server.token.as_deref())
        .await
        .expect("prometheus starts");
    let a = series(&prom.url, "capstan_plugin_a_b_x").await;
    let ab = series(&prom.url, "capstan_plugin_a__b_x").await;
    assert_eq!(
        (a.as_array().map(Vec::len), &a[0]["value"][1]),
        (Some(1), &json!("1")),
        "{a}"
    );
    assert_eq!(
        (ab.as_array().map(Vec::len), &ab[0]["value"][1]),
        (Some(1), &json!("2")),
        "{ab}"
    );
    let inf = series(&prom.url, r#"capstan_plugin_odd_special{i="0"}"#).await;
    assert_eq!(inf[0]["value"][1], "+Inf", "{inf}");
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
