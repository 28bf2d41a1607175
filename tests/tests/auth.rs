//! API security over real HTTP: bearer tokens and roles, token management,
//! hashed storage, audit of mutating calls (refusals included), the secrets
//! API, rate and concurrency limits, and the TLS listener.

use std::sync::Arc;

use capstan_tests::{TestServer, guest, guests, manifest, probe, status_json};
use reqwest::Method;
use serde_json::{Value, json};

/// Sends a request as `token` (or without one).
async fn call(
    server: &TestServer,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut rb = server
        .client
        .request(method, format!("{}{path}", server.url));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.expect("request");
    let headers = r.headers().clone();
    let (status, body) = status_json(r).await;
    (status, body, headers)
}

/// Creates a token as the admin and returns its secret.
async fn create_token(server: &TestServer, name: &str, role: &str) -> String {
    let (status, body) = server
        .send(
            Method::POST,
            "/v1/tokens",
            Some(json!({ "name": name, "role": role })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], name);
    assert_eq!(body["role"], role);
    let secret = body["token"].as_str().unwrap().to_string();
    assert!(secret.starts_with("cap_") && secret.len() >= 40, "{secret}");
    secret
}

async fn upload_as(server: &TestServer, token: &str, name: &str) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .text("manifest", manifest(name, "1.0.0", "deploy-step", ""))
        .part(
            "component",
            reqwest::multipart::Part::bytes(guest(guests::FAULT_STEP)),
        );
    let r = server
        .client
        .post(format!("{}/v1/plugins", server.url))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    status_json(r).await
}

async fn api_audit(server: &TestServer) -> Vec<Value> {
    let (status, body) = server.get("/v1/audit?capability=api&limit=1000").await;
    assert_eq!(status, 200, "{body}");
    body["records"].as_array().unwrap().clone()
}

fn find<'a>(
    records: &'a [Value],
    actor: &str,
    verb: &str,
    target: &str,
    outcome: &str,
) -> Option<&'a Value> {
    records.iter().find(|r| {
        r["actor"] == actor && r["verb"] == verb && r["target"] == target && r["outcome"] == outcome
    })
}

