//! The metrics engine and the probes against real services: `tcp-probe`
//! checks a real Redis (`PING`) and MariaDB (handshake) through
//! `[grants.tcp]`, and is denied (and audited) outside it; `http-probe`
//! sees a loopback HTTP server go down; a hanging metrics source does not
//! hold up the others' values in `/metrics`.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use capstan_tests::services;
use capstan_tests::{TestServer, bundled, guest, guests, manifest};
use serde_json::json;

/// `GET /metrics`, with an optional scrape timeout header.
async fn scrape(server: &TestServer, timeout_header: Option<&str>) -> String {
    let mut r = server.request(reqwest::Method::GET, "/metrics");
    if let Some(t) = timeout_header {
        r = r.header("X-Prometheus-Scrape-Timeout-Seconds", t);
    }
    let r = r.send().await.expect("/metrics answers");
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// Scrapes until every line of `want` is in `/metrics` (or 60 s pass).
async fn wait_for(server: &TestServer, want: &[String], header: Option<&str>) -> String {
    let mut text = String::new();
    for _ in 0..240 {
        text = scrape(server, header).await;
        if want.iter().all(|l| text.contains(l.as_str())) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let missing: Vec<&String> = want.iter().filter(|l| !text.contains(l.as_str())).collect();
    panic!("never saw {missing:?} in\n{text}")
}

/// A bundled plugin's manifest with `extra` (settings, grants, schedule)
/// in place of its own settings and schedule.
fn bundled_with(name: &str, extra: &str) -> (String, Vec<u8>) {
    let (m, wasm) = bundled(name);
    let head: String = m
        .lines()
        .take_while(|l| !l.starts_with("[settings]"))
        .map(|l| format!("{l}\n"))
        .collect();
    (format!("{head}{extra}"), wasm)
}

#[tokio::test]
async fn tcp_probe_checks_real_redis_and_mariadb_and_is_denied_outside_its_grant() {
    let redis = services::redis().await.expect("redis-server starts");
    let maria = services::mariadb().await.expect("mariadbd starts");
    let outside = capstan_tests::procs::free_port();
    let server = TestServer::start().await;

    // A grant that does not parse is refused at upload.
    let (bad, wasm) = bundled_with(
        "tcp-probe",
        "[grants.tcp]\nconnect = [\"*.example.com:6379\"]\n",
    );
    let (status, body) = server.upload(&bad, &wasm).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_manifest", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("tcp"),
        "{body}"
    );

    let targets = format!(
        "redis://127.0.0.1:{},mysql://127.0.0.1:{},tcp://127.0.0.1:{outside}",
        redis.port, maria.port
    );
    let extra = format!(
        "[settings]\ntargets = \"{targets}\"\n\n[metrics]\ninterval_ms = 300\n\n\
         [grants.tcp]\nconnect = [\"127.0.0.1:{}\", \"localhost:{}\"]\n",
        redis.port, maria.port
    );
    let (m, wasm) = bundled_with("tcp-probe", &extra);
    server.install(&m, &wasm).await;
    let success =
        |t: &str, v: u8| format!("capstan_plugin_tcp__probe_probe_success{{target=\"{t}\"}} {v}\n");
    let text = wait_for(
        &server,
        &[
            success(&format!("redis://127.0.0.1:{}", redis.port), 1),
            success(&format!("mysql://127.0.0.1:{}", maria.port), 1),
            success(&format!("tcp://127.0.0.1:{outside}"), 0),
            "capstan_source_success{plugin=\"tcp-probe\"} 1\n".into(),
        ],
        None,
    )
    .await;
    let info = text
        .lines()
        .find(|l| l.starts_with("capstan_plugin_tcp__probe_probe_server_info{"))
        .unwrap_or_else(|| panic!("no server info in\n{text}"));
    assert!(info.contains("MariaDB") && info.ends_with(" 1"), "{info}");
    assert!(
        text.contains("capstan_source_last_success_timestamp_seconds{plugin=\"tcp-probe\"}"),
        "{text}"
    );

    // The connect outside the grant was refused by the host and audited;
    // the granted ones were audited as allowed.
    let records = capstan_tests::audit(&server, "tcp-probe", "tcp").await;
    let denied: Vec<_> = records.iter().filter(|r| !r.allowed).collect();
    assert!(
        denied
            .iter()
            .any(|r| r.target == format!("127.0.0.1:{outside}") && r.verb == "connect"),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r.allowed && r.target == format!("127.0.0.1:{}", redis.port)),
        "{records:?}"
    );
    assert!(
        !denied
            .iter()
            .any(|r| r.target.ends_with(&format!(":{}", redis.port))),
        "{denied:?}"
    );
}

