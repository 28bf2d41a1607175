//! Notification channels end to end: a server on loopback sends through
//! provider stand-ins that answer as DingTalk, WeCom, Feishu, Slack and an
//! SMTP server do (`capstan_tests::chat`, `capstan_tests::smtp`), errors
//! included, over TLS too (SMTPS, STARTTLS, https, with the server's private
//! CA); and a real `capstan` process killed with -9 between enqueue
//! and the provider's answer.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_tests::chat::{Chat, Scripted};
use capstan_tests::smtp::SmtpSink;
use capstan_tests::{TestServer, client};
use reqwest::Method;
use serde_json::{Value, json};

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.notify.retry_min_ms = 150;
        c.notify.retry_max_ms = 3_000;
        c.notify.poll_ms = 50;
        c.notify.timeout_ms = 5_000;
    })
    .await
}

async fn secret(s: &TestServer, name: &str, value: &str) {
    let (st, b) = s
        .send(
            Method::PUT,
            &format!("/v1/secrets/{name}"),
            Some(json!({ "value": value })),
        )
        .await;
    assert_eq!(st, 204, "{b}");
}

async fn channel(s: &TestServer, spec: Value) {
    let name = spec["name"].as_str().unwrap().to_string();
    let (st, b) = s
        .send(
            Method::PUT,
            &format!("/v1/notify/channels/{name}"),
            Some(spec),
        )
        .await;
    assert_eq!(st, 201, "{b}");
}

async fn send(s: &TestServer, ch: &str, body: &str, key: &str) -> String {
    let (st, b) = s
        .send(
            Method::POST,
            &format!("/v1/notify/channels/{ch}/send"),
            Some(json!({ "body": body, "idempotency_key": key })),
        )
        .await;
    assert_eq!(st, 202, "{b}");
    b["id"].as_str().unwrap().to_string()
}

