//! kv, fs and secrets capabilities: what a grant allows works, everything
//! else is denied and audited. The probe guest tries every escape route.

use capstan::capabilities::AuditRecord;
use capstan_tests::{TestServer, audit, guest, guests, manifest, probe};
use serde_json::json;

fn denied_record<'a>(records: &'a [AuditRecord], target: &str) -> &'a AuditRecord {
    records
        .iter()
        .find(|r| !r.allowed && r.target == target)
        .unwrap_or_else(|| panic!("no denial audited for {target}: {records:#?}"))
}

#[tokio::test]
async fn kv_is_denied_without_a_grant() {
    let server = TestServer::start().await;
    server
        .install(
            &manifest("nokv", "1.0.0", "deploy-step", ""),
            &guest(guests::PROBE),
        )
        .await;
    let got = probe(
        &server,
        "nokv",
        json!({ "op": "kv-set", "key": "k", "value": "v" }),
    )
    .await;
    assert!(
        got.starts_with("err:Denied") && got.contains("grants no kv"),
        "{got}"
    );
    let r = denied_record(&audit(&server, "nokv", "kv").await, "k").clone();
    assert_eq!(
        (r.verb.as_str(), r.version.as_deref()),
        ("set", Some("1.0.0"))
    );
    assert!(r.invocation.is_some());
}

#[tokio::test]
async fn kv_round_trip_isolation_quota_and_persistence() {
    let server = TestServer::start().await;
    let grant = "[grants.kv]\nmax_bytes = 64\nmax_value_bytes = 32\n";
    server
        .install(
            &manifest("alpha", "1.0.0", "deploy-step", grant),
            &guest(guests::PROBE),
        )
        .await;
    server
        .install(
            &manifest("beta", "1.0.0", "deploy-step", grant),
            &guest(guests::PROBE),
        )
        .await;
    let kv = |op: &str, key: &str, value: &str| json!({ "op": op, "key": key, "value": value, "prefix": key });

    assert_eq!(
        probe(&server, "alpha", kv("kv-set", "cursor", "42")).await,
        "ok:set"
    );
    assert_eq!(
        probe(&server, "alpha", kv("kv-get", "cursor", "")).await,
        "ok:42"
    );
    assert_eq!(
        probe(&server, "alpha", kv("kv-set-if-absent", "run-1", "x")).await,
        "ok:true"
    );
    assert_eq!(
        probe(&server, "alpha", kv("kv-set-if-absent", "run-1", "y")).await,
        "ok:false"
    );
    assert_eq!(
        probe(&server, "alpha", kv("kv-list", "", "")).await,
        "ok:cursor,run-1"
    );
    // Another plugin sees none of it, even with the same key.
    assert_eq!(
        probe(&server, "beta", kv("kv-get", "cursor", "")).await,
        "ok:<none>"
    );
    assert_eq!(probe(&server, "beta", kv("kv-list", "", "")).await, "ok:");
    assert_eq!(
        probe(&server, "beta", kv("kv-delete", "cursor", "")).await,
        "ok:false"
    );
    // Limits.
    let got = probe(&server, "alpha", kv("kv-set", "big", &"v".repeat(40))).await;
    assert!(
        got.starts_with("err:InvalidInput") && got.contains("limit of 32 bytes"),
        "{got}"
    );
    assert_eq!(
        probe(&server, "alpha", kv("kv-set", "more1", &"v".repeat(30))).await,
        "ok:set"
    );
    let got = probe(&server, "alpha", kv("kv-set", "more2", &"v".repeat(30))).await;
    assert!(
        got.starts_with("err:Denied") && got.contains("quota of 64 bytes"),
        "{got}"
    );
    assert_eq!(
        probe(&server, "alpha", kv("kv-delete", "run-1", "")).await,
        "ok:true"
    );

    let dir = server.stop().await;
    let server = TestServer::start_in(dir, |_| {}).await;
    assert_eq!(
        probe(&server, "alpha", kv("kv-get", "cursor", "")).await,
        "ok:42"
    );
    assert_eq!(
        probe(&server, "alpha", kv("kv-get", "run-1", "")).await,
        "ok:<none>"
    );
}

