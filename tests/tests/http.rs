//! Outbound HTTP through `wasi:http`: the probe guest calls real HTTP servers
//! on loopback, and the host decides by `[grants.http]`. Every case checks
//! what the guest saw and what the audit log recorded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use capstan::capabilities::AuditRecord;
use capstan_tests::{TestServer, guest, guests, manifest, probe};
use serde_json::json;

const BIG: usize = 2 << 20;

/// A real HTTP server on 127.0.0.1 that counts the requests it receives.
struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Upstream {
    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct UpState {
    hits: Arc<AtomicUsize>,
    /// Where `/redirect-away` points.
    away: String,
}

fn found(location: String) -> impl IntoResponse {
    (StatusCode::FOUND, [(header::LOCATION, location)])
}

/// Starts an upstream: `/hello` answers, `/forged-expiry` sends the header
/// only the host may set, `/redirect-*` redirect, `/big-*`
/// send 2 MiB (streamed without length, or with `content-length`), `/hang`
/// never answers.
async fn upstream(away: String) -> Upstream {
    let hits = Arc::new(AtomicUsize::new(0));
    let state = UpState {
        hits: hits.clone(),
        away,
    };
    let app = Router::new()
        .route("/hello", get(|| async { "hello from upstream" }))
        .route(
            "/forged-expiry",
            get(|| async { ([("capstan-tls-earliest-cert-expiry", "1")], "forged") }),
        )
        .route("/redirect-local", get(|| async { found("/hello".into()) }))
        .route(
            "/redirect-away",
            get(|State(s): State<UpState>| async move { found(s.away) }),
        )
        .route(
            "/big-streamed",
            get(|| async {
                // A body of unknown length: sent chunked, no content-length.
                Body::from_stream(Body::from(vec![b'x'; BIG]).into_data_stream())
            }),
        )
        .route("/big-sized", get(|| async { vec![b'x'; BIG] }))
        .route(
            "/hang",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "too late"
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            |State(s): State<UpState>,
             req: axum::extract::Request,
             next: axum::middleware::Next| async move {
                s.hits.fetch_add(1, Ordering::SeqCst);
                next.run(req).await
            },
        ))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Upstream { addr, hits }
}

/// Installs the probe guest as `name` with `grants` appended to its manifest.
async fn install_probe(server: &TestServer, name: &str, grants: &str) {
    server
        .install(
            &manifest(name, "1.0.0", "deploy-step", grants),
            &guest(guests::PROBE),
        )
        .await;
}

fn http_grant(allow: &[String], extra: &str) -> String {
    let allow: Vec<String> = allow.iter().map(|p| format!("{p:?}")).collect();
    format!("[grants.http]\nallow = [{}]\n{extra}", allow.join(", "))
}

async fn get_url(server: &TestServer, plugin: &str, url: &str) -> String {
    probe(server, plugin, json!({ "op": "http-get", "url": url })).await
}

/// The plugin's `http` audit records, newest first.
async fn audit(server: &TestServer, plugin: &str) -> Vec<AuditRecord> {
    capstan_tests::audit(server, plugin, "http").await
}

/// The newest record, which must be about `target`.
async fn last_record(server: &TestServer, plugin: &str, target: &str) -> AuditRecord {
    let records = audit(server, plugin).await;
    let r = records
        .first()
        .unwrap_or_else(|| panic!("no http audit record for {plugin}"))
        .clone();
    assert_eq!(r.target, target, "{r:?}");
    assert_eq!(r.capability, "http");
    assert_eq!(r.verb, "GET");
    assert_eq!(r.actor, format!("plugin:{plugin}"));
    r
}

fn assert_denied(result: &str) {
    assert!(
        result.starts_with("err:Denied: "),
        "expected a denial, got {result}"
    );
}