#[tokio::test]
async fn missing_bad_and_revoked_tokens_get_401() {
    let server = TestServer::start().await;
    // Probes and (by default) metrics need no token.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _, _) = call(&server, None, Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}");
    }

    let (status, body, headers) = call(&server, None, Method::GET, "/v1/plugins", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer"), "{challenge}");

    let (status, body, headers) = call(
        &server,
        Some("cap_not-a-real-token"),
        Method::GET,
        "/v1/plugins",
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    // Not a bearer scheme at all.
    let r = server
        .client
        .get(format!("{}/v1/plugins", server.url))
        .basic_auth("admin", Some("password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Unknown routes do not tell an anonymous caller whether they exist.
    let (status, _, _) = call(&server, None, Method::GET, "/v1/no-such-route", None).await;
    assert_eq!(status, 401);

    let viewer = create_token(&server, "short-lived", "viewer").await;
    let (status, _, _) = call(&server, Some(&viewer), Method::GET, "/v1/plugins", None).await;
    assert_eq!(status, 200);
    let (status, body) = server
        .send(Method::DELETE, "/v1/tokens/short-lived", None)
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body, _) = call(&server, Some(&viewer), Method::GET, "/v1/plugins", None).await;
    assert_eq!(status, 401, "revoked tokens stop working at once: {body}");
    let (status, _) = server
        .send(Method::DELETE, "/v1/tokens/short-lived", None)
        .await;
    assert_eq!(status, 404, "already revoked");
}

#[tokio::test]
async fn viewer_reads_operator_runs_admin_manages() {
    let server = TestServer::start().await;
    let viewer = create_token(&server, "dashboard", "viewer").await;
    let operator = create_token(&server, "ci", "operator").await;

    // Operator: upload, invoke, activate, roll back.
    let (status, body) = upload_as(&server, &operator, "step").await;
    assert_eq!(status, 201, "{body}");
    let (status, body, _) = call(
        &server,
        Some(&operator),
        Method::POST,
        "/v1/plugins/step/invoke",
        Some(json!({ "params": { "echo": 1 } })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = call(
        &server,
        Some(&operator),
        Method::PUT,
        "/v1/plugins/step/active",
        Some(json!({ "version": "1.0.0" })),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Viewer: every GET, nothing else.
    for path in [
        "/v1/plugins",
        "/v1/plugins/step",
        "/v1/plugins/step/versions",
        "/v1/plugins/step/invocations",
        "/v1/audit",
        "/openapi.json",
    ] {
        let (status, body, _) = call(&server, Some(&viewer), Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, body) = upload_as(&server, &viewer, "other").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(body["error"]["details"]["required_role"], "operator");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("operator"),
        "{body}"
    );
    let (status, body, _) = call(
        &server,
        Some(&viewer),
        Method::POST,
        "/v1/plugins/step/invoke",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["details"]["required_role"], "operator");

    // Operator: no tokens, no secrets, no deleting plugins.
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/tokens",
            Some(json!({ "name": "x", "role": "admin" })),
        ),
        (Method::GET, "/v1/tokens", None),
        (Method::DELETE, "/v1/tokens/dashboard", None),
        (
            Method::PUT,
            "/v1/secrets/db",
            Some(json!({ "value": "hunter2" })),
        ),
        (Method::GET, "/v1/secrets", None),
        (Method::DELETE, "/v1/plugins/step", None),
    ] {
        let (status, answer, _) = call(&server, Some(&operator), method.clone(), path, body).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["details"]["required_role"], "admin");
    }

    // Admin: lists tokens without secrets or hashes; cannot lock itself out.
    let (status, list) = server.get("/v1/tokens").await;
    assert_eq!(status, 200);
    let tokens = list["tokens"].as_array().unwrap();
    let names: Vec<&str> = tokens.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["bootstrap-admin", "dashboard", "ci"]);
    let text = list.to_string();
    assert!(!text.contains(&viewer) && !text.contains(&operator) && !text.contains("hash"));
    assert_eq!(tokens[2]["created_by"], "token:bootstrap-admin");
    let (status, body) = server
        .send(Method::DELETE, "/v1/tokens/bootstrap-admin", None)
        .await;
    assert_eq!(status, 409, "the last admin token stays: {body}");
    let (status, _) = server
        .send(
            Method::POST,
            "/v1/tokens",
            Some(json!({ "name": "ci", "role": "viewer" })),
        )
        .await;
    assert_eq!(status, 409, "names are unique among active tokens");
    let (status, _) = server
        .send(
            Method::POST,
            "/v1/tokens",
            Some(json!({ "name": "bad name", "role": "viewer" })),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = server
        .send(
            Method::POST,
            "/v1/tokens",
            Some(json!({ "name": "x", "role": "root" })),
        )
        .await;
    assert_eq!(status, 422, "unknown role");
    let (status, _) = server.send(Method::DELETE, "/v1/plugins/step", None).await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn tokens_are_stored_only_as_hashes() {
    let server = TestServer::start().await;
    let secret = create_token(&server, "hashed", "operator").await;
    let admin = server.token.clone().unwrap();

    let rows: Vec<(String, String)> = server
        .env()
        .store
        .with(|c| c.rows("SELECT name, hash FROM api_tokens", &[]))
        .unwrap()
        .iter()
        .map(|r| (r.get(0).unwrap(), r.get(1).unwrap()))
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (name, hash) in &rows {
        assert_eq!(hash.len(), 64, "sha-256 hex of {name}");
        assert!(!hash.contains(&secret) && !hash.contains(&admin));
    }
    // Nowhere in the database files either (the WAL included).
    for file in ["capstan.db", "capstan.db-wal"] {
        let path = server.dir.path().join(file);
        if let Ok(bytes) = std::fs::read(&path) {
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(&secret[4..]), "token plaintext in {file}");
            assert!(!text.contains(&admin), "admin token plaintext in {file}");
        }
    }

    // The token survives a restart (it is the hash that is looked up).
    let dir = server.stop().await;
    let server = TestServer::start_in(dir, |_| {}).await;
    let (status, _, _) = call(&server, Some(&secret), Method::GET, "/v1/plugins", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn mutating_calls_and_refusals_are_audited() {
    let server = TestServer::start().await;
    let viewer = create_token(&server, "auditee", "viewer").await;
    let (status, _) = upload_as(&server, &viewer, "step").await;
    assert_eq!(status, 403);
    let (status, _, _) = call(&server, None, Method::DELETE, "/v1/plugins/anything", None).await;
    assert_eq!(status, 401);
    let (status, _, _) = call(
        &server,
        Some("cap_wrong"),
        Method::POST,
        "/v1/plugins/x/rollback",
        None,
    )
    .await;
    assert_eq!(status, 401);
    // Reads are not audited.
    let (status, _, _) = call(&server, Some(&viewer), Method::GET, "/v1/plugins", None).await;
    assert_eq!(status, 200);

    let records = api_audit(&server).await;
    let created = find(
        &records,
        "token:bootstrap-admin",
        "POST",
        "/v1/tokens",
        "201",
    )
    .expect("token creation audited");
    assert_eq!(created["allowed"], true);
    assert_eq!(created["capability"], "api");
    let refused =
        find(&records, "token:auditee", "POST", "/v1/plugins", "403").expect("403 audited");
    assert_eq!(refused["allowed"], false);
    let anonymous = find(
        &records,
        "anonymous",
        "DELETE",
        "/v1/plugins/anything",
        "401",
    )
    .expect("401 audited");
    assert_eq!(anonymous["allowed"], false);
    assert!(
        find(
            &records,
            "anonymous",
            "POST",
            "/v1/plugins/x/rollback",
            "401"
        )
        .is_some()
    );
    assert!(
        records.iter().all(|r| r["verb"] != "GET"),
        "reads are not audited: {records:?}"
    );
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains(&viewer), "no token in the audit log");

    // The viewer can read the audit log and filter it.
    let (status, body, _) = call(
        &server,
        Some(&viewer),
        Method::GET,
        "/v1/audit?capability=api&allowed=false",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let denied = body["records"].as_array().unwrap();
    assert!(denied.len() >= 3 && denied.iter().all(|r| r["allowed"] == false));
    let (status, _, _) = call(
        &server,
        Some(&viewer),
        Method::GET,
        "/v1/audit?allowed=maybe",
        None,
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn secrets_api_round_trip_never_returns_values() {
    let server = TestServer::start().await;
    let value = "postgres://app:s3cr3t-very-private@db/app";
    let (status, body) = server
        .send(
            Method::PUT,
            "/v1/secrets/db-url",
            Some(json!({ "value": value })),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    // Replacing works too.
    let (status, _) = server
        .send(
            Method::PUT,
            "/v1/secrets/db-url",
            Some(json!({ "value": value })),
        )
        .await;
    assert_eq!(status, 204);
    let (status, body) = server.get("/v1/secrets").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "secrets": ["db-url"] }));
    // There is no way to read a value back: the secret's own path answers
    // PUT and DELETE only.
    let r = server
        .request(Method::GET, "/v1/secrets/db-url")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "PUT,DELETE");
    assert!(!r.text().await.unwrap().contains(value));

    // A plugin granted the secret reads it (and its output is redacted).
    let grants = "[grants.secrets]\nnames = [\"db-url\"]\n";
    server
        .install(
            &manifest("reader", "1.0.0", "deploy-step", grants),
            &guest(guests::PROBE),
        )
        .await;
    let got = probe(
        &server,
        "reader",
        json!({ "op": "secret", "name": "db-url" }),
    )
    .await;
    assert!(got.starts_with("ok:") && !got.contains(value), "{got}");

    // Bad input: name, body shape. The error never echoes the value.
    let (status, _) = server
        .send(
            Method::PUT,
            "/v1/secrets/bad%20name",
            Some(json!({ "value": "x" })),
        )
        .await;
    assert_eq!(status, 400);
    let (status, body) = server
        .send(
            Method::PUT,
            "/v1/secrets/db-url",
            Some(json!({ "value": value, "extra": 1 })),
        )
        .await;
    assert!(status == 400 || status == 422, "{status}");
    assert!(!body.to_string().contains("s3cr3t"), "{body}");

    let records = api_audit(&server).await;
    assert!(
        find(
            &records,
            "token:bootstrap-admin",
            "PUT",
            "/v1/secrets/db-url",
            "204"
        )
        .is_some()
    );
    let all = server.get("/v1/audit?limit=1000").await.1.to_string();
    assert!(
        !all.contains("s3cr3t"),
        "secret value in the audit log: {all}"
    );

    let (status, _) = server
        .send(Method::DELETE, "/v1/secrets/db-url", None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = server
        .send(Method::DELETE, "/v1/secrets/db-url", None)
        .await;
    assert_eq!(status, 404, "{body}");
    let (_, body) = server.get("/v1/secrets").await;
    assert_eq!(body, json!({ "secrets": [] }));
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let server = TestServer::start_with(|c| {
        c.api.rate_limit_per_sec = 1;
        c.api.rate_limit_burst = 3;
    })
    .await;
    let viewer = create_token(&server, "chatty", "viewer").await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    let started = std::time::Instant::now();
    for _ in 0..8 {
        let (status, body, headers) =
            call(&server, Some(&viewer), Method::GET, "/v1/plugins", None).await;
        if status == 429 {
            assert_eq!(body["error"]["code"], "rate_limited");
            retry_after = headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
        }
        statuses.push(status);
    }
    // A burst of 3, then 1 per second: on a slow machine a refill may let
    // one more through per second elapsed.
    let refills = started.elapsed().as_secs() as usize;
    assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
    let rejected = statuses[3..].iter().filter(|s| **s == 429).count();
    assert!(rejected >= 5 - refills.min(4), "{statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    // Buckets are per token; admin tokens are exempt.
    let other = create_token(&server, "quiet", "viewer").await;
    let (status, _, _) = call(&server, Some(&other), Method::GET, "/v1/plugins", None).await;
    assert_eq!(status, 200);
    for _ in 0..10 {
        let (status, _) = server.get("/v1/plugins").await;
        assert_eq!(status, 200);
    }
    // The bucket refills.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, _, _) = call(&server, Some(&viewer), Method::GET, "/v1/plugins", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn requests_over_the_in_flight_cap_get_503_not_a_queue() {
    let server = TestServer::start_with(|c| c.api.max_in_flight_requests = 1).await;
    server
        .install(
            &manifest("slow", "1.0.0", "deploy-step", ""),
            &guest(guests::FAULT_STEP),
        )
        .await;
    let slow = {
        let rb = server
            .request(Method::POST, "/v1/plugins/slow/invoke")
            .json(&json!({ "params": { "fault": "slow", "ms": 800 } }));
        tokio::spawn(async move { rb.send().await.map(|r| r.status().as_u16()) })
    };
    // Once the slow call holds the only slot, others are refused at once.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let mut refused = None;
    for _ in 0..25 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let started = std::time::Instant::now();
        let (status, body, headers) = call(
            &server,
            server.token.as_deref(),
            Method::GET,
            "/v1/plugins",
            None,
        )
        .await;
        if status == 503 {
            assert!(
                started.elapsed() < std::time::Duration::from_millis(400),
                "not queued"
            );
            refused = Some((body, headers));
            break;
        }
        assert_eq!(status, 200, "{body}");
    }
    let (body, headers) = refused.expect("a request over the cap was refused");
    assert_eq!(body["error"]["code"], "overloaded");
    assert_eq!(headers["retry-after"], "1");
    // Probes are exempt.
    let (status, _, _) = call(&server, None, Method::GET, "/healthz", None).await;
    assert_eq!(status, 200);
    assert_eq!(slow.await.unwrap().unwrap(), 200);
    let (status, _) = server.get("/v1/plugins").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    let server = TestServer::start_with(|c| c.api.max_connections = 1).await;
    // A keeps its (keep-alive) connection open after the request.
    let a = reqwest::Client::new();
    let r = a
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");
    let b = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let waited = b.get(format!("{}/healthz", server.url)).send().await;
    assert!(
        waited.is_err(),
        "the second connection is not served while the first is open"
    );
    drop(a);
    let b = reqwest::Client::new();
    let r = b
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "served once the first closed");
}

/// Sends `head`, then `body` one byte per 100 ms, and stops sending as soon
/// as the server answers. Returns the raw answer and when it came.
async fn trickle(
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
) -> (String, std::time::Duration) {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    for byte in body {
        if tcp.write_all(&[*byte]).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Ok(_) => break,
            Err(_) => {}
        }
    }
    let took = started.elapsed();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    (String::from_utf8_lossy(&answer).into_owned(), took)
}

#[tokio::test]
async fn a_request_slower_than_request_timeout_gets_408() {
    // 1 s: a durable write (the fast request below) must fit in it even
    // when the disk stalls a few hundred ms under CI load, as it does here.
    let server = TestServer::start_with(|c| {
        c.api.request_timeout_ms = 1_000;
        c.limits.default_deadline_ms = 5_000;
    })
    .await;
    let addr = server.server.as_ref().unwrap().addr;
    let admin = server.token.clone().unwrap();
    // 33 bytes at 100 ms each: the body would be complete after 3.3 s.
    let body = br#"{"value": "sent-far-too-slowly"}"#;
    let head = format!(
        "PUT /v1/secrets/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (answer, took) = trickle(addr, &head, body).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    // Before the body could have been complete (3.3 s).
    assert!(
        took < std::time::Duration::from_secs(3),
        "answered after {took:?}"
    );
    let json: Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1)
        .unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(json["error"]["code"], "request_timeout", "{json}");
    let (_, secrets) = server.get("/v1/secrets").await;
    assert_eq!(secrets, json!({ "secrets": [] }), "nothing was stored");

    // A request on time is served; so is an invocation longer than the
    // timeout (the plugin's deadline bounds it).
    let (status, _) = server
        .send(
            Method::PUT,
            "/v1/secrets/fast",
            Some(json!({ "value": "v" })),
        )
        .await;
    assert_eq!(status, 204);
    server
        .install(
            &manifest("slowpoke", "1.0.0", "deploy-step", ""),
            &guest(guests::FAULT_STEP),
        )
        .await;
    let (status, body) = server
        .invoke(
            "slowpoke",
            json!({ "params": { "fault": "slow", "ms": 1_500 } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn metrics_can_require_a_token() {
    let server = TestServer::start_with(|c| c.api.metrics_public = false).await;
    let (status, _, _) = call(&server, None, Method::GET, "/metrics", None).await;
    assert_eq!(status, 401);
    let viewer = create_token(&server, "prometheus", "viewer").await;
    let (status, _, _) = call(&server, Some(&viewer), Method::GET, "/metrics", None).await;
    assert_eq!(status, 200);
    let (status, _, _) = call(&server, None, Method::GET, "/healthz", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn openapi_documents_auth_and_the_new_endpoints() {
    let server = TestServer::start().await;
    let (status, doc) = server.get("/openapi.json").await;
    assert_eq!(status, 200);
    for path in [
        "/v1/tokens",
        "/v1/tokens/{name}",
        "/v1/secrets",
        "/v1/secrets/{name}",
        "/v1/audit",
    ] {
        assert!(doc["paths"].get(path).is_some(), "missing {path}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"][0]["bearer"], json!([]));
    assert_eq!(doc["paths"]["/healthz"]["get"]["security"], json!([{}]));
}

/// A rustls client that trusts `roots` (ring provider).
fn tls_connector(roots: rustls::RootCertStore) -> tokio_rustls::TlsConnector {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One HTTP/1.1 request over TLS to `addr` (`Connection: close`): status and body.
async fn https(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    request: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(request.as_bytes()).await?;
    tls.write_all(body).await?;
    tls.flush().await?;
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn get_request(path: &str, token: Option<&str>) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n")
}

#[tokio::test]
async fn tls_listener_serves_https_and_shuts_down_gracefully() {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = capstan_tests::self_signed_cert(certs.path());
    let server = TestServer::start_with(|c| {
        c.api.tls_cert = Some(cert.clone());
        c.api.tls_key = Some(key.clone());
    })
    .await;
    let addr = server.server.as_ref().unwrap().addr;
    let admin = server.token.clone().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&cert).unwrap())
        .unwrap();
    let client = tls_connector(roots);

    let (status, body) = https(&client, addr, &get_request("/healthz", None), b"")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, _) = https(&client, addr, &get_request("/v1/plugins", None), b"")
        .await
        .unwrap();
    assert_eq!(status, 401, "auth applies over TLS too");
    let (status, body) = https(
        &client,
        addr,
        &get_request("/v1/plugins", Some(&admin)),
        b"",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("{}/healthz", server.url))
        .send()
        .await;
    assert!(
        plain.map(|r| r.status().as_u16() != 200).unwrap_or(true),
        "plain HTTP must not be served on the TLS port"
    );
    // A client that does not trust the certificate is refused.
    let untrusting = tls_connector(rustls::RootCertStore::empty());
    assert!(
        https(&untrusting, addr, &get_request("/healthz", None), b"")
            .await
            .is_err()
    );

    // Graceful shutdown over TLS: a call in flight finishes.
    let wasm = guest(guests::FAULT_STEP);
    let boundary = "capstan-test-boundary";
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n{}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"component\"; filename=\"p.wasm\"\r\n\
         Content-Type: application/wasm\r\n\r\n",
        manifest("slow", "1.0.0", "deploy-step", "")
    )
    .into_bytes();
    form.extend_from_slice(&wasm);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let upload = format!(
        "POST /v1/plugins HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        form.len()
    );
    let (status, body) = https(&client, addr, &upload, &form).await.unwrap();
    assert_eq!(status, 201, "{body}");

    let invoke_body = json!({ "params": { "fault": "slow", "ms": 500 } }).to_string();
    let invoke = format!(
        "POST /v1/plugins/slow/invoke HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        invoke_body.len()
    );
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move { https(&client, addr, &invoke, invoke_body.as_bytes()).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    server.stop().await;
    let (status, body) = in_flight.await.unwrap().unwrap();
    assert_eq!(status, 200, "the call in flight finished: {body}");
    assert!(
        https(&client, addr, &get_request("/healthz", None), b"")
            .await
            .is_err(),
        "no new connections after shutdown"
    );
}