#[tokio::test]
async fn kv_key_too_long_in_multibyte_text_is_invalid_input_and_accounted() {
    let server = TestServer::start().await;
    let grant = "[grants.kv]\n";
    server
        .install(
            &manifest("wide", "1.0.0", "deploy-step", grant),
            &guest(guests::PROBE),
        )
        .await;
    // 600 bytes of 3-byte characters: byte 64 falls inside a character.
    let key = "€".repeat(200);
    for op in [
        "kv-set",
        "kv-get",
        "kv-set-if-absent",
        "kv-delete",
        "kv-list",
    ] {
        let (status, body) = server
            .invoke(
                "wide",
                json!({ "params": { "op": op, "key": key, "prefix": key, "value": "v" } }),
            )
            .await;
        assert_eq!(status, 200, "{op}: {body}");
        let got = body["result"]["outputs"]["result"]
            .as_str()
            .unwrap_or_default();
        assert!(
            got.starts_with("err:InvalidInput") && got.contains("longer than 512"),
            "{op}: {got}"
        );
        // The call is accounted like any other.
        let id = body["invocation"]["id"].as_str().expect("invocation id");
        let (status, recent) = server.get("/v1/plugins/wide/invocations").await;
        assert_eq!(status, 200);
        assert!(
            recent
                .as_array()
                .is_some_and(|a| a.iter().any(|i| i["id"] == id)),
            "{op}: invocation {id} not listed: {recent}"
        );
    }
    // The refusal is audited with a valid prefix of the key.
    let records = audit(&server, "wide", "kv").await;
    let r = records
        .iter()
        .find(|r| !r.allowed && r.verb == "set")
        .expect("refusal audited");
    assert!(key.starts_with(&r.target) && !r.target.is_empty(), "{r:?}");
    // The server keeps serving, this plugin included.
    assert_eq!(
        probe(
            &server,
            "wide",
            json!({ "op": "kv-set", "key": "k", "value": "v" })
        )
        .await,
        "ok:set"
    );
}

#[tokio::test]
async fn fs_mounts_allow_what_they_grant_and_nothing_else() {
    let ro = tempfile::tempdir().unwrap();
    let rw = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(ro.path().join("app.yaml"), "replicas: 2\n").unwrap();
    std::fs::write(outside.path().join("secret.txt"), "top secret").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        ro.path().join("link-out"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), ro.path().join("dir-out")).unwrap();
    let grants = format!(
        "[[grants.fs]]\nhost_path = {:?}\nguest_path = \"/templates\"\nmode = \"ro\"\n[[grants.fs]]\nhost_path = {:?}\nguest_path = \"/work\"\nmode = \"rw\"\n",
        ro.path().display().to_string(),
        rw.path().display().to_string()
    );
    let server = TestServer::start().await;
    server
        .install(
            &manifest("files", "1.0.0", "deploy-step", &grants),
            &guest(guests::PROBE),
        )
        .await;
    let fs = |op: &str, path: &str| json!({ "op": op, "path": path, "data": "hello" });

    assert_eq!(
        probe(&server, "files", fs("fs-read", "/templates/app.yaml")).await,
        "ok:replicas: 2\n"
    );
    assert_eq!(
        probe(&server, "files", fs("fs-write", "/work/out.txt")).await,
        "ok:written"
    );
    assert_eq!(
        std::fs::read_to_string(rw.path().join("out.txt")).unwrap(),
        "hello"
    );
    assert_eq!(
        probe(&server, "files", fs("fs-list", "/work")).await,
        "ok:out.txt"
    );
    assert_eq!(
        probe(&server, "files", fs("fs-remove", "/work/out.txt")).await,
        "ok:removed"
    );
    assert!(!rw.path().join("out.txt").exists());

    let escapes = [
        ("fs-write", "/templates/new.txt", "read-only"),
        ("fs-remove", "/templates/app.yaml", "read-only"),
        (
            "fs-read",
            "/templates/../../../../etc/passwd",
            "must not contain `..`",
        ),
        ("fs-read", "/etc/passwd", "not under a granted mount"),
        ("fs-read", "templates/app.yaml", "not under a granted mount"),
        (
            "fs-read",
            "/templatesX/app.yaml",
            "not under a granted mount",
        ),
        ("fs-read", "/templates/link-out", "refused by the sandbox"),
        ("fs-list", "/templates/dir-out", "refused by the sandbox"),
        ("fs-write", "/work/../outside.txt", "must not contain `..`"),
    ];
    for (op, path, why) in escapes {
        let got = probe(&server, "files", fs(op, path)).await;
        assert!(
            got.starts_with("err:Denied") && got.contains(why),
            "{op} {path}: expected `{why}`, got {got}"
        );
    }
    assert!(std::fs::read_to_string(ro.path().join("app.yaml")).unwrap() == "replicas: 2\n");
    let records = audit(&server, "files", "fs").await;
    for (_, path, _) in escapes {
        denied_record(&records, path);
    }
    // WASI's own filesystem has no preopens at all: std::fs sees nothing.
    let got = probe(
        &server,
        "files",
        json!({ "op": "std-read", "path": "/etc/passwd" }),
    )
    .await;
    assert!(got.starts_with("err:Denied"), "{got}");
    assert!(!got.contains("root:"), "{got}");
}

/// Opens the FIFO's write end without blocking: it succeeds only if some
/// thread is waiting to read it (no reader: ENXIO).
fn fifo_has_a_reader(fifo: &std::path::Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .is_ok()
}