#[tokio::test]
async fn an_allowed_target_answers_and_is_audited() {
    let up = upstream(String::new()).await;
    let server = TestServer::start().await;
    install_probe(
        &server,
        "web",
        &http_grant(&[format!("http://127.0.0.1:{}", up.port())], ""),
    )
    .await;

    let result = get_url(&server, "web", &up.url("/hello?token=s3cret")).await;
    assert_eq!(result, "ok:200 hello from upstream");
    let r = last_record(&server, "web", &up.url("/hello")).await;
    assert!(r.allowed, "{r:?}");
    assert_eq!(r.outcome, "ok: 200, 19 bytes");
    assert!(!r.outcome.contains("s3cret") && !r.target.contains("s3cret"));

    // A redirect within the grant is followed; each hop is audited.
    let result = get_url(&server, "web", &up.url("/redirect-local")).await;
    assert_eq!(result, "ok:200 hello from upstream");
    let records = audit(&server, "web").await;
    assert_eq!(records.len(), 3, "{records:?}");
    assert_eq!(
        (records[1].target.as_str(), records[1].outcome.as_str()),
        (up.url("/redirect-local").as_str(), "ok: 302, 0 bytes")
    );
    assert!(records.iter().all(|r| r.allowed));
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn targets_outside_the_grant_are_denied_and_audited() {
    let up = upstream(String::new()).await;
    let other = upstream(String::new()).await;
    let server = TestServer::start().await;
    install_probe(&server, "nogrant", "").await;
    install_probe(
        &server,
        "web",
        &http_grant(&[format!("http://127.0.0.1:{}", up.port())], ""),
    )
    .await;
    install_probe(
        &server,
        "tls-only",
        &http_grant(&[format!("https://127.0.0.1:{}", up.port())], ""),
    )
    .await;

    // No grant at all.
    assert_denied(&get_url(&server, "nogrant", &up.url("/hello")).await);
    let r = last_record(&server, "nogrant", &up.url("/hello")).await;
    assert_eq!(
        (r.allowed, r.outcome.as_str()),
        (false, "the manifest grants no http")
    );

    // Same host, other port.
    assert_denied(&get_url(&server, "web", &other.url("/hello")).await);
    let r = last_record(&server, "web", &other.url("/hello")).await;
    assert!(!r.allowed);
    assert_eq!(
        r.outcome,
        format!(
            "port {} not allowed for this host (granted: http://127.0.0.1:{})",
            other.port(),
            up.port()
        )
    );

    // Other hosts: a name, and `localhost` (a name, not the granted literal).
    for url in [
        "http://example.invalid/".to_string(),
        format!("http://localhost:{}/hello", up.port()),
    ] {
        assert_denied(&get_url(&server, "web", &url).await);
        let r = last_record(&server, "web", &url).await;
        assert_eq!(
            (r.allowed, r.outcome.as_str()),
            (false, "host not in allowlist")
        );
    }

    // Scheme mismatch: the grant says https, the plugin asks for http.
    assert_denied(&get_url(&server, "tls-only", &up.url("/hello")).await);
    let r = last_record(&server, "tls-only", &up.url("/hello")).await;
    assert!(!r.allowed);
    assert!(
        r.outcome
            .starts_with("scheme http not allowed for this host"),
        "{r:?}"
    );

    assert_eq!(
        (up.hits(), other.hits()),
        (0, 0),
        "nothing reached a server"
    );
}

#[tokio::test]
async fn loopback_is_refused_unless_the_grant_names_it() {
    let up = upstream(String::new()).await;
    let port = up.port();
    let server = TestServer::start().await;
    // `*` matches every host, but names no address.
    install_probe(
        &server,
        "anyhost",
        &http_grant(&[format!("http://*:{port}")], ""),
    )
    .await;
    install_probe(
        &server,
        "named",
        &http_grant(&[format!("http://localhost:{port}")], ""),
    )
    .await;
    install_probe(
        &server,
        "literal",
        &http_grant(&[format!("http://127.0.0.1:{port}")], ""),
    )
    .await;
    install_probe(
        &server,
        "ranged",
        &http_grant(
            &[format!("http://*:{port}")],
            "private_networks = [\"127.0.0.0/8\"]\n",
        ),
    )
    .await;

    // Names that resolve to loopback: `localhost`, and `2130706433`, which
    // the resolver turns into 127.0.0.1 although nothing names that address.
    for host in ["localhost", "2130706433"] {
        let url = format!("http://{host}:{port}/hello");
        assert_denied(&get_url(&server, "anyhost", &url).await);
        let r = last_record(&server, "anyhost", &url).await;
        assert_eq!(
            (r.allowed, r.outcome.as_str()),
            (false, "resolves to loopback address 127.0.0.1")
        );
    }
    // Loopback literals, also in their IPv4-mapped IPv6 form.
    for host in ["127.0.0.1", "[::ffff:127.0.0.1]"] {
        let url = format!("http://{host}:{port}/hello");
        assert_denied(&get_url(&server, "anyhost", &url).await);
        let r = last_record(&server, "anyhost", &url).await;
        assert!(!r.allowed);
        assert!(
            r.outcome
                .starts_with("loopback address 127.0.0.1 is not granted"),
            "{r:?}"
        );
    }
    assert_eq!(up.hits(), 0, "no denied request reached the server");

    // Granted explicitly: `localhost` named, the literal named, or the range.
    let cases = [
        ("named", format!("http://localhost:{port}/hello")),
        ("literal", format!("http://127.0.0.1:{port}/hello")),
        ("literal", format!("http://[::ffff:127.0.0.1]:{port}/hello")),
        ("ranged", format!("http://localhost:{port}/hello")),
        ("ranged", format!("http://2130706433:{port}/hello")),
    ];
    for (plugin, url) in &cases {
        let result = get_url(&server, plugin, url).await;
        assert_eq!(result, "ok:200 hello from upstream", "{plugin} {url}");
        let r = last_record(&server, plugin, url).await;
        assert_eq!((r.allowed, r.outcome.as_str()), (true, "ok: 200, 19 bytes"));
    }
    assert_eq!(up.hits(), cases.len());
}

#[tokio::test]
async fn a_redirect_to_a_denied_target_is_denied() {
    let other = upstream(String::new()).await;
    let to_port = upstream(other.url("/hello")).await;
    let to_metadata = upstream("http://169.254.169.254/latest/meta-data/".into()).await;
    let server = TestServer::start().await;
    install_probe(
        &server,
        "web",
        &http_grant(
            &[
                format!("http://127.0.0.1:{}", to_port.port()),
                format!("http://127.0.0.1:{}", to_metadata.port()),
            ],
            "",
        ),
    )
    .await;

    // To a port outside the grant.
    assert_denied(&get_url(&server, "web", &to_port.url("/redirect-away")).await);
    let records = audit(&server, "web").await;
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[1].target, to_port.url("/redirect-away"));
    assert_eq!(
        (records[1].allowed, records[1].outcome.as_str()),
        (true, "ok: 302, 0 bytes")
    );
    assert_eq!(records[0].target, other.url("/hello"));
    assert!(!records[0].allowed);
    assert!(
        records[0]
            .outcome
            .starts_with(&format!("port {} not allowed", other.port())),
        "{:?}",
        records[0]
    );
    assert_eq!(other.hits(), 0, "the redirect target was never contacted");

    // To the cloud metadata endpoint.
    assert_denied(&get_url(&server, "web", &to_metadata.url("/redirect-away")).await);
    let r = last_record(&server, "web", "http://169.254.169.254/latest/meta-data/").await;
    assert_eq!(
        (r.allowed, r.outcome.as_str()),
        (false, "host not in allowlist")
    );
}