/// Waits until delivery `id` is no longer queued; returns its receipt.
async fn settled(s: &TestServer, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, d) = s.get(&format!("/v1/notify/deliveries/{id}")).await;
        assert_eq!(st, 200, "{d}");
        if d["status"] != "queued" {
            return d;
        }
        assert!(Instant::now() < deadline, "still queued: {d:#}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A DingTalk robot with `sign`, its URL and secret in the secrets store.
async fn dingtalk(s: &TestServer, chat: &Chat, name: &str, token: &str, secret_value: &str) {
    chat.set_secret(token, "SEC-the-robots-real-secret");
    secret(
        s,
        &format!("{name}-url"),
        &format!("{}/robot/send?access_token={token}", chat.url),
    )
    .await;
    secret(s, &format!("{name}-sign"), secret_value).await;
    let spec = json!({"name": name, "project": "default", "type": "dingtalk",
        "webhook_secret": format!("{name}-url"), "sign_secret": format!("{name}-sign")});
    channel(s, spec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_dingtalk_is_accepted_and_a_bad_secret_fails_test_send_with_310000() {
    let (s, chat) = (server().await, Chat::start().await);
    dingtalk(&s, &chat, "ops", "tok-ops", "SEC-the-robots-real-secret").await;
    // Test-send: the robot's real answer.
    let (st, d) = s
        .send(Method::POST, "/v1/notify/channels/ops/test", None)
        .await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["status"], "sent");
    assert_eq!(d["attempt_log"][0]["code"], "0", "{d:#}");
    assert!(
        d["attempt_log"][0]["response"]
            .as_str()
            .unwrap()
            .contains("\"errcode\":0")
    );
    // A queued message arrives, signed.
    let id = send(&s, "ops", "## [FIRING:1] DiskFull\nnode-3 /var 97%", "a1").await;
    let d = settled(&s, &id).await;
    assert_eq!(d["status"], "sent", "{d:#}");
    let got = chat
        .wait_until("the alert", |r| {
            r.iter().any(|m| m.text.contains("DiskFull"))
        })
        .await;
    assert_eq!(got.len(), 2);

    // The wrong signing secret: the robot says 310000, and so does Capstan.
    dingtalk(&s, &chat, "ops-bad", "tok-bad", "SEC-a-wrong-secret").await;
    let (st, e) = s
        .send(
            Method::POST,
            "/v1/notify/channels/ops-bad/test",
            Some(json!({"body": "hello"})),
        )
        .await;
    assert_eq!(st, 502, "{e}");
    assert_eq!(e["error"]["code"], "provider_error");
    let answer = &e["error"]["details"]["answer"];
    assert_eq!(answer["code"], "310000", "{e:#}");
    assert_eq!(answer["message"], "sign not match");
    let failed = e["error"]["details"]["delivery"].as_str().unwrap();
    let (_, d) = s.get(&format!("/v1/notify/deliveries/{failed}")).await;
    assert_eq!(d["status"], "failed");
    assert!(
        d["attempt_log"][0]["response"]
            .as_str()
            .unwrap()
            .contains("310000")
    );
    // Queued through the bad channel: failed after one attempt, not retried.
    let id = send(&s, "ops-bad", "never arrives", "b1").await;
    let d = settled(&s, &id).await;
    assert_eq!(d["status"], "failed");
    assert_eq!(d["attempts"], 1, "{d:#}");
    assert!(d["last_error"].as_str().unwrap().contains("310000"));
    assert!(
        !chat
            .received()
            .iter()
            .any(|m| m.text.contains("never arrives"))
    );
    let (_, list) = s
        .get("/v1/notify/deliveries?channel=ops-bad&status=failed")
        .await;
    assert_eq!(list["deliveries"].as_array().unwrap().len(), 2, "{list:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dingtalk_at_its_limit_batches_and_drops_nothing() {
    let (s, chat) = (server().await, Chat::start().await);
    dingtalk(&s, &chat, "busy", "tok-busy", "SEC-the-robots-real-secret").await;
    // The robot is slow to answer the first message while 44 more queue up
    // (an alert storm): then 19 slots are left in the minute for 44 messages.
    chat.hold(true);
    let mut ids = vec![send(&s, "busy", "alert number 00", "k0").await];
    while chat.requests("dingtalk") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for i in 1..45 {
        ids.push(
            send(
                &s,
                "busy",
                &format!("alert number {i:02}"),
                &format!("k{i}"),
            )
            .await,
        );
    }
    chat.hold(false);
    let all = |r: &[capstan_tests::chat::Received]| {
        let text: String = r.iter().map(|m| m.text.as_str()).collect();
        (0..45).all(|i| text.contains(&format!("alert number {i:02}")))
    };
    let got = chat.wait_until("every alert", all).await;
    // The robot never said "too fast" (it allows 20 in any minute), and it
    // got at most 20 messages.
    assert!(chat.refusals().is_empty(), "{:?}", chat.refusals());
    // The first alone, then 26 in one message (one slot left for each of
    // the 18 others): 20 messages, the robot's limit.
    assert_eq!(got.len(), 20, "{got:#?}");
    let mut batched = 0;
    for id in &ids {
        let d = settled(&s, id).await;
        match d["status"].as_str().unwrap() {
            "sent" => {}
            "batched" => batched += 1,
            other => panic!("{other}: {d:#}"),
        }
    }
    assert_eq!(batched, 25);
    let (_, m) = s.get("/metrics").await;
    let m = m.as_str().unwrap_or_default().to_string();
    assert!(
        m.contains("capstan_notify_deliveries_total{kind=\"dingtalk\",outcome=\"batched\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_refusal_and_a_5xx_are_retried_with_backoff_then_sent() {
    let (s, chat) = (server().await, Chat::start().await);
    dingtalk(
        &s,
        &chat,
        "flaky",
        "tok-flaky",
        "SEC-the-robots-real-secret",
    )
    .await;
    chat.script(
        "dingtalk",
        vec![
            Scripted {
                status: 200,
                body: r#"{"errcode":130101,"errmsg":"send too fast, exceed 20 times per minute"}"#
                    .into(),
                retry_after: None,
            },
            Scripted {
                status: 500,
                body: "Internal Server Error".into(),
                retry_after: None,
            },
        ],
    );
    let id = send(&s, "flaky", "third time lucky", "r1").await;
    let d = settled(&s, &id).await;
    assert_eq!(d["status"], "sent", "{d:#}");
    let log = d["attempt_log"].as_array().unwrap();
    let outcomes: Vec<&str> = log.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["retry", "retry", "sent"]);
    assert_eq!(log[0]["code"], "130101");
    assert_eq!(log[1]["http_status"], 500);
    let gap = |i: usize| {
        log[i + 1]["started_ms"].as_i64().unwrap() - log[i]["finished_ms"].as_i64().unwrap()
    };
    assert!(
        gap(0) >= 150 && gap(1) >= 300,
        "backoff doubles from 150 ms: {} {}",
        gap(0),
        gap(1)
    );
    assert_eq!(chat.requests("dingtalk"), 3);
    assert_eq!(chat.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_is_one_message() {
    let (s, chat) = (server().await, Chat::start().await);
    secret(&s, "hook-url", &format!("{}/hook", chat.url)).await;
    channel(&s, json!({"name": "hook", "project": "default", "type": "webhook", "webhook_secret": "hook-url"})).await;
    let ids: Vec<String> = futures_ids(&s).await;
    assert!(ids.iter().all(|i| i == &ids[0]), "{ids:?}");
    settled(&s, &ids[0]).await;
    // A later message goes after it on the same channel: when it is there, a
    // duplicate of the first would be too.
    let later = send(&s, "hook", "later", "other-key").await;
    settled(&s, &later).await;
    let got = chat
        .wait_until("later", |r| r.iter().any(|m| m.text == "later"))
        .await;
    assert_eq!(
        got.iter().filter(|m| m.text == "resend me").count(),
        1,
        "{got:?}"
    );
}

async fn futures_ids(s: &TestServer) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(send(s, "hook", "resend me", "same-key").await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feishu_checks_the_sign_and_19021_is_reported() {
    let (s, chat) = (server().await, Chat::start().await);
    chat.set_secret("hook-1", "feishu-secret");
    secret(
        &s,
        "fs-url",
        &format!("{}/open-apis/bot/v2/hook/hook-1", chat.url),
    )
    .await;
    secret(&s, "fs-sign", "feishu-secret").await;
    secret(&s, "fs-wrong", "not-the-secret").await;
    let spec = |name: &str, sign: &str| {
        json!({"name": name, "project": "default", "type": "feishu",
        "webhook_secret": "fs-url", "sign_secret": sign})
    };
    channel(&s, spec("lark", "fs-sign")).await;
    channel(&s, spec("lark-bad", "fs-wrong")).await;
    let (st, d) = s
        .send(Method::POST, "/v1/notify/channels/lark/test", None)
        .await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["attempt_log"][0]["code"], "0");
    let (st, e) = s
        .send(Method::POST, "/v1/notify/channels/lark-bad/test", None)
        .await;
    assert_eq!(st, 502, "{e}");
    assert_eq!(e["error"]["details"]["answer"]["code"], "19021", "{e:#}");
    // Markdown goes as a post with a title; 12 messages at 5/s all arrive.
    for i in 0..12 {
        let (st, b) = s.send(Method::POST, "/v1/notify/channels/lark/send",
            Some(json!({"body": format!("# Title {i}\nline"), "format": "markdown", "idempotency_key": format!("m{i}")}))).await;
        assert_eq!(st, 202, "{b}");
    }
    let all = |r: &[capstan_tests::chat::Received]| {
        let text: String = r.iter().map(|m| m.text.as_str()).collect();
        (0..12).all(|i| text.contains(&format!("Title {i}")))
    };
    chat.wait_until("twelve posts", all).await;
    assert!(
        chat.refusals().iter().all(|(_, c)| c == "19021"),
        "{:?}",
        chat.refusals()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_answers_are_read_as_text_and_429_waits_for_retry_after() {
    let (s, chat) = (server().await, Chat::start().await);
    secret(
        &s,
        "slack-url",
        &format!("{}/services/T01/B02/xyz", chat.url),
    )
    .await;
    secret(
        &s,
        "slack-gone",
        &format!("{}/services/X01/B02/xyz", chat.url),
    )
    .await;
    channel(&s, json!({"name": "slack", "project": "default", "type": "slack", "webhook_secret": "slack-url"})).await;
    channel(&s, json!({"name": "slack-gone", "project": "default", "type": "slack", "webhook_secret": "slack-gone"})).await;
    let (st, e) = s
        .send(Method::POST, "/v1/notify/channels/slack-gone/test", None)
        .await;
    assert_eq!(st, 502);
    assert_eq!(
        e["error"]["details"]["answer"]["code"], "no_service",
        "{e:#}"
    );
    assert_eq!(e["error"]["details"]["answer"]["status"], 404);
    chat.script(
        "slack",
        vec![Scripted {
            status: 429,
            body: "rate_limited".into(),
            retry_after: Some(1),
        }],
    );
    let id = send(&s, "slack", "after a 429", "s1").await;
    let d = settled(&s, &id).await;
    assert_eq!(d["status"], "sent", "{d:#}");
    let log = d["attempt_log"].as_array().unwrap();
    assert_eq!(log[0]["http_status"], 429);
    let waited = log[1]["started_ms"].as_i64().unwrap() - log[0]["finished_ms"].as_i64().unwrap();
    assert!(
        waited >= 1000,
        "Retry-After: 1 honoured, waited {waited} ms"
    );
    chat.script(
        "slack",
        vec![Scripted {
            status: 400,
            body: "invalid_payload".into(),
            retry_after: None,
        }],
    );
    let id = send(&s, "slack", "refused", "s2").await;
    let d = settled(&s, &id).await;
    assert_eq!(d["status"], "failed");
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["attempt_log"][0]["code"], "invalid_payload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wecom_and_email_deliver_and_report_refusals() {
    let (s, chat, smtp) = (server().await, Chat::start().await, SmtpSink::start().await);
    secret(
        &s,
        "wc-url",
        &format!("{}/cgi-bin/webhook/send?key=wk-1", chat.url),
    )
    .await;
    secret(
        &s,
        "wc-bad",
        &format!("{}/cgi-bin/webhook/send?key=nope", chat.url),
    )
    .await;
    channel(
        &s,
        json!({"name": "wecom", "project": "default", "type": "wecom", "webhook_secret": "wc-url"}),
    )
    .await;
    channel(&s, json!({"name": "wecom-bad", "project": "default", "type": "wecom", "webhook_secret": "wc-bad"})).await;
    let (st, _) = s
        .send(Method::POST, "/v1/notify/channels/wecom/test", None)
        .await;
    assert_eq!(st, 200);
    let (st, e) = s
        .send(Method::POST, "/v1/notify/channels/wecom-bad/test", None)
        .await;
    assert_eq!(st, 502);
    assert_eq!(e["error"]["details"]["answer"]["code"], "93000");
    // A text over WeCom's 2048 bytes is cut to fit, not refused with 40058.
    let id = send(&s, "wecom", &"磁盘告警 ".repeat(400), "w1").await;
    assert_eq!(settled(&s, &id).await["status"], "sent");

    channel(
        &s,
        json!({"name": "mail", "project": "default", "type": "email",
        "smtp": {"host": "127.0.0.1", "port": smtp.port, "starttls": false,
                 "from": "capstan@example.com", "to": ["oncall@example.com"]}}),
    )
    .await;
    let (st, d) = s
        .send(Method::POST, "/v1/notify/channels/mail/test", None)
        .await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["attempt_log"][0]["http_status"], 250);
    let id = send(&s, "mail", "DiskFull on node-3\n/var is 97% full", "e1").await;
    assert_eq!(settled(&s, &id).await["status"], "sent");
    let mails = smtp.mails();
    assert_eq!(mails.len(), 2);
    assert_eq!(mails[1].to, ["oncall@example.com"]);
    assert!(
        mails[1].data.contains("Subject: DiskFull on node-3"),
        "{}",
        mails[1].data
    );
    smtp.refuse_next("550 5.7.1 Relaying denied");
    let (st, e) = s
        .send(Method::POST, "/v1/notify/channels/mail/test", None)
        .await;
    assert_eq!(st, 502, "{e}");
    assert_eq!(e["error"]["details"]["answer"]["code"], "550", "{e:#}");
}

/// A server trusting the test certificate `ca` as its private CA (`[http] ca_file`).
async fn server_trusting(ca: &Path) -> TestServer {
    let ca = ca.to_path_buf();
    TestServer::start_with(move |c| {
        c.notify.timeout_ms = 2_000;
        c.http.ca_file = Some(ca);
    })
    .await
}

/// An email channel to `port` on loopback; `tls` is merged into `smtp`.
fn email(name: &str, port: u16, tls: Value) -> Value {
    let mut smtp = json!({"host": "127.0.0.1", "port": port,
        "from": "capstan@example.com", "to": ["oncall@example.com"]});
    smtp.as_object_mut()
        .unwrap()
        .extend(tls.as_object().unwrap().clone());
    json!({"name": name, "project": "default", "type": "email", "smtp": smtp})
}

/// The provider answer of a refused test-send (502).
async fn refused_test(s: &TestServer, ch: &str) -> String {
    let (st, e) = s
        .send(
            Method::POST,
            &format!("/v1/notify/channels/{ch}/test"),
            None,
        )
        .await;
    assert_eq!(st, 502, "{ch}: {e:#}");
    e["error"]["details"]["answer"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{ch}: no answer message in {e:#}"))
        .to_string()
}

/// Implicit TLS (SMTPS, what Tencent Exmail and Aliyun Mail ask on port
/// 465) and STARTTLS, to relays whose certificate comes from the server's
/// private CA; STARTTLS required of a server that does not offer it sends
/// nothing; without the CA the certificate is refused, and the answer says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_over_implicit_tls_and_starttls_trusting_the_servers_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = capstan_tests::self_signed_cert(certs.path());
    let smtps = SmtpSink::start_implicit_tls(&cert, &key).await;
    let starttls = SmtpSink::start_starttls(&cert, &key).await;
    let plain = SmtpSink::start().await;
    let s = server_trusting(&cert).await;
    channel(
        &s,
        email("smtps", smtps.port, json!({"implicit_tls": true})),
    )
    .await;
    channel(
        &s,
        email("starttls", starttls.port, json!({"starttls": true})),
    )
    .await;
    channel(
        &s,
        email("no-starttls", plain.port, json!({"starttls": true})),
    )
    .await;

    for (ch, sink) in [("smtps", &smtps), ("starttls", &starttls)] {
        let (st, d) = s
            .send(
                Method::POST,
                &format!("/v1/notify/channels/{ch}/test"),
                None,
            )
            .await;
        assert_eq!(st, 200, "{ch}: {d:#}");
        assert_eq!(d["attempt_log"][0]["http_status"], 250, "{ch}: {d:#}");
        let id = send(&s, ch, "DiskFull on node-3\n/var is 97% full", ch).await;
        assert_eq!(settled(&s, &id).await["status"], "sent", "{ch}");
        let mails = sink.mails();
        assert_eq!(mails.len(), 2, "{ch}: {mails:#?}");
        assert!(mails.iter().all(|m| m.tls), "{ch}: a mail came in clear");
        assert_eq!(mails[1].to, ["oncall@example.com"]);
        assert!(
            mails[1].data.contains("Subject: DiskFull on node-3"),
            "{}",
            mails[1].data
        );
    }
    // Each STARTTLS session upgraded once before its mail.
    assert_eq!(starttls.upgrades(), 2);

    // STARTTLS required and not offered: a failure, and no mail in clear.
    let answer = refused_test(&s, "no-starttls").await;
    assert!(answer.contains("STARTTLS"), "{answer}");
    assert!(plain.mails().is_empty(), "{:#?}", plain.mails());

    // The SMTPS port spoken to in clear (`implicit_tls` forgotten): both
    // sides wait for the other; the send ends at the notify timeout.
    channel(&s, email("forgot-implicit", smtps.port, json!({}))).await;
    let t = Instant::now();
    let answer = refused_test(&s, "forgot-implicit").await;
    assert!(answer.contains("no answer from"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // Without the CA, both relays' certificate is refused, plainly.
    let bare = server().await;
    channel(
        &bare,
        email("smtps", smtps.port, json!({"implicit_tls": true})),
    )
    .await;
    channel(&bare, email("starttls", starttls.port, json!({}))).await;
    for ch in ["smtps", "starttls"] {
        let answer = refused_test(&bare, ch).await;
        assert!(
            answer.contains("certificate is not trusted") && answer.contains("UnknownIssuer"),
            "{ch}: {answer}"
        );
    }
    assert_eq!(smtps.mails().len(), 2);
    assert_eq!(starttls.mails().len(), 2);
}

/// An https endpoint on loopback presenting `cert`: answers every request
/// `200 ok` and keeps the bodies.
async fn https_hook(cert: &Path, key: &Path) -> (u16, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let acceptor = capstan::api::tls::acceptor(cert, key).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let g = got.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            let (acceptor, g) = (acceptor.clone(), g.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(sock).await else {
                    return;
                };
                let mut r = BufReader::new(tls);
                let (mut line, mut len) = (String::new(), 0);
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).await.unwrap();
                g.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                let _ = r.write_all(ok).await;
                let _ = r.shutdown().await;
            });
        }
    });
    (port, got)
}

/// A webhook at an https URL of an internal service: its certificate comes
/// from the server's private CA, trusted; without the CA the answer names
/// the certificate problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_trusts_the_servers_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = capstan_tests::self_signed_cert(certs.path());
    let (port, got) = https_hook(&cert, &key).await;
    let hook = json!({"name": "hook", "project": "default", "type": "webhook", "webhook_secret": "hook-url"});
    let url = format!("https://127.0.0.1:{port}/hook");

    let s = server_trusting(&cert).await;
    secret(&s, "hook-url", &url).await;
    channel(&s, hook.clone()).await;
    let (st, d) = s
        .send(Method::POST, "/v1/notify/channels/hook/test", None)
        .await;
    assert_eq!(st, 200, "{d:#}");
    assert_eq!(d["attempt_log"][0]["http_status"], 200, "{d:#}");
    assert_eq!(got.lock().unwrap().len(), 1);
    assert!(got.lock().unwrap()[0].contains("Capstan test message"));

    let bare = server().await;
    secret(&bare, "hook-url", &url).await;
    channel(&bare, hook).await;
    let answer = refused_test(&bare, "hook").await;
    assert!(answer.contains("certificate is not trusted"), "{answer}");
    assert_eq!(got.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_need_stored_secrets_and_the_admin_role() {
    let s = server().await;
    let spec =
        json!({"name": "x", "project": "default", "type": "slack", "webhook_secret": "missing"});
    let (st, e) = s
        .send(Method::PUT, "/v1/notify/channels/x", Some(spec))
        .await;
    assert_eq!(st, 422, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("missing"));
    let (st, _) = s
        .send(
            Method::PUT,
            "/v1/notify/channels/x",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(st, 422);
    let (st, _) = s.get("/v1/notify/deliveries?status=bogus").await;
    assert_eq!(st, 400);
    let (st, _) = s
        .send(Method::POST, "/v1/notify/channels/nope/test", None)
        .await;
    assert_eq!(st, 404);
    let (st, b) = s
        .send(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "op", "role": "operator"})),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    secret(&s, "u", "http://127.0.0.1:9/x").await;
    let r = client()
        .put(format!("{}/v1/notify/channels/y", s.url))
        .bearer_auth(b["token"].as_str().unwrap())
        .json(&json!({"name": "y", "project": "default", "type": "webhook", "webhook_secret": "u"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// Enqueue to sent, when the channel is not limited (BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_enqueue_to_sent_unlimited() {
    let (s, chat) = (server().await, Chat::start().await);
    secret(&s, "hook-url", &format!("{}/hook", chat.url)).await;
    channel(&s, json!({"name": "hook", "project": "default", "type": "webhook", "webhook_secret": "hook-url"})).await;
    let mut ms = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        let body = format!("bench {i}");
        send(&s, "hook", &body, &format!("bench-{i}")).await;
        chat.wait_until("the message", |r| r.last().is_some_and(|m| m.text == body))
            .await;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    let (p50, p99) = (ms[ms.len() / 2], ms[ms.len() * 99 / 100]);
    println!(
        "notify enqueue->received over HTTP (webhook, 200 sequential): p50 {p50:.2} ms, p99 {p99:.2} ms, max {:.2} ms",
        ms[ms.len() - 1]
    );
    assert!(p50 < 1000.0, "p50 {p50} ms");
}

/// Alertmanager webhook to notification sent, when the channel is not
/// limited (BENCHMARKS.md): the clock runs from `POST
/// /v1/alerts/alertmanager/am` to the stand-in holding the message. In
/// between: the group stored before the answer, routed, handled by the
/// bundled `alert-notify` (a Wasm call), its notify action executed (the
/// outbox row) and delivered through a `webhook` channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_webhook_to_sent_unlimited() {
    let (s, chat) = (server().await, Chat::start().await);
    secret(&s, "hook-url", &format!("{}/hook", chat.url)).await;
    channel(&s, json!({"name": "ops", "project": "default", "type": "webhook", "webhook_secret": "hook-url"})).await;
    let (m, wasm) = capstan_tests::bundled("alert-notify");
    s.install(&m, &wasm).await;
    let (st, b) = s
        .send(
            Method::PUT,
            "/v1/alerts/routes/all",
            Some(json!({ "project": "default", "handlers": ["alert-notify"], "matchers": [] })),
        )
        .await;
    assert!(st == 200 || st == 201, "{b}");
    let mut ms = Vec::new();
    for i in 0..100 {
        let summary = format!("bench alert {i}");
        let group = json!({ "version": "4", "groupKey": format!("{{}}:{{alertname=\"B{i}\"}}"),
            "truncatedAlerts": 0, "status": "firing", "receiver": "am",
            "groupLabels": {"alertname": format!("B{i}")}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://am", "alerts": [{ "status": "firing",
                "labels": {"alertname": format!("B{i}"), "severity": "page"},
                "annotations": {"summary": summary}, "startsAt": "2026-12-02T00:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prom/graph",
                "fingerprint": format!("{i:016x}") }] });
        let t = Instant::now();
        let (st, b) = s
            .send(Method::POST, "/v1/alerts/alertmanager/am", Some(group))
            .await;
        assert_eq!(st, 200, "{b}");
        chat.wait_until("the notification", |r| {
            r.last().is_some_and(|m| m.text.contains(&summary))
        })
        .await;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    let (p50, p99) = (ms[ms.len() / 2], ms[ms.len() * 99 / 100]);
    println!(
        "alert webhook->notification received over HTTP (webhook channel, 100 sequential groups): p50 {p50:.2} ms, p99 {p99:.2} ms, max {:.2} ms",
        ms[ms.len() - 1]
    );
    assert!(p50 < 2000.0, "p50 {p50} ms");
}

/// kill -9 of a real `capstan` process while the provider has the request
/// but has not answered: after the restart the message is sent again, the
/// lost attempt is recorded as interrupted, and every request the provider
/// got is one attempt record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_survives_kill_9_between_enqueue_and_the_answer() {
    use capstan_tests::procs::{Capstan, TOKEN};
    let chat = Chat::start().await;
    let mut proc = Capstan::start(None, &[]);
    proc.wait_ready().await;
    let (c, base) = (client(), proc.url());
    let r = c
        .put(format!("{base}/v1/secrets/hook-url"))
        .bearer_auth(TOKEN)
        .json(&json!({"value": format!("{}/hook", chat.url)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .put(format!("{base}/v1/notify/channels/hook"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "hook", "project": "default", "type": "webhook", "webhook_secret": "hook-url"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    chat.hold(true);
    let r = c
        .post(format!("{base}/v1/notify/channels/hook/send"))
        .bearer_auth(TOKEN)
        .json(&json!({"body": "survives kill -9", "idempotency_key": "crash-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while chat.requests("webhook") == 0 {
        assert!(Instant::now() < deadline, "never sent: {}", proc.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dir = proc.kill_9();
    let proc = Capstan::start(Some(dir), &[]);
    proc.wait_ready().await;
    chat.hold(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    let d = loop {
        let d = proc.get(&format!("/v1/notify/deliveries/{id}")).await;
        if d["status"] != "queued" {
            break d;
        }
        assert!(Instant::now() < deadline, "{d:#}\n{}", proc.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(d["status"], "sent", "{d:#}");
    let log = d["attempt_log"].as_array().unwrap();
    let outcomes: Vec<&str> = log.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["interrupted", "sent"], "{d:#}");
    assert_eq!(
        chat.requests("webhook"),
        log.len(),
        "one request per attempt record"
    );
    let got = chat.received();
    assert!(got.iter().any(|m| m.text == "survives kill -9"));
    // The same key after the restart is still the same delivery.
    let r = c
        .post(format!("{}/v1/notify/channels/hook/send", proc.url()))
        .bearer_auth(TOKEN)
        .json(&json!({"body": "survives kill -9", "idempotency_key": "crash-1"}))
        .send()
        .await
        .unwrap();
    let again = r.json::<Value>().await.unwrap();
    assert_eq!(again["id"], id.as_str());
    assert_eq!(again["created"], false);
}
