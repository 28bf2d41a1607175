//! Storage failures: a full disk gives a clear 507, leaves no temporary
//! files, loses nothing acknowledged, and the server keeps serving.
//! The data directory lives on a small tmpfs mounted for the test (the
//! tests run as root, as CI does).

use std::path::{Path, PathBuf};
use std::process::Command;

use capstan_tests::{TestServer, assert_error, guest, guests, manifest};
use serde_json::json;

/// A tmpfs of `mb` MiB, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mb: u32) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs as root): {status}"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a server thread still holding a file open must not leave the
        // mount behind (a plain umount then fails with "target is busy").
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system of `dir` until a write fails; returns the filler.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    // The last partial chunk may have fit: fill the remaining bytes too.
    while f.write_all(&[0u8]).is_ok() {}
    let _ = f.sync_all();
    path
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in walk(dir) {
        if entry
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
        {
            out.push(entry);
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn a_full_disk_is_a_clear_507_and_loses_nothing() {
    if capstan_tests::sqlite_only("a full data-directory disk") {
        return;
    }
    let fs = Tmpfs::mount(48);
    let data = tempfile::TempDir::new_in(fs.path()).unwrap();
    let data_path = data.path().to_path_buf();
    let server = TestServer::start_in(data, |_| {}).await;
    let probe = guest(guests::PROBE);
    server
        .install(&manifest("kept", "1.0.0", "deploy-step", ""), &probe)
        .await;

    let filler = fill(fs.path());
    // A new plugin's blob cannot be written: 507 with the reason.
    let (status, body) = server
        .upload(
            &manifest("new-one", "1.0.0", "deploy-step", ""),
            &fault_variant(),
        )
        .await;
    assert_error(status, &body, 507, "free space");
    assert!(
        temp_files(&data_path).is_empty(),
        "no .tmp-* files are left: {:?}",
        temp_files(&data_path)
    );
    // Everyone else is still served.
    let (status, body) = server.invoke("kept", json!({ "params": {} })).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.get("/v1/plugins").await;
    assert_eq!(status, 200);

    // With space again, the same upload succeeds, and what was acknowledged
    // before is still there after a restart.
    std::fs::remove_file(filler).unwrap();
    let (status, body) = server
        .upload(
            &manifest("new-one", "1.0.0", "deploy-step", ""),
            &fault_variant(),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let data = server.stop().await;
    let server = TestServer::start_in(data, |_| {}).await;
    for name in ["kept", "new-one"] {
        let (status, body) = server.get(&format!("/v1/plugins/{name}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["active_version"], "1.0.0", "{body}");
    }
    drop(server);
    drop(fs);
}

/// Another component than the probe (so its blob is new to the store).
fn fault_variant() -> Vec<u8> {
    guest(guests::FAULT_STEP)
}

#[tokio::test]
async fn a_locked_database_is_a_503_with_the_reason() {
    let server = TestServer::start().await;
    // Another writer holds the database (as a stuck process or a backup
    // tool might) for longer than the server's busy timeout.
    let lock = capstan_tests::DbLock::hold(&server, &["projects", "audit"]);
    let (status, body) = server
        .send(
            reqwest::Method::POST,
            "/v1/projects",
            Some(json!({ "name": "while-locked" })),
        )
        .await;
    // SQLite: "database is locked"; PostgreSQL: "lock timeout".
    assert_error(status, &body, 503, "lock");
    assert_eq!(body["error"]["code"], "storage_busy");
    lock.release();
    let (status, body) = server
        .send(
            reqwest::Method::POST,
            "/v1/projects",
            Some(json!({ "name": "while-locked" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// A plugin's kv call that waits on a locked database waits on a blocking
/// thread, not on the server's async workers: everyone else is served
/// meanwhile (this test's runtime has a single thread, so a blocked worker
/// would stall the whole server).
#[tokio::test]
async fn a_kv_call_waiting_on_a_locked_database_does_not_stall_the_server() {
    let server = TestServer::start().await;
    let grant = "[grants.kv]\nmax_bytes = 4096\nmax_value_bytes = 1024\n";
    server
        .install(
            &manifest("stateful", "1.0.0", "deploy-step", grant),
            &guest(guests::PROBE),
        )
        .await;
    let lock = capstan_tests::DbLock::hold(&server, &["kv"]);
    let (url, client, token) = (
        server.url.clone(),
        server.client.clone(),
        server.token.clone().unwrap(),
    );
    let kv_call = tokio::spawn(async move {
        client
            .post(format!("{url}/v1/plugins/stateful/invoke"))
            .bearer_auth(token)
            .json(&json!({ "params": { "op": "kv-set", "key": "k", "value": "v" } }))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    // The kv call cannot finish while the database is locked, yet the server
    // answers others.
    let (status, _) = server.get("/v1/plugins/stateful").await;
    assert_eq!(status, 200);
    assert!(
        !kv_call.is_finished(),
        "the server answered only after the kv call gave up: it blocked an async worker"
    );
    lock.release();
    let status = kv_call.await.unwrap().unwrap();
    assert_eq!(
        status, 200,
        "the kv call completes once the lock is gone (a call blocked inside the database runs past its deadline)"
    );
}
