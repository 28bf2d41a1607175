//! Alerts end to end over HTTP: Alertmanager webhook groups stored before
//! the answer, HA copies and resends handled once, firing->resolved once,
//! routing (matchers, `continue`, mute windows), bad input refused with a
//! 4xx and audited, a remediation pipeline started once per alert episode,
//! and silences made once per fingerprint in a real Alertmanager.
//!
//! The handler is the `alert-actions` test guest (its settings choose its
//! actions); `notify` actions go to a notifier that records each call.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan::alerts::routes::{MuteWindow, Route};
use capstan::alerts::{Notifier, NotifyError};
use capstan_tests::peers::Peer;
use capstan_tests::{TestServer, client, guest, guests, manifest, status_json};
use futures::future::BoxFuture;
use reqwest::Method;
use serde_json::{Value, json};

/// Records every notification it is asked to deliver.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(String, String, String)>>,
}

impl Notifier for Recorder {
    fn notify<'a>(
        &'a self,
        _project: &'a str,
        plugin: &'a str,
        _channel: &'a str,
        _format: &'a str,
        body: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<String, NotifyError>> {
        Box::pin(async move {
            let mut calls = self.calls.lock().unwrap();
            calls.push((plugin.to_string(), body.to_string(), key.to_string()));
            Ok(format!("delivery-{}", calls.len()))
        })
    }
}

impl Recorder {
    fn bodies(&self) -> Vec<(String, String)> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(p, b, _)| (p.clone(), b.clone()))
            .collect()
    }
}

fn alert(fp: &str, status: &str, starts: &str, labels: Value) -> Value {
    let ends = if status == "firing" {
        "0001-01-01T00:00:00Z"
    } else {
        "2026-12-01T01:00:00Z"
    };
    json!({ "status": status, "labels": labels, "annotations": {"summary": "s"},
        "startsAt": starts, "endsAt": ends, "generatorURL": "http://prom/graph", "fingerprint": fp })
}

