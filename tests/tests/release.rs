//! The bundled release pipeline (`examples/pipelines/release.yaml`) end to
//! end, as the platform team would run it: a signed GitHub push to main
//! starts it; the bundled plugins render the Deployment, apply it to the
//! `test` cluster of the real kube-apiserver, wait for the rollout and run an
//! HTTP smoke check against a loopback service; an admin approves prod; the
//! same image goes to `prod`, is awaited, and the team's Slack channel (a
//! loopback stand-in answering as Slack's incoming webhooks document) is
//! told. The test apiserver has no controllers, so the test plays the
//! Deployment controller by patching each Deployment's status.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use capstan::capabilities::kube::ClusterConfig;
use capstan_tests::kube_env;
use capstan_tests::{TestServer, bundled, client, status_json};
use reqwest::Method;
use serde_json::{Value, json};

const GITHUB: &str = include_str!("../fixtures/webhooks/github-push.json");
const HOOK_SECRET: &str = "shop webhook secret 5b1e";

/// The cluster admin's view, independent of Capstan.
struct Kube {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Kube {
    fn new() -> Kube {
        let env = kube_env::shared();
        client(); // installs the process-wide rustls provider
        Kube {
            // The test apiserver's certificate is self-signed.
            http: reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .build()
                .unwrap(),
            base: env.server.clone(),
            token: env.admin_token.clone(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<(&str, Value)>) -> (u16, Value) {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some((content_type, body)) = body {
            rb = rb
                .header("content-type", content_type)
                .body(body.to_string());
        }
        status_json(rb.send().await.unwrap()).await
    }

    async fn ensure_namespace(&self, ns: &str) {
        let body = json!({ "metadata": { "name": ns } });
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/namespaces",
                Some(("application/json", body)),
            )
            .await;
        assert!(
            status == 201 || status == 409,
            "namespace {ns}: {status} {body}"
        );
    }

    async fn deployment(&self, ns: &str, name: &str) -> Option<Value> {
        let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}");
        match self.call(Method::GET, &path, None).await {
            (200, d) => Some(d),
            _ => None,
        }
    }

