//! The real `capstan` binary: first start with the bundled plugins, upload
//! and activate over HTTP, `kill -9`, restart, and find everything as it was.

use std::process::{Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "process-test-admin-token";

mod common;

use common::{Proc, client, free_port};

async fn start(data: &std::path::Path) -> Proc {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data)
        .env("CAPSTAN_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start capstan");
    let proc = Proc {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let client = client();
    for _ in 0..300 {
        if let Ok(r) = client.get(format!("{}/readyz", proc.url)).send().await
            && r.status() == 200
        {
            return proc;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("capstan did not become ready");
}

async fn json(rb: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let r = rb.bearer_auth(TOKEN).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test]
async fn kill_dash_nine_loses_nothing_committed() {
    let data = tempfile::tempdir().unwrap();
    let client = client();
    let mut proc = start(data.path()).await;

    let (status, list) = json(client.get(format!("{}/v1/plugins", proc.url))).await;
    assert_eq!(status, 200);
    let bundled = list["plugins"].as_array().unwrap().len();
    assert!(
        bundled >= 4,
        "the bundled example plugins are installed on first start: {list}"
    );

    // Upload 1.1.0 of the bundled deploy step (same component, new manifest).
    let (_, detail) = json(client.get(format!("{}/v1/plugins/render-deployment", proc.url))).await;
    let digest = detail["digest"].as_str().unwrap().to_string();
    let manifest = capstan::bundled::find("render-deployment")
        .unwrap()
        .manifest
        .replace("version = \"1.0.0\"", "version = \"1.1.0\"");
    let component = capstan::bundled::find("render-deployment")
        .unwrap()
        .component
        .to_vec();
    let form = reqwest::multipart::Form::new()
        .text("manifest", manifest)
        .part("component", reqwest::multipart::Part::bytes(component));
    let (status, body) = json(
        client
            .post(format!("{}/v1/plugins", proc.url))
            .multipart(form),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["digest"], digest.as_str());

    // The answer means it is committed: kill -9 right away.
    proc.child.kill().unwrap();
    proc.child.wait().unwrap();

    let proc = start(data.path()).await;
    let (_, list) = json(client.get(format!("{}/v1/plugins", proc.url))).await;
    assert_eq!(list["plugins"].as_array().unwrap().len(), bundled, "{list}");
    let (_, detail) = json(client.get(format!("{}/v1/plugins/render-deployment", proc.url))).await;
    assert_eq!(detail["active_version"], "1.1.0");
    let (status, body) = json(
        client
            .post(format!("{}/v1/plugins/render-deployment/invoke", proc.url))
            .json(&serde_json::json!({ "params": { "name": "web", "image": "nginx:1.27.0" } })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["invocation"]["version"], "1.1.0");
    // Bundled plugins deleted by the operator stay deleted across restarts.
    let (status, _) = json(client.delete(format!("{}/v1/plugins/http-probe", proc.url))).await;
    assert_eq!(status, 204);
    drop(proc);
    let proc = start(data.path()).await;
    let (status, _) = json(client.get(format!("{}/v1/plugins/http-probe", proc.url))).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn sigterm_drains_then_shuts_down_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let mut proc = start(data.path()).await;
    let pid = proc.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    // While draining, readiness fails but requests are still served.
    let client = client();
    let mut drained = false;
    for _ in 0..100 {
        let r = client.get(format!("{}/readyz", proc.url)).send().await;
        if let Ok(r) = r
            && r.status() == 503
        {
            assert_eq!(r.text().await.unwrap(), "draining");
            let (status, _) = json(client.get(format!("{}/v1/plugins", proc.url))).await;
            assert_eq!(status, 200, "still serving while draining");
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(drained, "/readyz never reported draining");
    let mut exited = None;
    for _ in 0..100 {
        if let Some(s) = proc.child.try_wait().unwrap() {
            exited = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exited = exited.expect("capstan exits after SIGTERM");
    assert!(exited.success(), "exit status {exited}");
}

/// The plugin author's loop: scaffold, build for wasm32-wasip2, drop into the
/// plugins directory of a running server, invoke.
#[tokio::test]
async fn scaffolded_plugin_builds_and_hot_loads() {
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["plugin", "new", "deploy-step", "hello-step", "--dir"])
        .arg(work.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crate_dir = work.path().join("hello-step");
    // Build as an author would; share this workspace's registry cache.
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--target", "wasm32-wasip2", "--release", "--quiet"])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", work.path().join("target"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .unwrap();
    assert!(status.success(), "the scaffolded plugin builds");
    let wasm = work
        .path()
        .join("target/wasm32-wasip2/release/hello_step.wasm");

    let data = tempfile::tempdir().unwrap();
    let proc = start(data.path()).await;
    let plugins = data.path().join("plugins");
    std::fs::copy(&wasm, plugins.join("hello_step.wasm")).unwrap();
    std::fs::copy(
        crate_dir.join("capstan.toml"),
        plugins.join("hello-step.toml"),
    )
    .unwrap();
    let client = client();
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        let (status, body) = json(
            client
                .post(format!("{}/v1/plugins/hello-step/invoke", proc.url))
                .json(&serde_json::json!({ "params": { "who": "world" } })),
        )
        .await;
        if status == 200 {
            last = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["result"]["outcome"], "succeeded", "{last}");
    assert_eq!(last["result"]["outputs"]["echo"], r#"{"who":"world"}"#);
    // The directory install is on the record.
    let (_, audit) = json(client.get(format!(
        "{}/v1/audit?capability=change&limit=1000",
        proc.url
    )))
    .await;
    assert!(
        audit["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["actor"] == "directory"
                && r["target"] == "hello-step"
                && r["detail"]["source"] == "directory"),
        "{audit}"
    );
}

/// Runs the `capstan` CLI against `url` with the admin token; returns stdout.
fn cli(url: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(args)
        .args(["--server", url])
        .env("CAPSTAN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "capstan {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Projects, ceilings, project tokens and approvals from the CLI; bundled
/// installs are on the record.
#[tokio::test]
async fn trust_model_from_the_cli() {
    let data = tempfile::tempdir().unwrap();
    let proc = start(data.path()).await;
    let client = client();
    let (_, audit) = json(client.get(format!(
        "{}/v1/audit?capability=change&limit=1000",
        proc.url
    )))
    .await;
    let bundled: Vec<&str> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["actor"] == "bundled" && r["verb"] == "plugin.upload")
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    assert!(bundled.contains(&"render-deployment"), "{audit}");

    cli(
        &proc.url,
        &["project", "create", "team-a", "--description", "Team A"],
    );
    let file = data.path().join("ceiling.toml");
    std::fs::write(&file, "secrets = [\"team-a-*\"]\nkv_max_bytes = 4096\n").unwrap();
    cli(
        &proc.url,
        &["ceiling", "set", "team-a", "--file", file.to_str().unwrap()],
    );
    let listed = cli(&proc.url, &["ceiling", "list"]);
    assert!(listed.contains("team-a-*"), "{listed}");
    let created = cli(
        &proc.url,
        &["token", "create", "op-a", "--project", "team-a=operator"],
    );
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let op = created["token"].as_str().unwrap().to_string();
    assert_eq!(created["projects"]["team-a"], "operator");
    assert_eq!(created["role"], serde_json::Value::Null);

    // The operator publishes a version reaching a secret outside the ceiling.
    let (manifest, component) = {
        let b = capstan::bundled::find("render-deployment").unwrap();
        (b.manifest.to_string(), b.component.to_vec())
    };
    let manifest = manifest.replace(
        "name = \"render-deployment\"",
        "name = \"team-step\"\nproject = \"team-a\"",
    ) + "\n[grants.secrets]\nnames = [\"prod-db\"]\n";
    let form = reqwest::multipart::Form::new()
        .text("manifest", manifest)
        .part("component", reqwest::multipart::Part::bytes(component));
    let r = client
        .post(format!("{}/v1/plugins", proc.url))
        .bearer_auth(&op)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let held: serde_json::Value = r.json().await.unwrap();
    let id = held["held"]["approval"].as_str().unwrap().to_string();
    let pending = cli(&proc.url, &["approval", "list"]);
    assert!(
        pending.contains(&id) && pending.contains("prod-db"),
        "{pending}"
    );
    let approved = cli(
        &proc.url,
        &["approval", "approve", &id, "--comment", "one-off"],
    );
    assert!(approved.contains("\"approved\""), "{approved}");
    let (_, detail) = json(client.get(format!("{}/v1/plugins/team-step", proc.url))).await;
    assert_eq!(detail["active_version"], "1.0.0", "{detail}");
    assert_eq!(detail["project"], "team-a");
}

/// `capstan secrets rotate-key` runs offline: refused while a server holds
/// the data directory, then re-encrypts under a new key file that the next
/// server start accepts; the rotation is in the audit log.
#[tokio::test]
async fn rotate_key_is_offline_and_the_server_starts_on_the_new_key() {
    use std::os::unix::fs::PermissionsExt;
    let data = tempfile::tempdir().unwrap();
    let client = client();
    let mut proc = start(data.path()).await;
    let (status, _) = json(
        client
            .put(format!("{}/v1/secrets/db-url", proc.url))
            .json(&serde_json::json!({ "value": "postgres://secret" })),
    )
    .await;
    assert_eq!(status, 204);
    let key_file = data.path().join("secrets.key");
    let before = std::fs::read_to_string(&key_file).unwrap();
    let rotate = || {
        Command::new(env!("CARGO_BIN_EXE_capstan"))
            .args(["secrets", "rotate-key", "--data-dir"])
            .arg(data.path())
            .env_remove("CAPSTAN_SECRETS_KEY")
            .env_remove("CAPSTAN_SECRETS_KEY_FILE")
            .env_remove("CAPSTAN_CONFIG")
            .output()
            .unwrap()
    };
    let out = rotate();
    assert!(!out.status.success(), "refused while the server runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("in use by another capstan process"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), before);

    proc.child.kill().unwrap();
    proc.child.wait().unwrap();
    let out = rotate();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("re-encrypted 1 secrets"), "{stdout}");
    let after = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(after, before);
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!data.path().join("secrets.key.new").exists());

    // The server checks the key against the database at start: it would
    // refuse a key that does not match.
    let proc = start(data.path()).await;
    let (status, body) =
        json(client.get(format!("{}/v1/audit?capability=secrets", proc.url))).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.to_string().contains("secrets.rotate-key"),
        "the rotation is audited: {body}"
    );
}
