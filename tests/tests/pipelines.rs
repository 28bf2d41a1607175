//! Deploy pipelines end to end over the HTTP API: a pipeline stored as
//! YAML, runs started by hand, steps run by a real deploy-step plugin
//! (tests/guests/pipeline-step) that records every call, approvals through
//! the shared gate, environment locks, cancellation, and a run that
//! survives `kill -9` of the server.

use std::time::{Duration, Instant};

use capstan_tests::procs::{Capstan, TOKEN};
use capstan_tests::{TestServer, client, guest, guests, manifest, status_json};
use reqwest::Method;
use serde_json::{Value, json};

const KV: &str = "[grants.kv]\nmax_bytes = 65536\nmax_value_bytes = 1024\n";

async fn server() -> TestServer {
    let server = TestServer::start().await;
    server
        .install(
            &manifest("step", "1.0.0", "deploy-step", KV),
            &guest(guests::PIPELINE_STEP),
        )
        .await;
    server
}

async fn put(server: &TestServer, name: &str, yaml: &str) -> (u16, Value) {
    let r = server
        .request(Method::PUT, &format!("/v1/pipelines/{name}"))
        .header("content-type", "application/yaml")
        .body(yaml.to_string())
        .send()
        .await
        .unwrap();
    status_json(r).await
}