    /// Plays the Deployment controller and kubelet: once `ns/name` exists,
    /// reports every replica of its current generation available. Returns
    /// whether it is rolled out now.
    async fn roll_out(&self, ns: &str, name: &str) -> bool {
        let Some(d) = self.deployment(ns, name).await else {
            return false;
        };
        let generation = &d["metadata"]["generation"];
        let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
        if d["status"]["observedGeneration"] == *generation
            && d["status"]["availableReplicas"].as_i64() == Some(replicas)
        {
            return true;
        }
        let status = json!({ "status": {
            "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": replicas, "availableReplicas": replicas } });
        let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}/status");
        let (code, body) = self
            .call(
                Method::PATCH,
                &path,
                Some(("application/merge-patch+json", status)),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        false
    }
}

/// What the loopback services saw.
#[derive(Default)]
struct Seen {
    /// The shop in `test` answers its health check once rolled out.
    healthy: AtomicBool,
    smoke_checks: std::sync::Mutex<Vec<u16>>,
    slack: std::sync::Mutex<Vec<Value>>,
}

/// The shop's health endpoint (as the smoke check reaches it) and a Slack
/// incoming webhook, which answers `ok`, or 400 `invalid_payload` /
/// `no_text` as Slack documents.
async fn services(seen: Arc<Seen>) -> String {
    let health = {
        let seen = seen.clone();
        move || async move {
            let up = seen.healthy.load(Ordering::SeqCst);
            let code = if up { 200 } else { 503 };
            seen.smoke_checks.lock().unwrap().push(code);
            let body = if up { "ok" } else { "starting" };
            (http::StatusCode::from_u16(code).unwrap(), body)
        }
    };
    let slack = move |body: String| async move {
        let Ok(message) = serde_json::from_str::<Value>(&body) else {
            return (http::StatusCode::BAD_REQUEST, "invalid_payload");
        };
        if message["text"].as_str().is_none_or(str::is_empty) {
            return (http::StatusCode::BAD_REQUEST, "no_text");
        }
        seen.slack.lock().unwrap().push(message);
        (http::StatusCode::OK, "ok")
    };
    let app = Router::new()
        .route("/healthz", get(health))
        .route("/services/T0001/B0001/XXXXXXXXXXXXXXXX", post(slack));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A bundled plugin's manifest with `grants` appended.
fn granted(name: &str, grants: &str) -> (String, Vec<u8>) {
    let (manifest, wasm) = bundled(name);
    (format!("{manifest}\n{grants}"), wasm)
}

async fn server(services: &str) -> TestServer {
    let kubeconfig = kube_env::shared().kubeconfig.clone();
    let server = TestServer::start_with(move |c| {
        c.kube.clusters = ["test", "prod"]
            .into_iter()
            .map(|name| ClusterConfig {
                name: name.into(),
                kubeconfig: kubeconfig.clone(),
                context: None,
                timeout_ms: 10_000,
            })
            .collect();
        c.limits.default_deadline_ms = 20_000;
    })
    .await;
    // Each plugin is granted exactly what its steps do.
    let kube = |verbs: &str, resources: &str| {
        format!(
            "[[grants.kube]]\ncluster = \"test\"\nnamespaces = [\"shop-test\"]\nresources = [{resources}]\nverbs = [{verbs}]\n\
             [[grants.kube]]\ncluster = \"prod\"\nnamespaces = [\"shop-prod\"]\nresources = [{resources}]\nverbs = [{verbs}]\n"
        )
    };
    let plugins = [
        granted(
            "render-deployment",
            &kube("\"apply\", \"delete\"", "\"apps/Deployment\", \"Service\""),
        ),
        granted("wait-rollout", &kube("\"get\"", "\"apps/Deployment\"")),
        granted(
            "http-step",
            &format!(
                "[grants.http]\nallow = [\"{services}\"]\n[grants.secrets]\nnames = [\"release-slack-webhook\"]\n"
            ),
        ),
    ];
    for (manifest, wasm) in plugins {
        server.install(&manifest, &wasm).await;
    }
    let (status, _) = server
        .send(
            Method::POST,
            "/v1/projects",
            Some(json!({ "name": "shop" })),
        )
        .await;
    assert_eq!(status, 201);
    for (name, value) in [
        ("shop-webhook", HOOK_SECRET.to_string()),
        (
            "release-slack-webhook",
            format!("{services}/services/T0001/B0001/XXXXXXXXXXXXXXXX"),
        ),
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
    server
}

/// The example pipeline, its smoke check pointed at the loopback service.
fn release_yaml(services: &str) -> String {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/pipelines/release.yaml"
    ))
    .unwrap();
    let default = "default: http://shop.shop-test.svc.cluster.local:8080/healthz";
    assert!(yaml.contains(default), "the example's smoke_url moved");
    yaml.replace(default, &format!("default: {services}/healthz"))
}

/// The hex HMAC-SHA256 of `body` under `key`, computed by `openssl`.
fn hmac_hex(key: &str, body: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key, "-hex"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the openssl command signs the test deliveries");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().last().unwrap().to_string()
}

/// A push to acme/shop's main branch, signed as GitHub signs it.
async fn push(server: &TestServer) -> (u16, Value) {
    let body = GITHUB.replace("Codertocat/Hello-World", "acme/shop");
    let signature = hmac_hex(HOOK_SECRET, body.as_bytes());
    let r = client()
        .post(format!("{}/v1/hooks/github/release", server.url))
        .header("content-type", "application/json")
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .header("X-Hub-Signature-256", format!("sha256={signature}"))
        .body(body)
        .send()
        .await
        .unwrap();
    status_json(r).await
}

async fn run(server: &TestServer, id: &str) -> Value {
    let (status, body) = server.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body["run"].clone()
}

fn step_state(run: &Value, step: &str) -> String {
    let s = &run["steps"][step]["state"];
    s["state"]
        .as_str()
        .or(s.as_str())
        .unwrap_or_default()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_main_ships_through_test_smoke_and_approval_to_prod_and_notifies() {
    let kube = Kube::new();
    for ns in ["shop-test", "shop-prod"] {
        kube.ensure_namespace(ns).await;
    }
    let seen = Arc::new(Seen::default());
    let services = services(seen.clone()).await;
    let server = server(&services).await;
    let r = server
        .request(Method::PUT, "/v1/pipelines/release")
        .body(release_yaml(&services))
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(r).await;
    assert_eq!(status, 201, "{body}");

    let (status, body) = push(&server).await;
    assert!(status == 201 || status == 202, "{status} {body}");
    let id = body["run"]["id"]
        .as_str()
        .or(body["run"].as_str())
        .unwrap_or_else(|| panic!("no run in {body}"))
        .to_string();

    // Play the controllers until the run waits for the prod approval.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut run = Value::Null;
    while Instant::now() < deadline {
        if kube.roll_out("shop-test", "shop").await {
            seen.healthy.store(true, Ordering::SeqCst);
        }
        run = self::run(&server, &id).await;
        if step_state(&run, "approve_prod") == "waiting-approval" || run["status"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        step_state(&run, "approve_prod"),
        "waiting-approval",
        "{run:#}"
    );
    let sha = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";
    let image = format!("registry.example.com/shop:{sha}");
    let test = kube.deployment("shop-test", "shop").await.unwrap();
    assert_eq!(
        test["spec"]["template"]["spec"]["containers"][0]["image"],
        image
    );
    assert!(
        kube.deployment("shop-prod", "shop").await.is_none(),
        "prod was deployed before the approval"
    );
    // The smoke check waited for the shop to answer, then passed.
    assert_eq!(
        run["steps"]["smoke_test"]["outputs"]["status"], "200",
        "{run:#}"
    );
    assert_eq!(seen.smoke_checks.lock().unwrap().last(), Some(&200));

    // An admin who did not start the run approves prod.
    let (_, t) = server
        .send(
            Method::POST,
            "/v1/tokens",
            Some(json!({ "name": "release-manager", "projects": { "shop": "admin" } })),
        )
        .await;
    let (_, list) = server.get("/v1/approvals").await;
    let approval = list["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["subject"] == format!("{id}/approve_prod"))
        .unwrap_or_else(|| panic!("no approval for {id}: {list:#}"))
        .clone();
    assert!(
        approval["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&image)
            || approval.to_string().contains(&image),
        "{approval:#}"
    );
    let r = client()
        .post(format!(
            "{}/v1/approvals/{}/approve",
            server.url,
            approval["id"].as_str().unwrap()
        ))
        .bearer_auth(t["token"].as_str().unwrap())
        .json(&json!({ "comment": "smoke is green" }))
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(r).await;
    assert_eq!(status, 200, "{body}");

    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        kube.roll_out("shop-prod", "shop").await;
        run = self::run(&server, &id).await;
        if run["status"] != "running" && run["status"] != "queued" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let prod = kube.deployment("shop-prod", "shop").await.unwrap();
    assert_eq!(
        prod["spec"]["template"]["spec"]["containers"][0]["image"],
        image
    );
    assert_eq!(prod["spec"]["replicas"], 2);
    // Exactly one message reached the channel, naming the image.
    let slack = seen.slack.lock().unwrap().clone();
    assert_eq!(slack.len(), 1, "{slack:#?}");
    assert_eq!(
        slack[0]["text"],
        format!("shop {image} is live in prod"),
        "{slack:#?}"
    );
    // The run's log tells the story, plugins' own lines included.
    let (_, log) = server.get(&format!("/v1/runs/{id}/log")).await;
    let text = log.to_string();
    for needle in [
        "GET answered 200",
        "POST answered 200",
        "rendered deployment",
    ] {
        assert!(text.contains(needle), "`{needle}` not in the log: {log:#}");
    }
}
