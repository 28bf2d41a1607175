//! The notifier end to end inside the crate, on every store backend: a
//! loopback HTTP endpoint stands in for the provider (the provider-exact
//! stand-ins are in the `capstan-tests` crate).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::model::{ChannelKind, ChannelSpec, Format, RateLimit};
use crate::store::{DeliveryFilter, DeliveryStatus};
use crate::{Enqueue, Notifier, NotifyConfig, NotifyMetrics, SecretSource};

struct MapSecrets(HashMap<String, String>);

impl SecretSource for MapSecrets {
    fn get(&self, name: &str) -> Result<String, String> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no secret named {name}"))
    }
    fn names(&self) -> Result<Vec<String>, String> {
        Ok(self.0.keys().cloned().collect())
    }
}

/// A notifier on `store` whose secret `hook-url` is `url`.
fn notifier(store: &Arc<capstan_store::Store>, url: String, poll: Duration) -> Arc<Notifier> {
    let secrets = MapSecrets(HashMap::from([("hook-url".to_string(), url)]));
    let config = NotifyConfig {
        poll,
        ..Default::default()
    };
    Notifier::start(
        store.clone(),
        Arc::new(secrets),
        config,
        NotifyMetrics::default(),
    )
}

/// A loopback endpoint that answers 200 and keeps every JSON body.
async fn sink() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let g = g.clone();
            async move {
                g.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, got)
}

fn spec(name: &str, kind: ChannelKind, limit: Option<RateLimit>) -> ChannelSpec {
    ChannelSpec {
        name: name.into(),
        project: "default".into(),
        kind,
        webhook_secret: Some("hook-url".into()),
        sign_secret: None,
        smtp: None,
        plugins: vec!["alert-notify".into()],
        rate_limit: limit,
        description: String::new(),
    }
}