#[tokio::test]
async fn oversized_responses_and_slow_targets_fail_within_the_limits() {
    let up = upstream(String::new()).await;
    let server = TestServer::start().await;
    install_probe(
        &server,
        "limited",
        &http_grant(
            &[format!("http://127.0.0.1:{}", up.port())],
            "max_response_bytes = 65536\ntimeout_ms = 400\n",
        ),
    )
    .await;

    // A body without content-length is cut off while it streams.
    let result = get_url(&server, "limited", &up.url("/big-streamed")).await;
    assert!(
        result.starts_with("err:Failed: response body too large"),
        "{result}"
    );
    let r = last_record(&server, "limited", &up.url("/big-streamed")).await;
    assert!(r.allowed);
    assert_eq!(
        r.outcome,
        "error: 200 response: body exceeds the limit of 65536 bytes (max_response_bytes)"
    );

    // A body announced too large is refused before it is read.
    let result = get_url(&server, "limited", &up.url("/big-sized")).await;
    assert!(
        result.starts_with(&format!("err:Failed: response body too large ({BIG} bytes")),
        "{result}"
    );
    let r = last_record(&server, "limited", &up.url("/big-sized")).await;
    assert_eq!(
        r.outcome,
        format!(
            "error: 200 response announces a body of {BIG} bytes, over the limit of 65536 bytes"
        )
    );

    // Small bodies still pass.
    assert_eq!(
        get_url(&server, "limited", &up.url("/hello")).await,
        "ok:200 hello from upstream"
    );

    // A target that never answers times out after timeout_ms.
    let started = Instant::now();
    let result = get_url(&server, "limited", &up.url("/hang")).await;
    let took = started.elapsed();
    assert!(result.starts_with("err:Retryable: timed out"), "{result}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1800),
        "took {took:?}"
    );
    let r = last_record(&server, "limited", &up.url("/hang")).await;
    assert!(r.allowed);
    assert!(
        r.outcome.starts_with("error:") && r.outcome.contains("400 ms"),
        "{r:?}"
    );
}

