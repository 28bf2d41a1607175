//! The secrets key (never regenerated over one that cannot be read, 0600,
//! outside the data directory), ciphertexts bound to their secret's name,
//! audit retention, and invocation ids unique across restarts.

use capstan::server::Server;
use capstan_tests::{TestServer, guest, guests, manifest, probe, test_config};
use reqwest::Method;
use serde_json::json;

/// Starting on `dir` with its key file in place fails with a message that
/// names the key file.
async fn refused(dir: &std::path::Path) -> String {
    let key = dir.join("secrets.key");
    match Server::start(test_config(dir)).await {
        Ok(_) => panic!("the server started with an unusable key file"),
        Err(e) => {
            let message = format!("{e:#}");
            assert!(
                message.contains(&key.display().to_string()),
                "the message names the key file: {message}"
            );
            message
        }
    }
}

#[tokio::test]
async fn an_unreadable_key_file_stops_the_server_and_is_never_replaced() {
    // A directory in place of the file (chmod 000 does not stop root).
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("secrets.key");
    std::fs::create_dir(&key).unwrap();
    let message = refused(dir.path()).await;
    assert!(message.contains("never replaces a key"), "{message}");
    assert!(key.is_dir(), "left as it was");

    // Wrong length, and not base64: refused, and the file is untouched.
    for (text, needle) in [("c2hvcnQ=\n", "must be 32 bytes"), ("%%%\n", "not base64")] {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("secrets.key");
        std::fs::write(&key, text).unwrap();
        let message = refused(dir.path()).await;
        assert!(message.contains(needle), "{message}");
        assert_eq!(std::fs::read_to_string(&key).unwrap(), text);
    }
}

#[tokio::test]
async fn a_missing_key_file_is_created_private_once_and_kept_outside_if_configured() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start().await;
    let key = server.dir.path().join("secrets.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "created 0600");
    let (status, _) = server
        .send(Method::PUT, "/v1/secrets/a", Some(json!({ "value": "v" })))
        .await;
    assert_eq!(status, 204);
    // Lost after secrets were stored: the server refuses to make a new one.
    let dir = server.stop().await;
    std::fs::remove_file(dir.path().join("secrets.key")).unwrap();
    let message = refused(dir.path()).await;
    assert!(message.contains("is missing"), "{message}");
    assert!(!dir.path().join("secrets.key").exists());

    // secrets_key_file outside the data directory.
    let keys = tempfile::tempdir().unwrap();
    let outside = keys.path().join("capstan.key");
    let server = TestServer::start_with(|c| c.secrets_key_file = Some(outside.clone())).await;
    assert!(outside.exists());
    assert!(!server.dir.path().join("secrets.key").exists());
    let mode = std::fs::metadata(&outside).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn a_ciphertext_copied_from_another_secret_is_an_error_for_the_plugin() {
    let server = TestServer::start().await;
    for (name, value) in [
        ("prod-db", "prod-password-x1"),
        ("dev-db", "dev-password-y2"),
    ] {
        let (status, _) = server
            .send(
                Method::PUT,
                &format!("/v1/secrets/{name}"),
                Some(json!({ "value": value })),
            )
            .await;
        assert_eq!(status, 204);
    }
    let grants = "[grants.secrets]\nnames = [\"dev-db\"]\n";
    server
        .install(
            &manifest("dev-reader", "1.0.0", "deploy-step", grants),
            &guest(guests::PROBE),
        )
        .await;
    let read = json!({ "op": "secret", "name": "dev-db" });
    assert!(
        probe(&server, "dev-reader", read.clone())
            .await
            .starts_with("ok:")
    );
    // Someone with write access to the database copies prod's ciphertext
    // into the row of the secret the plugin may read.
    server
        .env()
        .store
        .with(|c| {
            c.exec(
                "UPDATE secrets SET (nonce, ciphertext) =
                   (SELECT nonce, ciphertext FROM secrets WHERE name = 'prod-db')
                 WHERE name = 'dev-db'",
                &[],
            )
        })
        .unwrap();
    let got = probe(&server, "dev-reader", read).await;
    assert!(got.starts_with("err:"), "{got}");
    assert!(got.contains("does not decrypt"), "{got}");
    assert!(!got.contains("prod-password"), "{got}");
}

#[tokio::test]
async fn audit_retention_keeps_the_newest_rows() {
    let server = TestServer::start_with(|c| {
        c.audit.max_rows = 10;
        c.audit.retention_interval_secs = 1;
    })
    .await;
    // Anonymous refusals: the noise retention exists for.
    for i in 0..30 {
        let r = server
            .client
            .post(format!("{}/v1/tokens?n={i}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let newest = server
        .client
        .delete(format!("{}/v1/plugins/the-last-one", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(newest.status(), 401);
    let env = server.env();
    let q = capstan::capabilities::audit::AuditQuery {
        limit: Some(1000),
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let rows = env.audit.query(&q).await.unwrap();
        if rows.len() <= 10 {
            assert_eq!(rows[0].target, "/v1/plugins/the-last-one", "newest kept");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retention did not run: {} rows",
            rows.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // What the log could not take is counted in /metrics.
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("capstan_audit_records_dropped_total 0"),
        "{metrics}"
    );
    assert!(metrics.contains("capstan_audit_write_failures_total 0"));
}

#[tokio::test]
async fn invocation_ids_are_uuidv7_and_never_repeat_across_restarts() {
    let mut seen = std::collections::HashSet::new();
    let mut server = TestServer::start().await;
    for round in 0..2 {
        if round == 0 {
            server
                .install(
                    &manifest("step", "1.0.0", "deploy-step", ""),
                    &guest(guests::PROBE),
                )
                .await;
        }
        for _ in 0..3 {
            let (status, body) = server
                .invoke("step", json!({ "params": { "op": "noop" } }))
                .await;
            assert_eq!(status, 200, "{body}");
            let id = body["invocation"]["id"].as_str().unwrap().to_string();
            let parsed = uuid::Uuid::parse_str(&id).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 7, "{id}");
            assert!(seen.insert(id.clone()), "{id} was used twice");
        }
        let dir = server.stop().await;
        server = TestServer::start_in(dir, |_| {}).await;
    }
}