async fn start(server: &TestServer, name: &str, params: Value) -> String {
    let (status, body) = server
        .send(
            Method::POST,
            &format!("/v1/pipelines/{name}/runs"),
            Some(json!({ "params": params })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["run"]["id"].as_str().unwrap().to_string()
}

/// Waits until the run's status is one of `statuses`; returns the run.
async fn wait_status(server: &TestServer, id: &str, statuses: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = server.get(&format!("/v1/runs/{id}")).await;
        assert_eq!(status, 200, "{body}");
        if statuses.contains(&body["run"]["status"].as_str().unwrap_or_default()) {
            return body["run"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "run never reached {statuses:?}: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until step `step` of the run is in `state`.
async fn wait_step(server: &TestServer, id: &str, step: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = server.get(&format!("/v1/runs/{id}")).await;
        let s = &body["run"]["steps"][step];
        if s["state"]["state"] == state || s["state"] == state {
            return body["run"].clone();
        }
        assert!(Instant::now() < deadline, "{step} never {state}: {body:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the plugin recorded, in order: `run <run>/<step>#<attempt>`.
fn calls(server: &TestServer) -> Vec<String> {
    let rows = server
        .env()
        .store
        .with(|c| {
            c.rows(
                "SELECT value FROM kv WHERE plugin = 'step' AND key LIKE 'call/%' ORDER BY key",
                &[],
            )
        })
        .unwrap();
    rows.iter()
        .map(|r| String::from_utf8(r.get::<Vec<u8>>(0).unwrap()).unwrap())
        .collect()
}

fn state_of(run: &Value, step: &str) -> String {
    let s = &run["steps"][step]["state"];
    s["state"]
        .as_str()
        .or(s.as_str())
        .unwrap_or_default()
        .to_string()
}

async fn log_text(server: &TestServer, id: &str) -> String {
    let (status, body) = server.get(&format!("/v1/runs/{id}/log")).await;
    assert_eq!(status, 200, "{body}");
    body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            format!(
                "{} {}",
                l["step"].as_str().unwrap_or("-"),
                l["message"].as_str().unwrap()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_dag_runs_in_order_passes_outputs_and_skips_on_a_false_condition() {
    let server = server().await;
    let yaml = r#"
name: dag
params:
  image: {type: string, default: "shop:1"}
steps:
  - id: build
    plugin: step
    params: {outputs: {image: "${{ params.image }}"}}
    outputs: [image]
  - id: test_a
    plugin: step
    needs: [build]
    params: {}
  - id: test_b
    plugin: step
    needs: [build]
    params: {}
  - id: skipped
    plugin: step
    needs: [build]
    if: 'params.image == "never"'
    params: {}
  - id: deploy
    plugin: step
    needs: [test_a, test_b]
    params: {image: "${{ steps.build.outputs.image }}"}
"#;
    let (status, body) = put(&server, "dag", yaml).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["revision"], 1);
    // Storing the same YAML again is no new revision.
    let (status, body) = put(&server, "dag", yaml).await;
    assert_eq!(
        (status, body["changed"].clone()),
        (200, json!(false)),
        "{body}"
    );

    let id = start(&server, "dag", json!({ "image": "shop:2" })).await;
    let run = wait_status(&server, &id, &["succeeded", "failed"]).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(state_of(&run, "skipped"), "skipped");
    assert_eq!(run["steps"]["build"]["outputs"]["image"], "shop:2");
    let calls = calls(&server);
    let pos = |step: &str| {
        calls
            .iter()
            .position(|c| c == &format!("run {id}/{step}#1"))
            .unwrap_or_else(|| panic!("{step} never ran: {calls:?}"))
    };
    assert!(pos("build") < pos("test_a") && pos("build") < pos("test_b"));
    assert!(pos("test_a") < pos("deploy") && pos("test_b") < pos("deploy"));
    assert_eq!(
        calls.len(),
        4,
        "each step once, the skipped one never: {calls:?}"
    );
    let log = log_text(&server, &id).await;
    assert!(
        log.contains("deploy succeeded: done; inputs [build.image=shop:2"),
        "{log}"
    );
}

#[tokio::test]
async fn a_steps_plugin_log_lines_are_in_its_log_with_secrets_masked_in_every_form() {
    let server = TestServer::start().await;
    let grants = format!("{KV}[grants.secrets]\nnames = [\"deploy-key\"]\n");
    server
        .install(
            &manifest("step", "1.0.0", "deploy-step", &grants),
            &guest(guests::PIPELINE_STEP),
        )
        .await;
    let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU\nQyNTUxOQAAACDx9a8lUo0jV2Xc\n-----END OPENSSH PRIVATE KEY-----";
    let (status, body) = server
        .send(
            Method::PUT,
            "/v1/secrets/deploy-key",
            Some(json!({ "value": key })),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let yaml = r#"
name: leaky
steps:
  - id: deploy
    plugin: step
    params: {log: ["rendering shop:2", "applying 3 objects"], leak_secret: deploy-key}
"#;
    let (status, body) = put(&server, "leaky", yaml).await;
    assert_eq!(status, 201, "{body}");
    let id = start(&server, "leaky", json!({})).await;
    let run = wait_status(&server, &id, &["succeeded", "failed"]).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");

    let (_, body) = server.get(&format!("/v1/runs/{id}/log")).await;
    let lines = body["lines"].as_array().unwrap();
    let plugin: Vec<(&str, &str)> = lines
        .iter()
        .filter(|l| {
            l["source"]
                .as_str()
                .unwrap_or_default()
                .starts_with("plugin:")
        })
        .map(|l| {
            (
                l["source"].as_str().unwrap(),
                l["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        plugin[0],
        ("plugin:info", "rendering shop:2"),
        "{plugin:#?}"
    );
    assert_eq!(plugin[1], ("plugin:info", "applying 3 objects"));
    assert!(
        lines
            .iter()
            .all(|l| l["step"] == "deploy" || l["step"].is_null()),
        "{lines:#?}"
    );
    // The value, each of its lines and its base64 form are all masked.
    let text = serde_json::to_string(lines).unwrap();
    for leak in [
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU",
        "QyNTUxOQAAACDx9a8lUo0jV2Xc",
        "LS0tLS1CRUdJTi",
    ] {
        assert!(!text.contains(leak), "{leak} leaked: {plugin:#?}");
    }
    assert!(
        plugin
            .iter()
            .any(|(_, m)| m.starts_with("as base64: [REDACTED]")),
        "{plugin:#?}"
    );
    assert!(
        plugin
            .iter()
            .filter(|(_, m)| m.contains("[REDACTED]"))
            .count()
            >= 4,
        "{plugin:#?}"
    );

    // The same log as a plain-text download.
    let r = server
        .request(Method::GET, &format!("/v1/runs/{id}/log?format=text"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        r.headers()["content-disposition"],
        format!("attachment; filename=\"run-{id}.log\"").as_str()
    );
    let download = r.text().await.unwrap();
    assert_eq!(download.lines().count(), lines.len(), "{download}");
    assert!(
        download.contains(" deploy plugin:info: rendering shop:2\n"),
        "{download}"
    );
    assert!(!download.contains("b3BlbnNzaC1rZXktdjEAAAAABG5vbmU"));
}

#[tokio::test]
async fn invalid_pipelines_are_refused_with_every_error_named() {
    let server = server().await;
    server
        .install(
            &manifest("collector", "1.0.0", "metrics-source", ""),
            &capstan_tests::bundled("http-probe").1,
        )
        .await;
    let yaml = r#"
name: broken
steps:
  - id: a
    plugin: step
    needs: [c]
  - id: b
    plugin: nosuch
  - id: c
    plugin: step
    needs: [a]
  - id: d
    plugin: collector
    params: {x: "${{ steps.zz.outputs.y }}"}
"#;
    let (status, body) = put(&server, "broken", yaml).await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    for needle in ["cycle", "nosuch", "metrics-source", "zz", "step \"d\""] {
        assert!(message.contains(needle), "`{needle}` not in: {message}");
    }
    let (status, _) = server.get("/v1/pipelines/broken").await;
    assert_eq!(status, 404, "nothing was stored");
    // The path names the pipeline the document must have.
    let (status, body) = put(
        &server,
        "other",
        "name: dag\nsteps: [{id: a, plugin: step}]\n",
    )
    .await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test]
async fn a_transient_failure_is_retried_with_the_same_idempotency_key_and_retry_after_waits() {
    let server = server().await;
    let yaml = r#"
name: retry
steps:
  - id: flaky
    plugin: step
    params: {fail_until_attempt: 3}
    retries: {count: 3, backoff: {initial: 10ms, max: 50ms}, on: [transient]}
  - id: rollout
    plugin: step
    needs: [flaky]
    params: {wait_polls: 3, poll_ms: 20}
    timeout: 20s
"#;
    assert_eq!(put(&server, "retry", yaml).await.0, 201);
    let id = start(&server, "retry", json!({})).await;
    let run = wait_status(&server, &id, &["succeeded", "failed"]).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let calls = calls(&server);
    let flaky: Vec<&String> = calls.iter().filter(|c| c.contains("/flaky#")).collect();
    assert_eq!(
        flaky,
        [
            &format!("run {id}/flaky#1"),
            &format!("run {id}/flaky#2"),
            &format!("run {id}/flaky#3")
        ],
        "three attempts under one key"
    );
    // retry-after calls the same attempt again; it is not a retry.
    let rollout: Vec<&String> = calls.iter().filter(|c| c.contains("/rollout#")).collect();
    assert_eq!(rollout.len(), 3, "{calls:?}");
    assert!(rollout.iter().all(|c| c.ends_with("#1")), "{rollout:?}");
}

#[tokio::test]
async fn a_failure_rolls_back_completed_steps_newest_first_and_finally_runs() {
    let server = server().await;
    let yaml = r#"
name: rollback
steps:
  - id: one
    plugin: step
    params: {}
  - id: two
    plugin: step
    needs: [one]
    params: {}
  - id: three
    plugin: step
    needs: [two]
    on_failure: rollback
    params: {fail: "invalid-input"}
finally:
  - id: notify
    plugin: step
    params: {}
"#;
    assert_eq!(put(&server, "rollback", yaml).await.0, 201);
    let id = start(&server, "rollback", json!({})).await;
    let run = wait_status(&server, &id, &["rolled-back", "failed", "succeeded"]).await;
    assert_eq!(run["status"], "rolled-back", "{run:#}");
    let calls = calls(&server);
    let rb: Vec<&str> = calls
        .iter()
        .filter(|c| c.starts_with("rollback"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        rb,
        [
            format!("rollback {id}/two#1"),
            format!("rollback {id}/one#1")
        ],
        "{calls:?}"
    );
    let notify = calls
        .iter()
        .position(|c| c.contains("/notify#"))
        .expect("finally ran");
    assert!(notify > calls.iter().position(|c| c.contains("rollback")).unwrap());
}

#[tokio::test]
async fn an_approval_gate_waits_and_the_starter_cannot_approve() {
    let server = server().await;
    let yaml = r#"
name: gated
project: default
steps:
  - id: test
    plugin: step
    params: {}
  - id: approve
    needs: [test]
    approval: {approvers: {role: admin}, required: 1, message: "ship it?"}
  - id: prod
    plugin: step
    needs: [approve]
    params: {}
"#;
    assert_eq!(put(&server, "gated", yaml).await.0, 201);
    let id = start(&server, "gated", json!({})).await;
    wait_step(&server, &id, "approve", "waiting-approval").await;
    let approval = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, list) = server.get("/v1/approvals").await;
            let found = list["approvals"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["subject"] == format!("{id}/approve"))
                .cloned();
            if let Some(a) = found {
                break a;
            }
            assert!(Instant::now() < deadline, "no approval filed: {list:#}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert_eq!(approval["kind"], "pipeline-step");
    // The admin who started the run may not approve it.
    let path = format!("/v1/approvals/{}/approve", approval["id"].as_str().unwrap());
    let (status, body) = server
        .send(Method::POST, &path, Some(json!({ "comment": "mine" })))
        .await;
    assert_eq!(status, 403, "{body}");
    // A second admin may.
    let (_, t) = server
        .send(
            Method::POST,
            "/v1/tokens",
            Some(json!({ "name": "releaser", "role": "admin" })),
        )
        .await;
    let r = client()
        .post(format!("{}{path}", server.url))
        .bearer_auth(t["token"].as_str().unwrap())
        .json(&json!({ "comment": "looks good" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let run = wait_status(&server, &id, &["succeeded", "failed"]).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert!(calls(&server).contains(&format!("run {id}/prod#1")));
}

#[tokio::test]
async fn one_run_at_a_time_deploys_into_an_environment_oldest_first() {
    let server = server().await;
    let yaml = r#"
name: locked
environments: {prod: {lock: queue}}
steps:
  - id: deploy
    plugin: step
    environment: prod
    params: {spin_ms: 300}
"#;
    assert_eq!(put(&server, "locked", yaml).await.0, 201);
    let first = start(&server, "locked", json!({})).await;
    let second = start(&server, "locked", json!({})).await;
    for id in [&first, &second] {
        let run = wait_status(&server, id, &["succeeded", "failed"]).await;
        assert_eq!(run["status"], "succeeded", "{run:#}");
    }
    let calls = calls(&server);
    assert_eq!(
        calls,
        [
            format!("run {first}/deploy#1"),
            format!("run {second}/deploy#1")
        ]
    );
    let log = log_text(&server, &second).await;
    assert!(
        log.to_lowercase().contains("lock"),
        "the second run says it waited: {log}"
    );
}

/// The approval filed for gate `step` of run `id`, once it exists.
async fn approval_of(server: &TestServer, id: &str, step: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list) = server.get("/v1/approvals").await;
        let found = list["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["subject"] == format!("{id}/{step}") && a["state"] == "pending")
            .cloned();
        if let Some(a) = found {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no approval for {id}/{step}: {list:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Approves gate `step` of run `id` as a second admin (the starter may not).
async fn approve(server: &TestServer, id: &str, step: &str) {
    let approval = approval_of(server, id, step).await;
    let (status, t) = server
        .send(
            Method::POST,
            "/v1/tokens",
            Some(json!({ "name": format!("approver-{}", approval["id"].as_str().unwrap()), "role": "admin" })),
        )
        .await;
    assert_eq!(status, 201, "{t}");
    let r = client()
        .post(format!(
            "{}/v1/approvals/{}/approve",
            server.url,
            approval["id"].as_str().unwrap()
        ))
        .bearer_auth(t["token"].as_str().unwrap())
        .json(&json!({ "comment": "go" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn a_newer_waiting_run_supersedes_older_ones_and_says_so() {
    let server = server().await;
    // The lock on prod is held from `deploy` until `verify` is done, so the
    // first run holds it while its gate waits.
    let yaml = r#"
name: superseding
project: default
environments: {prod: {lock: supersede}}
steps:
  - {id: deploy, plugin: step, environment: prod, params: {}}
  - id: hold
    needs: [deploy]
    approval: {approvers: {role: admin}, required: 1}
  - {id: verify, plugin: step, environment: prod, needs: [hold], params: {}}
"#;
    assert_eq!(put(&server, "superseding", yaml).await.0, 201);
    let first = start(&server, "superseding", json!({})).await;
    wait_step(&server, &first, "hold", "waiting-approval").await;
    let second = start(&server, "superseding", json!({})).await;
    wait_step(&server, &second, "deploy", "waiting-lock").await;
    let third = start(&server, "superseding", json!({})).await;

    // The second run ends at once, saying which run took its place.
    let run = wait_status(&server, &second, &["superseded"]).await;
    let reason = run["stop"]["reason"]
        .as_str()
        .or(run["reason"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| run.to_string());
    assert!(reason.contains(&third), "{run:#}");
    assert!(log_text(&server, &second).await.contains(&third));

    approve(&server, &first, "hold").await;
    assert_eq!(
        wait_status(&server, &first, &["succeeded", "failed"]).await["status"],
        "succeeded"
    );
    approve(&server, &third, "hold").await;
    assert_eq!(
        wait_status(&server, &third, &["succeeded", "failed"]).await["status"],
        "succeeded"
    );
    let calls = calls(&server);
    assert_eq!(
        calls,
        [
            format!("run {first}/deploy#1"),
            format!("run {first}/verify#1"),
            format!("run {third}/deploy#1"),
            format!("run {third}/verify#1"),
        ],
        "the superseded run never deployed"
    );
}

#[tokio::test]
async fn concurrency_limits_queue_runs_per_pipeline_and_over_all_pipelines() {
    let server = TestServer::start_with(|c| c.pipelines_max_running = 2).await;
    server
        .install(
            &manifest("step", "1.0.0", "deploy-step", KV),
            &guest(guests::PIPELINE_STEP),
        )
        .await;
    // Each run holds its place until its gate is approved.
    let gated = |name: &str, limit: &str| {
        format!(
            "name: {name}\nproject: default\n{limit}steps:\n  - {{id: work, plugin: step, params: {{}}}}\n  - id: hold\n    needs: [work]\n    approval: {{approvers: {{role: admin}}, required: 1}}\n"
        )
    };
    assert_eq!(
        put(&server, "one", &gated("one", "concurrency: 1\n"))
            .await
            .0,
        201
    );
    assert_eq!(put(&server, "other", &gated("other", "")).await.0, 201);

    // Per pipeline: `one` runs one at a time, the next waits queued.
    let a = start(&server, "one", json!({})).await;
    wait_step(&server, &a, "hold", "waiting-approval").await;
    let b = start(&server, "one", json!({})).await;
    // Over all pipelines: two started runs fill the server's limit.
    let c = start(&server, "other", json!({})).await;
    wait_step(&server, &c, "hold", "waiting-approval").await;
    let d = start(&server, "other", json!({})).await;
    for id in [&b, &d] {
        let (_, body) = server.get(&format!("/v1/runs/{id}")).await;
        assert_eq!(body["run"]["status"], "queued", "{body:#}");
    }
    let calls_before: Vec<String> = calls(&server);
    assert_eq!(calls_before.len(), 2, "{calls_before:?}");

    // Each approval frees a place; the oldest queued run takes it.
    approve(&server, &a, "hold").await;
    wait_status(&server, &a, &["succeeded"]).await;
    wait_step(&server, &b, "hold", "waiting-approval").await;
    let (_, body) = server.get(&format!("/v1/runs/{d}")).await;
    assert_eq!(body["run"]["status"], "queued", "{body:#}");
    approve(&server, &c, "hold").await;
    wait_step(&server, &d, "hold", "waiting-approval").await;
    for id in [&b, &d] {
        approve(&server, id, "hold").await;
        wait_status(&server, id, &["succeeded"]).await;
    }
}

#[tokio::test]
async fn cancel_with_rollback_undoes_what_was_done() {
    let server = server().await;
    let yaml = r#"
name: cancel
steps:
  - id: one
    plugin: step
    params: {}
  - id: slow
    plugin: step
    needs: [one]
    params: {wait_polls: 1000, poll_ms: 50}
    timeout: 60s
"#;
    assert_eq!(put(&server, "cancel", yaml).await.0, 201);
    let id = start(&server, "cancel", json!({})).await;
    wait_step(&server, &id, "slow", "waiting-retry").await;
    let (status, body) = server
        .send(
            Method::POST,
            &format!("/v1/runs/{id}/cancel"),
            Some(json!({ "rollback": true })),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let run = wait_status(&server, &id, &["cancelled", "rolled-back", "failed"]).await;
    assert!(
        run["status"] == "cancelled" || run["status"] == "rolled-back",
        "{run:#}"
    );
    assert!(calls(&server).contains(&format!("rollback {id}/one#1")));
    let (status, _) = server
        .send(
            Method::POST,
            &format!("/v1/runs/{id}/cancel"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 409, "a finished run cannot be cancelled again");
}

/// A `capstan` process with the `step` plugin and pipeline `yaml` stored.
async fn process_with(name: &str, yaml: &str) -> Capstan {
    let proc = Capstan::start(None, &[]);
    proc.wait_ready().await;
    capstan_tests::procs::step_and_pipeline(&proc.url(), name, yaml).await;
    proc
}

/// kill -9 while a step is in flight: after the restart the run resumes; the
/// step runs again as attempt 2 under the same key; the step that had
/// completed does not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_kill_9_and_no_completed_step_runs_twice() {
    let yaml = "name: crash\nsteps:\n  - {id: quick, plugin: step, params: {}}\n  - {id: long, plugin: step, needs: [quick], params: {spin_ms: 1500}, timeout: 60s}\n";
    let mut proc = process_with("crash", yaml).await;
    let (c, base) = (client(), proc.url());
    let r = c
        .post(format!("{base}/v1/pipelines/crash/runs"))
        .bearer_auth(TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["run"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Kill it while `long` runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = proc.get(&format!("/v1/runs/{id}")).await;
        if state_of(&run["run"], "long") == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "long never ran: {run:#}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dir = proc.kill_9();
    let proc = Capstan::start(Some(dir), &[]);
    proc.wait_ready().await;
    let base = proc.url();
    let deadline = Instant::now() + Duration::from_secs(60);
    let run = loop {
        let body = proc.get(&format!("/v1/runs/{id}")).await;
        if body["run"]["status"] != "running" && body["run"]["status"] != "queued" {
            break body["run"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "the run never finished after the restart: {body:#}\n{}",
            proc.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let r = c
        .get(format!("{base}/v1/runs/{id}/log"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let log = r.text().await.unwrap();
    assert!(
        log.contains("attempt 2 started"),
        "long ran again as attempt 2: {log}"
    );
    assert!(
        log.contains("resumed: driven again after a restart"),
        "the log says when the run was resumed: {log}"
    );
    assert_eq!(
        log.matches("quick\",\"source\":\"engine\",\"message\":\"attempt 1 started")
            .count(),
        1,
        "{log}"
    );
    assert!(
        !log.contains("quick\",\"source\":\"engine\",\"message\":\"attempt 2"),
        "quick ran once: {log}"
    );
}

#[tokio::test]
async fn pipelines_in_the_watched_directory_load_reload_and_report_errors() {
    let server = server().await;
    let dir = server.dir.path().join("pipelines");
    let write = |file: &str, text: &str| std::fs::write(dir.join(file), text).unwrap();
    let wait_for = |want: &'static str| {
        let server = &server;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let (_, list) = server.get("/v1/pipelines").await;
                if list.to_string().contains(want) {
                    return list;
                }
                assert!(Instant::now() < deadline, "never saw {want}: {list:#}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    };
    write(
        "watched.yaml",
        "name: watched\nsteps: [{id: a, plugin: step, params: {}}]\n",
    );
    let list = wait_for("\"watched\"").await;
    let p = list["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "watched")
        .unwrap()
        .clone();
    assert_eq!(
        (p["revision"].clone(), p["source"].clone()),
        (json!(1), json!("directory"))
    );
    // An edit is the next revision; a broken file keeps its error and the
    // last good revision keeps serving.
    write(
        "watched.yaml",
        "name: watched\nsteps: [{id: a, plugin: step, params: {x: 1}}]\n",
    );
    wait_for("\"revision\":2").await;
    write(
        "watched.yaml",
        "name: watched\nsteps: [{id: a, plugin: nosuch}]\n",
    );
    let list = wait_for("nosuch").await;
    assert!(
        list["errors"]["watched.yaml"]
            .as_str()
            .unwrap()
            .contains("pipelines/watched.yaml"),
        "{list:#}"
    );
    let (_, detail) = server.get("/v1/pipelines/watched").await;
    assert_eq!(detail["revision"], 2);
    let id = start(&server, "watched", json!({})).await;
    assert_eq!(
        wait_status(&server, &id, &["succeeded", "failed"]).await["status"],
        "succeeded"
    );
}

#[tokio::test]
async fn a_failed_run_reruns_from_its_failed_step_reusing_earlier_outputs() {
    let server = server().await;
    let yaml = r#"
name: rerun
params:
  broken: {type: bool, default: true}
steps:
  - id: build
    plugin: step
    params: {outputs: {image: "shop:7"}}
    outputs: [image]
  - id: deploy
    plugin: step
    needs: [build]
    params: {fail: "${{ params.broken ? 'failed' : 'no' }}", image: "${{ steps.build.outputs.image }}"}
"#;
    assert_eq!(put(&server, "rerun", yaml).await.0, 201);
    let first = start(&server, "rerun", json!({})).await;
    assert_eq!(
        wait_status(&server, &first, &["succeeded", "failed"]).await["status"],
        "failed"
    );
    // Follow the log as server-sent events: the lines, then `end`.
    let r = server
        .request(Method::GET, &format!("/v1/runs/{first}/log?follow=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    assert!(
        text.contains("event: line") && text.contains("event: end\ndata: failed"),
        "{text}"
    );
    // A finished run reruns from a step it has, here `deploy`.
    let (status, body) = server
        .send(
            Method::POST,
            &format!("/v1/runs/{first}/rerun"),
            Some(json!({ "from": "nosuch" })),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = server
        .send(
            Method::POST,
            &format!("/v1/runs/{first}/rerun"),
            Some(json!({ "from": "deploy" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let second = body["run"]["id"].as_str().unwrap().to_string();
    assert_eq!(body["run"]["lineage"]["parent"], first.as_str(), "{body:#}");
    // Both are audited, with who did it and how.
    let started = server.changes(&first).await;
    assert_eq!(started.len(), 1, "{started:#?}");
    assert_eq!(
        (&started[0]["verb"], &started[0]["actor"]),
        (&json!("run.start"), &json!("token:bootstrap-admin")),
        "{started:#?}"
    );
    assert_eq!(
        (
            &started[0]["detail"]["pipeline"],
            &started[0]["detail"]["params"]
        ),
        (&json!("rerun"), &json!({ "broken": true })),
        "{started:#?}"
    );
    let rerun = server.changes(&second).await;
    assert_eq!(rerun.len(), 1, "{rerun:#?}");
    assert_eq!(
        (
            &rerun[0]["verb"],
            &rerun[0]["detail"]["rerun_of"],
            &rerun[0]["detail"]["from"]
        ),
        (&json!("run.rerun"), &json!(first), &json!("deploy")),
        "{rerun:#?}"
    );
    let run = wait_status(&server, &second, &["succeeded", "failed"]).await;
    // Params are the first run's: deploy fails the same way, but build was
    // not run again and its output was reused.
    assert_eq!(run["status"], "failed", "{run:#}");
    let calls = calls(&server);
    assert!(
        !calls.contains(&format!("run {second}/build#1")),
        "{calls:?}"
    );
    assert!(
        calls.contains(&format!("run {second}/deploy#1")),
        "{calls:?}"
    );
    assert_eq!(run["steps"]["build"]["outputs"]["image"], "shop:7");
}

#[tokio::test]
async fn the_bundled_example_release_pipeline_is_accepted() {
    let server = TestServer::start_with(|c| c.bundled_plugins = true).await;
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/pipelines/release.yaml"
    ))
    .unwrap();
    let (status, body) = put(&server, "release", &yaml).await;
    assert_eq!(status, 404, "project `shop` must exist first: {body}");
    let (status, _) = server
        .send(
            Method::POST,
            "/v1/projects",
            Some(json!({ "name": "shop" })),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = put(&server, "release", &yaml).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["project"], "shop");
    // Stored, but its GitHub trigger cannot work until the secret exists.
    let warning = body["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.starts_with("triggers[0].push.secret: no secret named `shop-webhook` is stored"),
        "{body:#}"
    );
    let (status, _) = server
        .send(
            Method::PUT,
            "/v1/secrets/shop-webhook",
            Some(json!({ "value": "hook key" })),
        )
        .await;
    assert_eq!(status, 204);
    let (_, body) = server.get("/v1/pipelines/release").await;
    assert!(body.get("warnings").is_none(), "{body:#}");
}

#[tokio::test]
async fn a_step_that_never_ends_hits_its_timeout_and_the_failure_policy_acts() {
    let server = server().await;
    let yaml = r#"
name: forever
steps:
  - id: first
    plugin: step
    params: {}
  - id: spin
    plugin: step
    needs: [first]
    params: {spin_ms: 600000}
    timeout: 700ms
    on_failure: rollback
"#;
    assert_eq!(put(&server, "forever", yaml).await.0, 201);
    let id = start(&server, "forever", json!({})).await;
    let started = Instant::now();
    let run = wait_status(&server, &id, &["rolled-back", "failed", "succeeded"]).await;
    assert_eq!(run["status"], "rolled-back", "{run:#}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the timeout stopped it, not the plugin"
    );
    let spin = &run["steps"]["spin"]["state"];
    assert_eq!(spin["kind"], "timeout", "{run:#}");
    assert!(calls(&server).contains(&format!("rollback {id}/first#1")));
}

#[tokio::test]
async fn runs_steps_and_lock_waits_are_in_the_metrics() {
    let server = server().await;
    let yaml = "name: measured\nenvironments: {prod: {}}\nsteps:\n  - {id: deploy, plugin: step, environment: prod, params: {}}\n";
    assert_eq!(put(&server, "measured", yaml).await.0, 201);
    let id = start(&server, "measured", json!({})).await;
    assert_eq!(
        wait_status(&server, &id, &["succeeded", "failed"]).await["status"],
        "succeeded"
    );
    let needles = [
        "capstan_pipeline_runs_total{pipeline=\"measured\",status=\"succeeded\"} 1",
        "capstan_pipeline_step_duration_seconds_count{pipeline=\"measured\",step=\"deploy\",outcome=\"succeeded\"} 1",
        "capstan_pipeline_lock_wait_seconds_count{pipeline=\"measured\"} 1",
        "capstan_pipeline_runs_queued ",
        "capstan_pipeline_runs_waiting_lock ",
    ];
    // The run's counter goes up once its end is stored, so an API read of
    // the run may come first: give the scrape a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = server.metrics().await;
    while !needles.iter().all(|n| text.contains(n)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = server.metrics().await;
    }
    for needle in needles {
        assert!(
            text.contains(needle),
            "`{needle}` missing from:\n{}",
            text.lines()
                .filter(|l| l.contains("pipeline"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// kill -9 at random points across 50 runs of a 3-step pipeline: after the
/// last restart every run finishes, none is lost, and no step attempt runs
/// twice (a step runs again only as a new, higher attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_runs_survive_repeated_kill_9_without_a_step_running_twice() {
    let yaml = "name: chain\nsteps:\n  - {id: a, plugin: step, params: {}}\n  - {id: b, plugin: step, needs: [a], params: {spin_ms: 30}, timeout: 60s}\n  - {id: c, plugin: step, needs: [b], params: {}}\n";
    let mut proc = process_with("chain", yaml).await;
    let (c, base) = (client(), proc.url());
    let mut ids = Vec::new();
    for _ in 0..50 {
        let r = c
            .post(format!("{base}/v1/pipelines/chain/runs"))
            .bearer_auth(TOKEN)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        ids.push(
            r.json::<Value>().await.unwrap()["run"]["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // Three kills at pseudo-random moments (seeded: reproducible).
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..3 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(100 + seed % 400)).await;
        let dir = proc.kill_9();
        proc = Capstan::start(Some(dir), &[]);
        proc.wait_ready().await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let runs = proc.get("/v1/runs?pipeline=chain&limit=100").await;
        let runs = runs["runs"].as_array().unwrap().clone();
        assert_eq!(runs.len(), 50, "no run lost");
        let done = runs
            .iter()
            .filter(|r| r["run"]["status"] == "succeeded")
            .count();
        if done == 50 {
            break;
        }
        let other: Vec<&Value> = runs
            .iter()
            .filter(|r| {
                !["succeeded", "running", "queued"].contains(&r["run"]["status"].as_str().unwrap())
            })
            .collect();
        assert!(other.is_empty(), "runs ended otherwise: {other:#?}");
        assert!(
            Instant::now() < deadline,
            "{done}/50 finished\n{}",
            proc.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What the plugin saw: each (run, step, attempt) at most once, and a
    // step ran again only with a higher attempt.
    let dir = proc.kill_9();
    let db = rusqlite::Connection::open(dir.path().join("capstan.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT value FROM kv WHERE plugin = 'step' AND key LIKE 'call/%'")
        .unwrap();
    let calls: Vec<String> = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|v| String::from_utf8(v.unwrap()).unwrap())
        .collect();
    let retried = each_attempt_once(&calls, &ids, &["a", "b", "c"]);
    eprintln!(
        "{} step calls for 150 steps; {retried} re-ran as a later attempt after a kill",
        calls.len()
    );
}

/// What the plugin recorded: each (run, step, attempt) at most once, and
/// every step of every run in `ids` ran. Returns how many calls were later
/// attempts (a step in flight at a kill runs again as the next attempt).
fn each_attempt_once(calls: &[String], ids: &[String], steps: &[&str]) -> usize {
    let mut seen = std::collections::HashSet::new();
    for call in calls {
        assert!(seen.insert(call.clone()), "ran twice: {call}");
    }
    for id in ids {
        for step in steps {
            assert!(
                calls
                    .iter()
                    .any(|c| c.starts_with(&format!("run {id}/{step}#"))),
                "{id}/{step} never ran"
            );
        }
    }
    calls.iter().filter(|c| !c.ends_with("#1")).count()
}

/// Two replicas on one PostgreSQL share the runs: each attempt runs on one
/// of them only, and when one is killed the other takes over the runs it
/// drove (once their leases expire) and finishes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_run_the_same_attempt_and_one_finishes_what_a_killed_one_drove() {
    let Some(db) = capstan::store::testing::PgDatabase::create() else {
        assert!(
            std::env::var("CAPSTAN_REQUIRE_PG").as_deref() != Ok("1"),
            "CAPSTAN_REQUIRE_PG=1 but CAPSTAN_TEST_PG is not set"
        );
        eprintln!("note: CAPSTAN_TEST_PG is not set; the replica test needs PostgreSQL");
        return;
    };
    let env = [("CAPSTAN_DATABASE", db.url.as_str())];
    let mut replicas = [Capstan::start(None, &env), Capstan::start(None, &env)];
    for r in &replicas {
        r.wait_ready().await;
    }
    let yaml = "name: shared\nsteps:\n  - {id: a, plugin: step, params: {}}\n  - {id: b, plugin: step, needs: [a], params: {spin_ms: 200}, timeout: 120s}\n  - {id: c, plugin: step, needs: [b], params: {}}\n";
    capstan_tests::procs::step_and_pipeline(&replicas[0].url(), "shared", yaml).await;
    // Runs started on both replicas, alternately.
    let c = client();
    let mut ids = Vec::new();
    for i in 0..30 {
        let base = replicas[i % 2].url();
        let r = c
            .post(format!("{base}/v1/pipelines/shared/runs"))
            .bearer_auth(TOKEN)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.unwrap();
        ids.push(body["run"]["id"].as_str().unwrap().to_string());
    }
    // Kill one replica while runs are in step b.
    tokio::time::sleep(Duration::from_millis(400)).await;
    replicas[0].kill_9();
    let survivor = &replicas[1];
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let runs = survivor.get("/v1/runs?pipeline=shared&limit=100").await;
        let runs = runs["runs"].as_array().unwrap().clone();
        assert_eq!(runs.len(), 30, "no run lost");
        let done = runs
            .iter()
            .filter(|r| r["run"]["status"] == "succeeded")
            .count();
        if done == 30 {
            break;
        }
        if Instant::now() > deadline {
            let stuck: Vec<&Value> = runs
                .iter()
                .filter(|r| r["run"]["status"] != "succeeded")
                .collect();
            panic!("{done}/30 finished; not: {stuck:#?}\n{}", survivor.log());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let url = db.url.clone();
    let calls: Vec<String> = capstan::store::blocking(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.query(
            "SELECT value FROM kv WHERE plugin = 'step' AND key LIKE 'call/%'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| String::from_utf8(r.get::<_, Vec<u8>>(0)).unwrap())
        .collect()
    });
    let retried = each_attempt_once(&calls, &ids, &["a", "b", "c"]);
    eprintln!("{retried} attempts re-ran on the survivor after the kill");
}