/// A loopback HTTP server: `/health` answers `ok`, `/other` answers `nope`.
async fn upstream() -> (u16, tokio::task::JoinHandle<()>) {
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/other", get(|| async { "nope" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (port, task)
}

#[tokio::test]
async fn http_probe_reports_status_body_match_and_a_server_going_down() {
    let (port, task) = upstream().await;
    let server = TestServer::start().await;
    let (health, other) = (
        format!("http://127.0.0.1:{port}/health"),
        format!("http://127.0.0.1:{port}/other"),
    );
    let extra = format!(
        "[settings]\ntargets = \"{health},{other}\"\nbody_regex = \"^ok$\"\n\n\
         [metrics]\ninterval_ms = 300\n\n[grants.http]\nallow = [\"http://127.0.0.1:{port}\"]\n"
    );
    let (m, wasm) = bundled_with("http-probe", &extra);
    server.install(&m, &wasm).await;
    let line = |family: &str, t: &str, v: &str| {
        format!("capstan_plugin_http__probe_{family}{{target=\"{t}\"}} {v}\n")
    };
    let text = wait_for(
        &server,
        &[
            line("probe_success", &health, "1"),
            line("probe_http_status_code", &health, "200"),
            line("probe_success", &other, "0"),
            line("probe_http_status_code", &other, "200"),
            line("probe_failed_due_to_regex", &other, "1"),
        ],
        None,
    )
    .await;
    assert!(
        text.contains(&format!(
            "capstan_plugin_http__probe_probe_http_duration_seconds{{target=\"{health}\",phase=\"processing\"}}"
        )),
        "{text}"
    );

    // The server goes down: the next runs report it.
    task.abort();
    let _ = task.await;
    wait_for(
        &server,
        &[
            line("probe_success", &health, "0"),
            line("probe_http_status_code", &health, "0"),
            "capstan_source_success{plugin=\"http-probe\"} 1\n".into(),
        ],
        None,
    )
    .await;
}

/// An https target: untrusted, the probe fails and reports no expiry; with
/// its CA trusted (`[http] ca_file`), it succeeds and reports the expiry of
/// the certificate the server presented, as `openssl x509` reads it.
#[tokio::test]
async fn http_probe_reports_the_tls_certificate_expiry() {
    let tls = services::tls_server().await;
    let target = format!("https://localhost:{}/", tls.port);
    let extra = format!(
        "[settings]\ntargets = \"{target}\"\n\n[metrics]\ninterval_ms = 300\n\n\
         [grants.http]\nallow = [\"https://localhost:{}\"]\n",
        tls.port
    );
    let (m, wasm) = bundled_with("http-probe", &extra);
    let line = |family: &str, v: &str| {
        format!("capstan_plugin_http__probe_{family}{{target=\"{target}\"}} {v}\n")
    };

    let untrusted = TestServer::start().await;
    untrusted.install(&m, &wasm).await;
    let text = wait_for(&untrusted, &[line("probe_success", "0")], None).await;
    assert!(!text.contains("probe_ssl_earliest_cert_expiry{"), "{text}");

    let cert = tls.cert.clone();
    let trusted = TestServer::start_with(move |c| c.http.ca_file = Some(cert)).await;
    trusted.install(&m, &wasm).await;
    wait_for(
        &trusted,
        &[
            line("probe_success", "1"),
            line("probe_http_ssl", "1"),
            line(
                "probe_ssl_earliest_cert_expiry",
                &tls.not_after().to_string(),
            ),
        ],
        None,
    )
    .await;
}