#[tokio::test]
async fn invalid_http_grants_are_refused_at_upload() {
    let server = TestServer::start().await;
    let cases = [
        (
            "allow = [\"https://api.example.com/v1\"]",
            "http: allow pattern `https://api.example.com/v1`: has a path, query or fragment (`/v1`)",
        ),
        (
            "allow = [\"api.example.com\"]",
            "missing scheme: write `https://api.example.com`",
        ),
        (
            "allow = [\"https://api.*.example.com\"]",
            "`*` may only be the whole host (`*`) or its first label (`*.example.com`)",
        ),
        (
            "allow = [\"ftp://files.example.com\"]",
            "scheme `ftp` is not supported",
        ),
        (
            "allow = [\"https://x.example.com\"]\nprivate_networks = [\"10.1.2.3/8\"]",
            "private_networks entry `10.1.2.3/8`: has host bits set; did you mean `10.0.0.0/8`?",
        ),
        (
            "allow = [\"https://x.example.com\"]\nmax_response_bytes = 100000000",
            "max_response_bytes = 100000000 exceeds the hard cap of 67108864 (64 MiB)",
        ),
        ("allow = []", "`allow` is empty"),
    ];
    for (grant, expected) in cases {
        let (status, body) = server
            .upload(
                &manifest(
                    "bad",
                    "1.0.0",
                    "deploy-step",
                    &format!("[grants.http]\n{grant}\n"),
                ),
                &guest(guests::PROBE),
            )
            .await;
        assert_eq!(status, 422, "{grant}: {body}");
        assert_eq!(body["error"]["code"], "invalid_manifest", "{grant}: {body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(expected),
            "{grant}: `{msg}` lacks `{expected}`"
        );
    }
}

/// The host says when an https server's certificate expires, and only
/// the host: a plain server sending the same header is not believed.
#[tokio::test]
async fn the_certificate_expiry_comes_from_the_host_only() {
    let tls = capstan_tests::services::tls_server().await;
    let up = upstream(String::new()).await;
    let cert = tls.cert.clone();
    let server = TestServer::start_with(move |c| c.http.ca_file = Some(cert)).await;
    let allow = [
        format!("https://localhost:{}", tls.port),
        format!("http://127.0.0.1:{}", up.addr.port()),
    ];
    install_probe(&server, "expiry", &http_grant(&allow, "")).await;
    let call = |url: String| {
        let server = &server;
        async move {
            probe(
                server,
                "expiry",
                json!({ "op": "http-cert-expiry", "url": url }),
            )
            .await
        }
    };
    assert_eq!(
        call(format!("https://localhost:{}/", tls.port)).await,
        format!("ok:200 Some({})", tls.not_after())
    );
    assert_eq!(
        call(format!("http://127.0.0.1:{}/forged-expiry", up.addr.port())).await,
        "ok:200 None"
    );
}

#[tokio::test]
async fn https_verifies_the_certificate_of_the_host_name() {
    let tls = capstan_tests::services::tls_server().await;
    let server = TestServer::start().await;
    install_probe(
        &server,
        "secure",
        &http_grant(&[format!("https://localhost:{}", tls.port)], ""),
    )
    .await;
    // The host connects to the checked address and speaks TLS with the
    // name: a certificate no public root vouches for is refused.
    let url = format!("https://localhost:{}/", tls.port);
    let result = get_url(&server, "secure", &url).await;
    assert_eq!(
        result,
        "err:Failed: the server's TLS certificate is not trusted or not valid for this host"
    );
    let r = last_record(&server, "secure", &url).await;
    assert!(r.allowed, "{r:?}");
    assert!(
        r.outcome
            .starts_with("error: TLS with localhost: invalid peer certificate"),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_secret_in_the_url_never_reaches_the_audit_log() {
    let up = upstream(String::new()).await;
    let server = TestServer::start().await;
    let env = server.env();
    // Webhook URLs carry their credential in the path.
    env.secrets.put(&env.store, "hook-path", "/hello").unwrap();
    let grants = http_grant(
        &[format!("http://127.0.0.1:{}", up.port())],
        "[grants.secrets]\nnames = [\"hook-path\"]\n",
    );
    install_probe(&server, "hook", &grants).await;
    let result = probe(
        &server,
        "hook",
        json!({ "op": "http-get-secret-path", "name": "hook-path", "url": up.url("") }),
    )
    .await;
    assert_eq!(result, "ok:200 hello from upstream");
    let r = last_record(&server, "hook", &up.url("[REDACTED]")).await;
    assert!(r.allowed && !r.target.contains("/hello"), "{r:?}");
}