#[tokio::test]
async fn fs_refuses_fifos_promptly_and_leaves_no_thread_blocked() {
    let mount = tempfile::tempdir().unwrap();
    let fifo = mount.path().join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let grants = format!(
        "[[grants.fs]]\nhost_path = {:?}\nguest_path = \"/work\"\nmode = \"rw\"\n",
        mount.path().display().to_string()
    );
    let server = TestServer::start().await; // plugin deadline: 2 s
    server
        .install(
            &manifest("pipes", "1.0.0", "deploy-step", &grants),
            &guest(guests::PROBE),
        )
        .await;
    for op in ["fs-read", "fs-write"] {
        let started = std::time::Instant::now();
        let call = server.invoke(
            "pipes",
            json!({ "params": { "op": op, "path": "/work/pipe", "data": "x" } }),
        );
        let Ok((status, body)) =
            tokio::time::timeout(std::time::Duration::from_secs(10), call).await
        else {
            fifo_has_a_reader(&fifo); // lets the blocked open return
            panic!("{op} of a FIFO did not return within 10 s (the deadline is 2 s)");
        };
        let took = started.elapsed();
        // Checked first: opening the write end also frees a blocked reader.
        let left_blocked = fifo_has_a_reader(&fifo);
        assert_eq!(status, 200, "{op}: {body}");
        let got = body["result"]["outputs"]["result"]
            .as_str()
            .unwrap_or_default();
        assert!(got.starts_with("err:"), "{op}: {got}");
        assert!(
            took < std::time::Duration::from_millis(1_000),
            "{op} took {took:?}, the deadline is 2 s"
        );
        assert!(!left_blocked, "{op} left a thread in open()");
    }
    let got = probe(
        &server,
        "pipes",
        json!({ "op": "fs-read", "path": "/work/pipe" }),
    )
    .await;
    assert!(
        got.starts_with("err:InvalidInput") && got.contains("not a regular file"),
        "{got}"
    );
    // Regular files still work, and so does the server.
    assert_eq!(
        probe(
            &server,
            "pipes",
            json!({ "op": "fs-write", "path": "/work/a.txt", "data": "hi" })
        )
        .await,
        "ok:written"
    );
    assert_eq!(
        probe(
            &server,
            "pipes",
            json!({ "op": "fs-read", "path": "/work/a.txt" })
        )
        .await,
        "ok:hi"
    );
}

#[tokio::test]
async fn fs_grant_for_a_missing_directory_is_refused_at_load() {
    let server = TestServer::start().await;
    let grants = "[[grants.fs]]\nhost_path = \"/nonexistent/capstan\"\nguest_path = \"/x\"\n";
    let (status, body) = server
        .upload(
            &manifest("f", "1.0.0", "deploy-step", grants),
            &guest(guests::PROBE),
        )
        .await;
    capstan_tests::assert_error(status, &body, 422, "cannot open /nonexistent/capstan");
}

#[tokio::test]
async fn secrets_only_by_grant_and_redacted_from_output_and_audit() {
    let server = TestServer::start().await;
    let env = server.env();
    env.secrets
        .put(
            &env.store,
            "slack-webhook",
            "https://hooks.example/T000/very-secret-value",
        )
        .unwrap();
    env.secrets
        .put(&env.store, "db-password", "hunter2-hunter2")
        .unwrap();
    let grants = "[grants.secrets]\nnames = [\"slack-webhook\"]\n";
    server
        .install(
            &manifest("notifier", "1.0.0", "deploy-step", grants),
            &guest(guests::PROBE),
        )
        .await;

    let got = probe(
        &server,
        "notifier",
        json!({ "op": "secret", "name": "db-password" }),
    )
    .await;
    assert!(
        got.starts_with("err:Denied") && got.contains("not granted"),
        "{got}"
    );
    assert!(!got.contains("hunter2"));
    let got = probe(
        &server,
        "notifier",
        json!({ "op": "secret", "name": "nope" }),
    )
    .await;
    assert!(
        got.starts_with("err:Denied"),
        "ungranted names are denied before lookup: {got}"
    );

    // The value reaches the plugin, but not the caller: outputs are redacted.
    let (status, body) = server
        .invoke(
            "notifier",
            json!({ "params": { "op": "secret-echo", "name": "slack-webhook" } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let text = body.to_string();
    assert!(!text.contains("very-secret-value"), "secret leaked: {text}");
    assert_eq!(
        body["result"]["outputs"]["result"],
        "ok:the secret is [REDACTED]"
    );

    let records = audit(&server, "notifier", "secrets").await;
    assert!(
        records
            .iter()
            .any(|r| r.allowed && r.target == "slack-webhook" && r.outcome == "ok")
    );
    denied_record(&records, "db-password");
    assert!(
        records
            .iter()
            .all(|r| !format!("{r:?}").contains("very-secret-value"))
    );
    // At rest the value is encrypted: in no file of the data directory, the
    // database's WAL (where new rows are until a checkpoint) included.
    if capstan_tests::on_postgres() {
        // On PostgreSQL: in no column of the secrets table.
        let rows = server
            .env()
            .store
            .with(|c| c.rows("SELECT name, nonce, ciphertext FROM secrets", &[]))
            .unwrap();
        assert_eq!(rows.len(), 2);
        for r in rows {
            let bytes: Vec<u8> = r.get(2).unwrap();
            assert!(!String::from_utf8_lossy(&bytes).contains("very-secret-value"));
        }
        return;
    }
    let files = capstan_tests::files_at_rest(server.dir.path());
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"capstan.db") && names.contains(&"capstan.db-wal"),
        "{names:?}"
    );
    let needle = b"very-secret-value";
    for (name, bytes) in &files {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "secret plaintext in {name}"
        );
    }
}