/// A metrics-emit source named `name` reporting `value`, sleeping `sleep_ms`
/// first, on its own schedule (or at scrape).
fn emitter(name: &str, value: &str, sleep_ms: u64, schedule: &str) -> String {
    let families = json!([{ "name": "value", "type": "gauge", "values": [value] }]).to_string();
    manifest(
        name,
        "1.0.0",
        "metrics-source",
        &format!(
            "[settings]\nfamilies = {families:?}\nsleep_ms = \"{sleep_ms}\"\n\n\
             [limits]\ndeadline_ms = 60000\n\n[metrics]\n{schedule}\n"
        ),
    )
}

#[tokio::test]
async fn a_hanging_source_does_not_hold_up_the_others() {
    let server = TestServer::start().await;
    let component = guest(guests::METRICS_EMIT);
    for i in 0..3 {
        let m = emitter(
            &format!("quick-{i}"),
            &i.to_string(),
            0,
            "interval_ms = 300",
        );
        server.install(&m, &component).await;
    }
    let hang = "interval_ms = 300\ntimeout_ms = 1000";
    server
        .install(&emitter("hangs", "42", 60_000, hang), &component)
        .await;
    let mut want: Vec<String> = (0..3)
        .flat_map(|i| {
            [
                format!("capstan_plugin_quick__{i}_value{{i=\"0\"}} {i}\n"),
                format!("capstan_source_success{{plugin=\"quick-{i}\"}} 1\n"),
            ]
        })
        .collect();
    want.push("capstan_source_success{plugin=\"hangs\"} 0\n".into());
    let text = wait_for(&server, &want, None).await;
    assert!(
        !text.contains("capstan_plugin_hangs_value"),
        "never succeeded, nothing cached: {text}"
    );
    assert!(
        !text.contains("capstan_source_last_success_timestamp_seconds{plugin=\"hangs\"}"),
        "{text}"
    );

    // At scrape: a hanging scrape-mode source is cut at the scrape's
    // timeout (less the offset) and reported, the others still served.
    let at_scrape = "mode = \"scrape\"\ntimeout_ms = 30000";
    server
        .install(
            &emitter("hangs-at-scrape", "7", 60_000, at_scrape),
            &component,
        )
        .await;
    server
        .install(&emitter("quick-at-scrape", "8", 0, at_scrape), &component)
        .await;
    let text = scrape(&server, Some("1.5")).await;
    for line in [
        "capstan_source_success{plugin=\"hangs-at-scrape\"} 0\n",
        "capstan_source_success{plugin=\"quick-at-scrape\"} 1\n",
        "capstan_plugin_quick__at__scrape_value{i=\"0\"} 8\n",
        "capstan_plugin_quick__0_value{i=\"0\"} 0\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

/// `/metrics` time with 100 schedule-mode sources while one hangs (for
/// BENCHMARKS.md): `cargo test -p capstan-tests --test probes --
/// --ignored --nocapture metrics_with_100_sources`.
#[tokio::test]
#[ignore = "benchmark; run by hand"]
async fn metrics_with_100_sources_one_hanging() {
    let server = TestServer::start().await;
    let component = guest(guests::METRICS_EMIT);
    for i in 0..99 {
        let m = emitter(&format!("s{i}"), &i.to_string(), 0, "interval_ms = 1000");
        server.install(&m, &component).await;
    }
    let hang = "interval_ms = 1000\ntimeout_ms = 2000";
    server
        .install(&emitter("hangs", "1", 60_000, hang), &component)
        .await;
    let mut want: Vec<String> = (0..99)
        .map(|i| format!("capstan_source_success{{plugin=\"s{i}\"}} 1\n"))
        .collect();
    want.push("capstan_source_success{plugin=\"hangs\"} 0\n".into());
    wait_for(&server, &want, None).await;
    let mut times = Vec::new();
    for _ in 0..200 {
        let started = std::time::Instant::now();
        let text = scrape(&server, None).await;
        times.push(started.elapsed());
        assert!(text.contains("capstan_plugin_s98_value{i=\"0\"} 98\n"));
    }
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    println!(
        "/metrics with 100 sources (1 hanging), 200 scrapes: p50 {:?}, p99 {:?}, max {:?}",
        at(0.5),
        at(0.99),
        times[times.len() - 1]
    );
}
