//! The seed's monitoring loop end to end, with the real things: Capstan's
//! bundled `http-probe` probes a loopback service; a real Prometheus
//! scrapes Capstan's `/metrics`; the service goes down and a Prometheus
//! rule fires; two real Alertmanagers of an HA pair that cannot see each
//! other (a partition, or a pair started without `--cluster.peer`: the case
//! that duplicates notifications in HA pairs) both deliver the group to
//! Capstan; the route
//! hands it to the bundled `alert-notify` (DingTalk format) and to a handler
//! that silences; exactly one DingTalk message goes out, signed, to a
//! stand-in that checks the signature and answers as DingTalk does; the
//! silence is in Alertmanager's API. Then the service comes back and the
//! resolved group flows the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use capstan_tests::chat::Chat;
use capstan_tests::peers;
use capstan_tests::procs::free_port;
use capstan_tests::{TestServer, bundled, client, guest, guests, manifest};
use reqwest::Method;
use serde_json::{Value, json};

/// Fires while the bundled probe fails.
const PROBE_DOWN_RULE: &str = "groups:\n- name: probes\n  rules:\n  - alert: ProbeDown\n    expr: capstan_plugin_http__probe_probe_success == 0\n    for: 0s\n    labels: {severity: page}\n    annotations: {summary: '{{ $labels.target }} is down'}\n";