fn msg(channel: &str, body: &str, key: &str) -> Enqueue {
    Enqueue {
        project: "default".into(),
        channel: channel.into(),
        format: Format::Text,
        body: body.into(),
        idempotency_key: key.into(),
        plugin: Some("alert-notify".into()),
    }
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_delivery_per_idempotency_key_on_every_backend() {
    for t in capstan_store::testing::backends() {
        let (url, got) = sink().await;
        let n = notifier(&t.store, url, Duration::from_millis(50));
        n.put_channel(&spec("hook", ChannelKind::Webhook, None), "api", "test")
            .unwrap();

        // The same key three times: one delivery, one message.
        let a = n.enqueue(msg("hook", "disk full", "k1")).await.unwrap();
        let b = n.enqueue(msg("hook", "disk full", "k1")).await.unwrap();
        assert!(a.created && !b.created);
        assert_eq!(a.id, b.id);
        let other = n
            .notify("default", "alert-notify", "hook", "text", "cpu", "k2")
            .await
            .unwrap();
        wait_for("two messages", || got.lock().unwrap().len() >= 2).await;
        for id in [&a.id, &other] {
            let d = n.delivery(id).unwrap().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut d = d;
            while d.status != DeliveryStatus::Sent && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
                d = n.delivery(id).unwrap().unwrap();
            }
            assert_eq!(d.status, DeliveryStatus::Sent, "{d:?}");
            assert_eq!(d.attempt_log.unwrap().len(), 1);
        }

        // Another project, an unknown channel, a plugin not allowed.
        assert!(
            n.notify("other", "alert-notify", "hook", "text", "x", "k3")
                .await
                .is_err()
        );
        assert!(
            n.notify("default", "alert-notify", "nope", "text", "x", "k3")
                .await
                .is_err()
        );
        assert!(matches!(
            n.notify("default", "rogue", "hook", "text", "x", "k3")
                .await,
            Err(crate::NotifyError::Forbidden(_))
        ));

        let _ = t.backend();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_left_in_flight_is_marked_interrupted_and_sent_again() {
    for t in capstan_store::testing::backends() {
        let (url, got) = sink().await;
        let db = crate::store::NotifyStore::new(t.store.clone());
        let s = spec("hook", ChannelKind::Webhook, None);
        db.put_channel(&s, "api", "test").unwrap();
        // A server enqueued, began an attempt, and died.
        let (id, _) = db
            .enqueue(&crate::store::NewDelivery {
                project: "default".into(),
                idem_key: "crash".into(),
                channel: "hook".into(),
                kind: "webhook".into(),
                plugin: None,
                format: "text".into(),
                body: "after the crash".into(),
                test: false,
            })
            .unwrap();
        db.begin_attempt(&id, "hook", 1, 1).unwrap();
        let n = notifier(&t.store, url, NotifyConfig::default().poll);
        wait_for("the message", || got.lock().unwrap().len() == 1).await;
        let mut d = n.delivery(&id).unwrap().unwrap();
        while d.status != DeliveryStatus::Sent {
            tokio::time::sleep(Duration::from_millis(20)).await;
            d = n.delivery(&id).unwrap().unwrap();
        }
        let log = d.attempt_log.unwrap();
        let outcomes: Vec<&str> = log.iter().map(|a| a.outcome.as_str()).collect();
        assert_eq!(outcomes, ["interrupted", "sent"]);
        assert_eq!(log[1].attempt, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_waiting_for_a_tight_window_goes_out_in_two_messages() {
    for t in capstan_store::testing::backends() {
        let (url, got) = sink().await;
        let db = crate::store::NotifyStore::new(t.store.clone());
        let limit = RateLimit {
            max: 2,
            per_ms: 60_000,
        };
        db.put_channel(
            &spec("tight", ChannelKind::Webhook, Some(limit)),
            "api",
            "test",
        )
        .unwrap();
        // 6 messages wait when the worker first looks (a storm); 2 per minute.
        for i in 0..6 {
            db.enqueue(&crate::store::NewDelivery {
                project: "default".into(),
                idem_key: format!("t{i}"),
                channel: "tight".into(),
                kind: "webhook".into(),
                plugin: None,
                format: "text".into(),
                body: format!("alert {i}"),
                test: false,
            })
            .unwrap();
        }
        let n = notifier(&t.store, url, NotifyConfig::default().poll);
        let all_there = || {
            let text: String = got
                .lock()
                .unwrap()
                .iter()
                .map(|v| v["text"].to_string())
                .collect();
            (0..6).all(|i| text.contains(&format!("alert {i}")))
        };
        wait_for("all six alerts", all_there).await;
        // Five in the first message (one slot left for the sixth), then one.
        assert_eq!(got.lock().unwrap().len(), 2, "{:?}", got.lock().unwrap());
        let batched = n
            .deliveries(&DeliveryFilter {
                channel: Some("tight".into()),
                status: Some(DeliveryStatus::Batched),
                limit: 50,
            })
            .unwrap();
        assert_eq!(batched.len(), 4);
        assert!(batched.iter().all(|d| d.batched_into.is_some()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_finished_deliveries_and_their_receipts_never_queued_ones() {
    for t in capstan_store::testing::backends() {
        let (url, got) = sink().await;
        let n = notifier(&t.store, url, Duration::from_millis(50));
        // One message a minute: the second waits in the queue.
        let limit = RateLimit {
            max: 1,
            per_ms: 60_000,
        };
        n.put_channel(
            &spec("slow", ChannelKind::Webhook, Some(limit)),
            "api",
            "test",
        )
        .unwrap();
        let sent = n.enqueue(msg("slow", "first", "r1")).await.unwrap();
        wait_for("the first message", || got.lock().unwrap().len() == 1).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while n.delivery(&sent.id).unwrap().unwrap().status != DeliveryStatus::Sent {
            assert!(Instant::now() < deadline, "never recorded as sent");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let waiting = n.enqueue(msg("slow", "second", "r2")).await.unwrap();

        let now = capstan_store::unix_millis();
        assert_eq!(
            n.db.prune(now - 86_400_000).unwrap(),
            0,
            "nothing is that old"
        );
        assert_eq!(n.db.prune(now + 1_000).unwrap(), 1);
        assert!(n.delivery(&sent.id).unwrap().is_none());
        let left: i64 = t
            .store
            .with(|c| {
                c.value(
                    "SELECT COUNT(*) FROM notify_attempts WHERE delivery = ?1",
                    capstan_store::args![sent.id],
                )
            })
            .unwrap();
        assert_eq!(left, 0, "its receipts go with it");
        let w = n
            .delivery(&waiting.id)
            .unwrap()
            .expect("a queued delivery is kept");
        assert_eq!(w.status, DeliveryStatus::Queued);
        // Its key is free again once the delivery is gone.
        assert!(n.enqueue(msg("slow", "first", "r1")).await.unwrap().created);
        let _ = t.backend();
    }
}

#[test]
fn a_refused_certificate_is_named_in_the_answer_with_its_causes() {
    let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
    let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
    let m = crate::send::chain(&io);
    assert!(
        m.starts_with("the server's TLS certificate is not trusted")
            && m.ends_with("(invalid peer certificate: UnknownIssuer)"),
        "{m}"
    );
    let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    assert_eq!(crate::send::chain(&plain), "refused");
}