fn group(key: &str, alerts: Vec<Value>) -> Value {
    let firing = alerts.iter().any(|a| a["status"] == "firing");
    json!({ "version": "4", "groupKey": key, "truncatedAlerts": 0,
        "status": if firing { "firing" } else { "resolved" }, "receiver": "capstan",
        "groupLabels": {"alertname": "Down"}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://am", "alerts": alerts })
}

async fn post(server: &TestServer, body: &Value) -> (u16, Value) {
    let r = server
        .request(Method::POST, "/v1/alerts/alertmanager/am")
        .json(body)
        .send()
        .await
        .unwrap();
    status_json(r).await
}

/// Installs the test handler as `name` with `settings` (TOML lines).
async fn handler(server: &TestServer, name: &str, settings: &str) {
    let extra = format!("[settings]\n{settings}\n");
    server
        .install(
            &manifest(name, "1.0.0", "alert-handler", &extra),
            &guest(guests::ALERT_ACTIONS),
        )
        .await;
}

async fn put_route(server: &TestServer, name: &str, route: Value) {
    let (status, body) = server
        .send(
            Method::PUT,
            &format!("/v1/alerts/routes/{name}"),
            Some(route),
        )
        .await;
    assert!(status == 201 || status == 200, "{body}");
}

fn notifier(server: &TestServer) -> Arc<Recorder> {
    let r = Arc::new(Recorder::default());
    server
        .server
        .as_ref()
        .unwrap()
        .alerts
        .set_notifier(r.clone());
    r
}

/// Waits until group `id` is handled; returns it with alerts and actions.
async fn handled(server: &TestServer, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = server.get(&format!("/v1/alerts/groups/{id}")).await;
        assert_eq!(status, 200, "{body}");
        if body["state"] != "pending" {
            return body;
        }
        assert!(Instant::now() < deadline, "group never handled: {body:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn actions_of<'a>(g: &'a Value, kind: &str) -> Vec<&'a Value> {
    g["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == kind)
        .collect()
}

#[tokio::test]
async fn ha_copies_and_resends_are_handled_once_and_resolved_once() {
    let server = TestServer::start().await;
    handler(&server, "h", "notify = \"true\"").await;
    put_route(
        &server,
        "all",
        json!({ "project": "default", "handlers": ["h"] }),
    )
    .await;
    let rec = notifier(&server);
    let firing = group(
        "{}:{alertname=\"Down\"}",
        vec![
            alert(
                "fp1",
                "firing",
                "2026-12-01T00:00:00Z",
                json!({"alertname": "Down", "instance": "a"}),
            ),
            alert(
                "fp2",
                "firing",
                "2026-12-01T00:00:00Z",
                json!({"alertname": "Down", "instance": "b"}),
            ),
        ],
    );
    // Two Alertmanagers of an HA pair deliver the same group at once.
    let ((s1, b1), (s2, b2)) = tokio::join!(post(&server, &firing), post(&server, &firing));
    assert_eq!((s1, s2), (200, 200), "{b1} {b2}");
    let states = [b1["state"].as_str().unwrap(), b2["state"].as_str().unwrap()];
    assert!(
        states.contains(&"pending") && states.contains(&"duplicate"),
        "{states:?}"
    );
    let first = if b1["state"] == "pending" { &b1 } else { &b2 };
    assert_eq!(first["new_alerts"], 2);
    let g = handled(&server, first["id"].as_str().unwrap()).await;
    assert_eq!(g["state"], "processed", "{g:#}");
    assert_eq!(actions_of(&g, "notify")[0]["outcome"], "succeeded", "{g:#}");
    // A resend after group_interval brings nothing new.
    let (_, again) = post(&server, &firing).await;
    assert_eq!(again["state"], "duplicate");
    assert_eq!(again["new_alerts"], 0);
    // fp1 resolves: the whole group is sent again, with one transition.
    let resolved = group(
        "{}:{alertname=\"Down\"}",
        vec![
            alert(
                "fp1",
                "resolved",
                "2026-12-01T00:00:00Z",
                json!({"alertname": "Down", "instance": "a"}),
            ),
            alert(
                "fp2",
                "firing",
                "2026-12-01T00:00:00Z",
                json!({"alertname": "Down", "instance": "b"}),
            ),
        ],
    );
    let ((_, r1), (_, r2)) = tokio::join!(post(&server, &resolved), post(&server, &resolved));
    let pending: Vec<&Value> = [&r1, &r2]
        .into_iter()
        .filter(|b| b["state"] == "pending")
        .collect();
    assert_eq!(pending.len(), 1, "{r1} {r2}");
    assert_eq!(pending[0]["new_alerts"], 1);
    handled(&server, pending[0]["id"].as_str().unwrap()).await;
    let bodies = rec.bodies();
    assert_eq!(
        bodies.len(),
        2,
        "one notification per new state: {bodies:?}"
    );
    assert!(bodies[0].1.contains("Down/firing/fp1") && bodies[0].1.contains("Down/firing/fp2"));
    assert_eq!(
        bodies[1].1, "Down/resolved/fp1",
        "only the transition is handed on"
    );
    // The history lists both handled groups and the duplicates.
    let (_, list) = server.get("/v1/alerts/groups?state=duplicate").await;
    assert_eq!(list["groups"].as_array().unwrap().len(), 3, "{list:#?}");
    let (_, list) = server
        .get("/v1/alerts/groups?state=processed&alertname=Down")
        .await;
    assert_eq!(list["groups"].as_array().unwrap().len(), 2, "{list:#?}");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("capstan_alert_alerts_total{result=\"deduped\"} 7"),
        "{metrics}"
    );
    assert!(
        metrics.contains("capstan_alert_actions_total{kind=\"notify\",outcome=\"succeeded\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn routes_match_like_alertmanager_with_continue_and_mute_windows() {
    let route = |name: &str,
                 order: i64,
                 matchers: &[&str],
                 handler: &str,
                 cont: bool,
                 mute: Vec<MuteWindow>| Route {
        name: name.into(),
        project: "default".into(),
        receiver: None,
        matchers: matchers.iter().map(|m| m.parse_matcher()).collect(),
        handlers: vec![handler.into()],
        continue_: cont,
        order,
        mute,
    };
    let always = MuteWindow {
        weekdays: vec![],
        times: vec!["00:00-24:00".into()],
        timezone: "Asia/Shanghai".into(),
    };
    let routes = vec![
        route(
            "page",
            10,
            &[r#"severity=~"critical|page""#],
            "h-page",
            true,
            vec![],
        ),
        route("db", 20, &[r#"team="db""#], "h-db", false, vec![]),
        route(
            "crit-only",
            25,
            &[r#"severity=~"crit""#],
            "h-page",
            false,
            vec![],
        ),
        route("rest", 30, &[], "h-rest", false, vec![always]),
    ];
    let server = TestServer::start_with(|c| c.alerts.routes = routes).await;
    for h in ["h-page", "h-db", "h-rest"] {
        handler(&server, h, "notify = \"true\"").await;
    }
    let rec = notifier(&server);
    let g = group(
        "routing",
        vec![
            alert(
                "a",
                "firing",
                "t0",
                json!({"alertname": "Down", "severity": "critical", "team": "db"}),
            ),
            alert(
                "b",
                "firing",
                "t0",
                json!({"alertname": "Down", "severity": "warning", "team": "db"}),
            ),
            alert(
                "c",
                "firing",
                "t0",
                json!({"alertname": "Down", "severity": "warning", "team": "web"}),
            ),
        ],
    );
    let (status, body) = post(&server, &g).await;
    assert_eq!(status, 200, "{body}");
    let g = handled(&server, body["id"].as_str().unwrap()).await;
    let mut bodies = rec.bodies();
    bodies.sort();
    assert_eq!(
        bodies,
        vec![
            (
                "h-db".to_string(),
                "Down/firing/a\nDown/firing/b".to_string()
            ),
            ("h-page".to_string(), "Down/firing/a".to_string()),
        ],
        "`page` continues to `db`; `crit` is anchored so matches nothing; `rest` is muted"
    );
    let mutes = actions_of(&g, "mute");
    assert_eq!(mutes.len(), 1, "{g:#}");
    assert_eq!(mutes[0]["route"], "rest");
    assert_eq!(mutes[0]["outcome"], "muted");
    assert_eq!(mutes[0]["detail"]["alerts"], json!(["c@t0"]));
    // Config routes are listed and read-only over the API.
    let (_, list) = server.get("/v1/alerts/routes").await;
    let names: Vec<&str> = list["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["page", "db", "crit-only", "rest"]);
    let (status, body) = server
        .send(
            Method::PUT,
            "/v1/alerts/routes/db",
            Some(json!({"project": "default", "handlers": ["h-db"]})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    // An API route must name alert handlers of its own project.
    let (status, body) = server
        .send(
            Method::PUT,
            "/v1/alerts/routes/x",
            Some(json!({"project": "default", "handlers": ["nope"]})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = server
        .send(Method::PUT, "/v1/alerts/routes/y", Some(json!({"project": "default", "handlers": ["h-db"], "matchers": ["severity=~\"(\""]})))
        .await;
    assert_eq!(status, 422, "{body}");
}

trait ParseMatcher {
    fn parse_matcher(&self) -> capstan::alerts::matchers::Matcher;
}

impl ParseMatcher for &str {
    fn parse_matcher(&self) -> capstan::alerts::matchers::Matcher {
        capstan::alerts::matchers::Matcher::parse(self).unwrap()
    }
}

#[tokio::test]
async fn bad_input_and_wrong_auth_get_a_clear_4xx_and_are_audited() {
    let server = TestServer::start_with(|c| c.alerts.max_body_bytes = 4096).await;
    let url = format!("{}/v1/alerts/alertmanager/am", server.url);
    let ok = group(
        "k",
        vec![alert("fp", "firing", "t0", json!({"alertname": "X"}))],
    );
    let c = client();
    let (status, body) = status_json(c.post(&url).json(&ok).send().await.unwrap()).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = status_json(
        c.post(&url)
            .bearer_auth("cap_wrong")
            .json(&ok)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    // Basic auth, the API token as password, as Alertmanager's http_config can send.
    let token = server.token.clone().unwrap();
    let (status, body) = status_json(
        c.post(&url)
            .basic_auth("capstan", Some(&token))
            .json(&ok)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A viewer may not deliver.
    let (_, t) = server
        .send(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "watcher", "role": "viewer"})),
        )
        .await;
    let viewer = t["token"].as_str().unwrap().to_string();
    let (status, body) = status_json(
        c.post(&url)
            .bearer_auth(&viewer)
            .json(&ok)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = status_json(
        c.post(&url)
            .bearer_auth(&token)
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    let mut bad = ok.clone();
    bad["alerts"][0]["status"] = json!("burning");
    let (status, body) = status_json(
        c.post(&url)
            .bearer_auth(&token)
            .json(&bad)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("alerts[0].status"),
        "{body}"
    );
    let big: Vec<Value> = (0..100)
        .map(|i| alert(&format!("fp{i}"), "firing", "t0", json!({"alertname": "X"})))
        .collect();
    let (status, body) = status_json(
        c.post(&url)
            .bearer_auth(&token)
            .json(&group("k", big))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_body_bytes"),
        "{body}"
    );
    // Every refusal is on the record.
    let env = server.env();
    env.audit.flush().await;
    let q = capstan::capabilities::audit::AuditQuery {
        capability: Some("api".into()),
        allowed: Some(false),
        ..Default::default()
    };
    let records = env.audit.query(&q).await.unwrap();
    let mut outcomes: Vec<String> = records
        .iter()
        .filter(|r| r.target == "/v1/alerts/alertmanager/am")
        .map(|r| r.outcome.clone())
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        ["400", "400", "401", "401", "403", "413"],
        "{records:#?}"
    );
}

const RUNBOOK: &str = r#"
name: restart-web
params:
  fingerprint: {type: string}
  instance: {type: string, default: ""}
steps:
  - id: fix
    plugin: step
    params: {instance: "${{ params.instance }}"}
"#;

#[tokio::test]
async fn a_remediation_starts_one_run_per_alert_episode() {
    let server = TestServer::start().await;
    let kv = "[grants.kv]\nmax_bytes = 65536\nmax_value_bytes = 1024\n";
    server
        .install(
            &manifest("step", "1.0.0", "deploy-step", kv),
            &guest(guests::PIPELINE_STEP),
        )
        .await;
    let r = server
        .request(Method::PUT, "/v1/pipelines/restart-web")
        .header("content-type", "application/yaml")
        .body(RUNBOOK)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    handler(&server, "fixer", "pipeline = \"restart-web\"").await;
    put_route(
        &server,
        "fix",
        json!({ "project": "default", "handlers": ["fixer"] }),
    )
    .await;
    let a = alert(
        "fp9",
        "firing",
        "2026-12-01T00:00:00Z",
        json!({"alertname": "WebDown", "instance": "web-1"}),
    );
    let (_, first) = post(&server, &group("k1", vec![a.clone()])).await;
    let g = handled(&server, first["id"].as_str().unwrap()).await;
    let run = actions_of(&g, "run_pipeline")[0];
    assert_eq!(run["outcome"], "succeeded", "{g:#}");
    let run_id = run["detail"]["run"].as_str().unwrap().to_string();
    let (_, r) = server.get(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(
        r["run"]["params"]["instance"], "web-1",
        "alert labels become parameters: {r:#}"
    );
    assert_eq!(r["run"]["params"]["fingerprint"], "fp9");
    // The same episode in another group (a second Alertmanager route) or a
    // resend starts nothing more.
    let (_, second) = post(&server, &group("k2", vec![a.clone()])).await;
    let g = handled(&server, second["id"].as_str().unwrap()).await;
    let skipped = actions_of(&g, "run_pipeline")[0];
    assert_eq!(skipped["outcome"], "skipped", "{g:#}");
    assert_eq!(skipped["detail"]["run"], run_id.as_str());
    let (_, dup) = post(&server, &group("k1", vec![a])).await;
    assert_eq!(dup["state"], "duplicate");
    let (_, runs) = server.get("/v1/runs?pipeline=restart-web").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs:#}");
    // A new episode (the alert fired again later) is remediated again.
    let again = alert(
        "fp9",
        "firing",
        "2026-12-01T02:00:00Z",
        json!({"alertname": "WebDown", "instance": "web-1"}),
    );
    let (_, third) = post(&server, &group("k1", vec![again])).await;
    let g = handled(&server, third["id"].as_str().unwrap()).await;
    assert_eq!(
        actions_of(&g, "run_pipeline")[0]["outcome"],
        "succeeded",
        "{g:#}"
    );
}

/// A real Alertmanager and a server whose `quiet` handler silences every
/// group routed to it (`silence_check_secs` as given).
async fn silencing(check_secs: Option<u64>) -> (Peer, TestServer) {
    let am = match capstan_tests::peers::alertmanager("http://127.0.0.1:9/unused", None).await {
        Ok(p) => p,
        Err(e) => panic!("{e:#}"),
    };
    let am_url = am.url.clone();
    let server = TestServer::start_with(move |c| {
        c.alerts.alertmanager_url = Some(am_url);
        if let Some(secs) = check_secs {
            c.alerts.silence_check_secs = secs;
        }
    })
    .await;
    handler(&server, "quiet", "silence = \"true\"").await;
    put_route(
        &server,
        "quiet",
        json!({ "project": "default", "handlers": ["quiet"] }),
    )
    .await;
    (am, server)
}

/// `GET` of Alertmanager's API, as JSON.
async fn am_get(am: &Peer, path: &str) -> Value {
    capstan_tests::procs::get_json(&am.url, path).await
}

#[tokio::test]
async fn a_silence_is_made_once_per_fingerprint_in_a_real_alertmanager_and_expires_on_resolve() {
    let (am, server) = silencing(None).await;
    let a = alert(
        "fpS",
        "firing",
        "2026-12-01T00:00:00Z",
        json!({"alertname": "DiskFull", "instance": "db-1"}),
    );
    let (_, first) = post(&server, &group("s1", vec![a.clone()])).await;
    let g = handled(&server, first["id"].as_str().unwrap()).await;
    let made = actions_of(&g, "silence")[0];
    assert_eq!(made["outcome"], "succeeded", "{g:#}");
    let id = made["detail"]["silence"].as_str().unwrap().to_string();
    let silences = || async {
        let list: Vec<Value> =
            serde_json::from_value(am_get(&am, "/api/v2/silences").await).unwrap();
        list
    };
    let list = silences().await;
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["status"]["state"], "active");
    assert_eq!(list[0]["createdBy"], "capstan:quiet");
    let mut matchers: Vec<String> = list[0]["matchers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}={}",
                m["name"].as_str().unwrap(),
                m["value"].as_str().unwrap()
            )
        })
        .collect();
    matchers.sort();
    assert_eq!(matchers, ["alertname=DiskFull", "instance=db-1"]);
    // The same alert through another group: the recorded silence is reused.
    let (_, second) = post(&server, &group("s2", vec![a])).await;
    let g = handled(&server, second["id"].as_str().unwrap()).await;
    let reused = actions_of(&g, "silence")[0];
    assert_eq!(reused["outcome"], "skipped", "{g:#}");
    assert_eq!(reused["detail"]["silence"], id.as_str());
    assert_eq!(silences().await.len(), 1, "no second silence");
    // Resolved: the silence is expired in Alertmanager.
    let resolved = alert(
        "fpS",
        "resolved",
        "2026-12-01T00:00:00Z",
        json!({"alertname": "DiskFull", "instance": "db-1"}),
    );
    let (_, third) = post(&server, &group("s1", vec![resolved])).await;
    let g = handled(&server, third["id"].as_str().unwrap()).await;
    assert_eq!(
        actions_of(&g, "unsilence")[0]["outcome"],
        "succeeded",
        "{g:#}"
    );
    let list = silences().await;
    assert_eq!(list[0]["status"]["state"], "expired", "{list:#?}");
}

/// Alertmanager sends no resolve for a silenced alert. The silence Capstan
/// made stays while the alert is there, silenced, and is expired by the
/// sweep once the alert resolves in a real Alertmanager (no delivery).
#[tokio::test]
async fn a_silence_is_expired_when_its_alert_resolves_while_silenced() {
    let (am, server) = silencing(Some(1)).await;
    // The alert as Prometheus would send it to Alertmanager.
    let labels = json!({"alertname": "NodeDown", "instance": "node-7"});
    let push = |ends: &str| {
        let body = json!([{ "labels": labels, "annotations": {"summary": "down"},
            "startsAt": "2020-01-01T00:00:00Z", "endsAt": ends }]);
        let url = format!("{}/api/v2/alerts", am.url);
        async move {
            let r = client().post(url).json(&body).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
    };
    push("2099-01-01T00:00:00Z").await;
    let am_alerts = || async { am_get(&am, "/api/v2/alerts").await };
    let fp = am_alerts().await[0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let a = alert(&fp, "firing", "2020-01-01T00:00:00Z", labels.clone());
    let (_, first) = post(&server, &group("nd", vec![a])).await;
    let g = handled(&server, first["id"].as_str().unwrap()).await;
    let id = actions_of(&g, "silence")[0]["detail"]["silence"]
        .as_str()
        .expect("a silence")
        .to_string();
    let silence = || async {
        let s = am_get(&am, &format!("/api/v2/silence/{id}")).await;
        s["status"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // Alertmanager holds the alert, silenced by it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = am_alerts().await;
        if list[0]["status"]["silencedBy"][0] == id.as_str() {
            break;
        }
        assert!(Instant::now() < deadline, "never silenced: {list:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Through three sweeps the silence stays: its alert is still there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(silence().await, "active");

    // The alert resolves in Alertmanager; no delivery reaches Capstan.
    push("2020-01-01T00:00:01Z").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while silence().await != "expired" {
        assert!(
            Instant::now() < deadline,
            "the silence of a resolved alert was not expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A group of `n` firing alerts with fingerprints unique to `key`.
fn big_group(key: &str, n: usize) -> Value {
    let alerts = (0..n)
        .map(|i| {
            alert(
                &format!("{key}-{i:05}"),
                "firing",
                "2026-12-01T00:00:00Z",
                json!({"alertname": "Load", "instance": format!("host-{i}"), "severity": "warning"}),
            )
        })
        .collect();
    group(key, alerts)
}

#[tokio::test]
async fn a_group_answered_200_survives_kill_9_and_is_handled_after_restart() {
    use capstan_tests::procs::{Capstan, TOKEN};
    let mut proc = Capstan::start(None, &[]);
    proc.wait_ready().await;
    let url = format!("{}/v1/alerts/alertmanager/am", proc.url());
    let c = client();
    let mut acknowledged = Vec::new();
    for i in 0..40 {
        let body = big_group(&format!("kill-{i}"), 200);
        let r = c
            .post(&url)
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        acknowledged.push(v["id"].as_str().unwrap().to_string());
    }
    // kill -9 right after the last 200: what was acknowledged is on disk.
    let dir = proc.kill_9();
    let proc = Capstan::start(Some(dir), &[]);
    proc.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &acknowledged {
        loop {
            let g = proc.get(&format!("/v1/alerts/groups/{id}")).await;
            assert_eq!(g["id"], id.as_str(), "acknowledged group lost: {g}");
            assert_eq!(g["alerts"], 200);
            if g["state"] != "pending" {
                // No route matches in this server: handled as unrouted.
                assert_eq!(g["state"], "unrouted", "{g}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "group {id} never handled after restart"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The ingest benchmark (BENCHMARKS.md): 1,000-alert groups posted over
/// loopback HTTP, one at a time (answer p50/p99), one every 200 ms (the
/// goal rate of 5,000 alerts/s) and from 4 senders at once (sustained
/// alerts/s). Run explicitly:
/// `cargo test -p capstan-tests --test alerts -- --ignored --nocapture bench_ingest`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run explicitly"]
async fn bench_ingest_1000_alert_groups() {
    let server = TestServer::start_with(|c| c.alerts.max_backlog = 1_000_000).await;
    // 300 samples per phase, so that p99 is not simply the slowest one.
    const N: usize = 300;
    let bodies: Vec<String> = (0..N + 100)
        .map(|i| big_group(&format!("bench-{i}"), 1000).to_string())
        .collect();
    let post_raw = |body: String| {
        let rq = server
            .request(Method::POST, "/v1/alerts/alertmanager/bench")
            .header("content-type", "application/json")
            .body(body);
        async move {
            let t = Instant::now();
            let r = rq.send().await.unwrap();
            assert_eq!(r.status(), 200);
            t.elapsed()
        }
    };
    // The part of each answer spent storing (parsed body -> committed), from
    // the server's own histogram: (sum of seconds, count).
    let storing = || async {
        let metrics = server.metrics().await;
        let value = |name: &str| -> f64 {
            metrics
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        (
            value("capstan_alert_ingest_seconds_sum"),
            value("capstan_alert_ingest_seconds_count"),
        )
    };
    let mean_ms = |(s0, c0): (f64, f64), (s1, c1): (f64, f64)| (s1 - s0) / (c1 - c0) * 1000.0;
    // The storing histogram's cumulative buckets: (le, count).
    let buckets = || async {
        let metrics = server.metrics().await;
        metrics
            .lines()
            .filter_map(|l| l.strip_prefix("capstan_alert_ingest_seconds_bucket{le=\""))
            .filter_map(|l| {
                let (le, n) = l.split_once("\"} ")?;
                Some((le.to_string(), n.parse::<f64>().ok()?))
            })
            .collect::<Vec<_>>()
    };
    let slow_stores = |a: &[(String, f64)], b: &[(String, f64)]| {
        let total = b.last().map_or(0.0, |x| x.1) - a.last().map_or(0.0, |x| x.1);
        a.iter()
            .zip(b)
            .filter(|(x, _)| ["0.032", "0.064", "0.128"].contains(&x.0.as_str()))
            .map(|(x, y)| format!("over {} s: {}", x.0, total - (y.1 - x.1)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let b0 = buckets().await;
    let before = storing().await;
    let mut times = Vec::new();
    for b in &bodies[..N] {
        times.push(post_raw(b.clone()).await);
    }
    times.sort();
    let p99 = |t: &[Duration]| t[(t.len() * 99 / 100).min(t.len() - 1)];
    let after_sequential = storing().await;
    let b1 = buckets().await;
    println!("sequential: storing {}", slow_stores(&b0, &b1));
    println!(
        "sequential: {} groups of 1000 alerts: p50 {:?}, p99 {:?}, max {:?}; storing mean {:.1} ms",
        times.len(),
        times[times.len() / 2],
        p99(&times),
        times[times.len() - 1],
        mean_ms(before, after_sequential)
    );
    // Open loop at the goal rate: a 1,000-alert group every 200 ms (5,000
    // alerts/s), each sent on time whether or not the last was answered.
    let cpu_paced = process_cpu();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut paced = Vec::new();
    for b in &bodies[..N] {
        tick.tick().await;
        let mut b: Value = serde_json::from_str(b).unwrap();
        b["groupKey"] = json!(format!("paced-{}", b["groupKey"].as_str().unwrap()));
        paced.push(tokio::spawn(post_raw(b.to_string())));
    }
    let mut paced: Vec<Duration> = futures::future::join_all(paced)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    paced.sort();
    // Wait until every group is handled, so that the CPU counted is all of it.
    wait_for_backlog_zero(&server).await;
    let cpu_paced = process_cpu() - cpu_paced;
    let after_paced = storing().await;
    let b2 = buckets().await;
    println!("paced: storing {}", slow_stores(&b1, &b2));
    println!(
        "paced at 5,000 alerts/s: {} groups: p50 {:?}, p99 {:?}, max {:?}; storing mean {:.1} ms; process CPU {:.1} ms per group (client included, handled to the end)",
        paced.len(),
        paced[paced.len() / 2],
        p99(&paced),
        paced[paced.len() - 1],
        mean_ms(after_sequential, after_paced),
        cpu_paced.as_secs_f64() * 1000.0 / paced.len() as f64
    );
    let started = Instant::now();
    let mut rest = bodies[N..].to_vec();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mine: Vec<String> = rest.drain(..25).collect();
        let f = mine.into_iter().map(&post_raw).collect::<Vec<_>>();
        tasks.push(async move {
            let mut t = Vec::new();
            for x in f {
                t.push(x.await);
            }
            t
        });
    }
    let mut concurrent: Vec<Duration> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .collect();
    let secs = started.elapsed().as_secs_f64();
    concurrent.sort();
    println!(
        "4 senders: {} groups in {secs:.2} s = {:.0} alerts/s; answer p50 {:?}, p99 {:?}; storing mean {:.1} ms",
        concurrent.len(),
        concurrent.len() as f64 * 1000.0 / secs,
        concurrent[concurrent.len() / 2],
        p99(&concurrent),
        mean_ms(after_paced, storing().await)
    );
}

/// Waits until the server reports no alert group waiting to be handled.
async fn wait_for_backlog_zero(server: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let metrics = server.metrics().await;
        let waiting = metrics
            .lines()
            .find(|l| l.starts_with("capstan_alert_backlog_groups "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        if waiting == Some(0.0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the backlog stayed at {waiting:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// CPU time of this whole process so far (user + system), from
/// `/proc/self/stat` (clock ticks of 10 ms).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name's closing parenthesis: utime is the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|x| x.parse().unwrap())
        .collect();
    Duration::from_millis((f[0] + f[1]) * 10)
}

/// One alerting rule: the `web` job's loopback target is down.
const TARGET_DOWN_RULE: &str = "groups:\n- name: t\n  rules:\n  - alert: TargetDown\n    expr: up{job=\"web\"} == 0\n    for: 0s\n    labels: {severity: page}\n    annotations: {summary: web is down}\n";

/// What each hop of the chain holds, for a failure message.
async fn chain_state(server: &TestServer, prom: &Peer, am: &Peer) -> String {
    let get = |url: String| async move {
        match client().get(&url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => format!("GET {url}: {e}"),
        }
    };
    let (_, groups) = server.get("/v1/alerts/groups?receiver=chain").await;
    format!(
        "Prometheus alerts: {}\nPrometheus log:\n{}\nAlertmanager alerts: {}\nAlertmanager log:\n{}\nCapstan groups: {groups}",
        get(format!("{}/api/v1/alerts", prom.url)).await,
        prom.log_tail(),
        get(format!("{}/api/v2/alerts", am.url)).await,
        am.log_tail(),
    )
}

/// The whole chain with the real things: Prometheus scrapes a loopback
/// target that is down, its rule fires, Alertmanager delivers to Capstan,
/// the handler's notification goes out once; the target comes back and the
/// resolved alert is handed on once.
#[tokio::test]
async fn prometheus_rule_to_alertmanager_to_capstan_fires_and_resolves() {
    let server = TestServer::start().await;
    handler(&server, "pager", "notify = \"true\"").await;
    put_route(
        &server,
        "page",
        json!({ "project": "default", "handlers": ["pager"], "matchers": ["severity=\"page\""] }),
    )
    .await;
    let rec = notifier(&server);
    let webhook = format!("{}/v1/alerts/alertmanager/chain", server.url);
    let am = capstan_tests::peers::alertmanager(&webhook, server.token.as_deref())
        .await
        .unwrap();
    let web_port = capstan_tests::procs::free_port();
    let target = format!("127.0.0.1:{web_port}");
    let am_host = am.url.trim_start_matches("http://");
    let prom = capstan_tests::peers::prometheus_alerting(&target, &[am_host], TARGET_DOWN_RULE)
        .await
        .unwrap();
    let wait_for = |what: &'static str| {
        let (rec, server, prom, am) = (rec.clone(), &server, &prom, &am);
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let bodies = rec.bodies();
                if bodies.iter().any(|(_, b)| b.contains(what)) {
                    return bodies;
                }
                if Instant::now() >= deadline {
                    let state = chain_state(server, prom, am).await;
                    panic!("no `{what}` notification in 60 s: {bodies:?}\n{state}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let bodies = wait_for("TargetDown/firing/").await;
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    // The target comes up: Prometheus resolves, Alertmanager sends resolved.
    let listener = tokio::net::TcpListener::bind(&target).await.unwrap();
    let app = axum::Router::new().route("/metrics", axum::routing::get(|| async { "ok 1\n" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let bodies = wait_for("TargetDown/resolved/").await;
    // Give Alertmanager's repeat of the resolved group time to arrive: it is a duplicate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bodies_after = rec.bodies();
    assert_eq!(
        bodies_after.len(),
        2,
        "one firing, one resolved: {bodies_after:?} (was {bodies:?})"
    );
    let (_, list) = server.get("/v1/alerts/groups?receiver=chain").await;
    let handled: Vec<&Value> = list["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["state"] == "processed")
        .collect();
    assert_eq!(handled.len(), 2, "{list:#}");
}