/// A service that answers 200 `ok`, or 503 while `down` is set.
async fn service(down: Arc<AtomicBool>) -> String {
    let app = axum::Router::new().route(
        "/healthz",
        axum::routing::get(move || {
            let down = down.clone();
            async move {
                if down.load(Ordering::SeqCst) {
                    (http::StatusCode::SERVICE_UNAVAILABLE, "down")
                } else {
                    (http::StatusCode::OK, "ok")
                }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

/// A bundled plugin with its `[settings]` and what follows replaced.
fn bundled_with(name: &str, extra: &str) -> (String, Vec<u8>) {
    let (m, wasm) = bundled(name);
    let head: String = m
        .lines()
        .take_while(|l| !l.starts_with("[settings]"))
        .map(|l| format!("{l}\n"))
        .collect();
    (format!("{head}{extra}"), wasm)
}

async fn put(server: &TestServer, path: &str, body: Value) -> Value {
    let (status, answer) = server.send(Method::PUT, path, Some(body)).await;
    assert!(
        (200..300).contains(&status),
        "PUT {path}: {status} {answer}"
    );
    answer
}

/// Waits until `ok` holds for the alert groups Capstan stored.
async fn groups_until(
    server: &TestServer,
    what: &str,
    ok: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, list) = server
            .get("/v1/alerts/groups?receiver=capstan&limit=100")
            .await;
        let groups = list["groups"].as_array().cloned().unwrap_or_default();
        if ok(&groups) {
            return groups;
        }
        assert!(Instant::now() < deadline, "never {what}: {list:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn status_of(g: &Value) -> &str {
    g["status"]
        .as_str()
        .or(g["group"]["status"].as_str())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_failure_reaches_one_signed_dingtalk_message_and_a_silence_then_resolves() {
    let am_web = [free_port(), free_port()];
    let am_url = format!("http://127.0.0.1:{}", am_web[0]);
    let server = TestServer::start_with({
        let am_url = am_url.clone();
        move |c| c.alerts.alertmanager_url = Some(am_url)
    })
    .await;
    let down = Arc::new(AtomicBool::new(false));
    let web = service(down.clone()).await;

    // The probe, the handlers, the route and the DingTalk channel.
    let (m, wasm) = bundled_with(
        "http-probe",
        &format!(
            "[settings]\ntargets = \"{web}/healthz\"\n\n[metrics]\ninterval_ms = 300\n\n[grants.http]\nallow = [\"{web}\"]\n"
        ),
    );
    server.install(&m, &wasm).await;
    let (m, wasm) = bundled_with(
        "alert-notify",
        "[settings]\nformat = \"dingtalk\"\nchannel = \"ops\"\nrun_runbooks = \"false\"\n",
    );
    server.install(&m, &wasm).await;
    server
        .install(
            &manifest(
                "silencer",
                "1.0.0",
                "alert-handler",
                "[settings]\nsilence = \"true\"\n",
            ),
            &guest(guests::ALERT_ACTIONS),
        )
        .await;
    put(
        &server,
        "/v1/alerts/routes/page",
        json!({ "project": "default", "handlers": ["alert-notify", "silencer"], "matchers": ["severity=\"page\""] }),
    )
    .await;
    let chat = Chat::start().await;
    chat.set_secret("tok-ops", "SEC-ops-robot");
    for (name, value) in [
        (
            "ops-url",
            format!("{}/robot/send?access_token=tok-ops", chat.url),
        ),
        ("ops-sign", "SEC-ops-robot".to_string()),
    ] {
        let (status, body) = server
            .send(
                Method::PUT,
                &format!("/v1/secrets/{name}"),
                Some(json!({ "value": value })),
            )
            .await;
        assert_eq!(status, 204, "{body}");
    }
    put(
        &server,
        "/v1/notify/channels/ops",
        json!({"name": "ops", "project": "default", "type": "dingtalk",
            "webhook_secret": "ops-url", "sign_secret": "ops-sign"}),
    )
    .await;

    // The real peers.
    let webhook = format!("{}/v1/alerts/alertmanager/capstan", server.url);
    let token = server.token.clone().unwrap();
    // An HA pair that cannot see each other (no gossip): each delivers.
    let mut _ams = Vec::new();
    for port in am_web {
        _ams.push(
            peers::alertmanager_on(Some(port), &webhook, Some(&token))
                .await
                .unwrap(),
        );
    }
    let capstan = server.url.trim_start_matches("http://").to_string();
    let ams = am_web.map(|p| format!("127.0.0.1:{p}"));
    let _prom = peers::prometheus_alerting(&capstan, &[&ams[0], &ams[1]], PROBE_DOWN_RULE)
        .await
        .unwrap();

    // The probe succeeds first (Prometheus has nothing to fire on)...
    let probe_ok =
        format!("capstan_plugin_http__probe_probe_success{{target=\"{web}/healthz\"}} 1");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = server.metrics().await;
        if text.contains(&probe_ok) {
            break;
        }
        assert!(Instant::now() < deadline, "the probe never succeeded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...then the service goes down.
    down.store(true, Ordering::SeqCst);

    // Both Alertmanagers deliver the firing group; Capstan handles it once.
    let groups = groups_until(&server, "two deliveries of the firing group", |gs| {
        gs.iter().filter(|g| status_of(g) == "firing").count() >= 2
    })
    .await;
    let firing: Vec<&Value> = groups.iter().filter(|g| status_of(g) == "firing").collect();
    assert!(
        firing.iter().any(|g| g["state"] == "duplicate"),
        "the second delivery is a duplicate: {groups:#?}"
    );
    let messages = chat
        .wait_until("the FIRING message", |r| {
            r.iter()
                .any(|m| m.provider == "dingtalk" && m.text.contains("FIRING"))
        })
        .await;
    let fired: Vec<_> = messages
        .iter()
        .filter(|m| m.text.contains("FIRING"))
        .collect();
    assert_eq!(fired.len(), 1, "exactly one message: {messages:#?}");
    assert!(fired[0].text.contains("is down"), "{:#?}", fired[0]);
    assert!(chat.refusals().is_empty(), "{:?}", chat.refusals());

    // The silence is in Alertmanager, made once.
    let silences = || async {
        let list: Vec<Value> = client()
            .get(format!("{am_url}/api/v2/silences"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let silence = loop {
        let active: Vec<Value> = silences()
            .await
            .into_iter()
            .filter(|s| s["status"]["state"] == "active")
            .collect();
        if !active.is_empty() {
            assert_eq!(active.len(), 1, "{active:#?}");
            break active[0].clone();
        }
        assert!(Instant::now() < deadline, "no silence in Alertmanager");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(silence["createdBy"], "capstan:silencer");
    assert!(
        silence["matchers"].to_string().contains("ProbeDown"),
        "{silence:#}"
    );

    // An operator lifts the silence; the service comes back; the resolved
    // group flows through the same way, to one RESOLVED message.
    let r = client()
        .delete(format!(
            "{am_url}/api/v2/silence/{}",
            silence["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    down.store(false, Ordering::SeqCst);
    let messages = chat
        .wait_until("the RESOLVED message", |r| {
            r.iter().any(|m| m.text.contains("RESOLVED"))
        })
        .await;
    groups_until(&server, "the resolved group handled", |gs| {
        gs.iter()
            .any(|g| status_of(g) == "resolved" && g["state"] == "processed")
    })
    .await;
    let resolved = messages
        .iter()
        .filter(|m| m.text.contains("RESOLVED"))
        .count();
    assert_eq!(resolved, 1, "{messages:#?}");
    assert!(chat.refusals().is_empty(), "{:?}", chat.refusals());
}
