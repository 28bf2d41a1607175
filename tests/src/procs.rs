//! The real `capstan` binary as a child process: for what only a separate
//! process can show (kill -9, several replicas).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The admin token every [`Capstan`] process is started with.
pub const TOKEN: &str = "process-test-admin-token-0123456789";

/// One `capstan serve` process with its own data directory; killed on drop.
pub struct Capstan {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data directory (kept across [`Capstan::kill_9`] for a restart).
    pub dir: Option<tempfile::TempDir>,
}

impl Capstan {
    /// Starts `capstan serve --no-bundled` on a free port, on `dir` (a new
    /// one if `None`), with `env` added (e.g. `CAPSTAN_DATABASE`). Logs go
    /// to `<dir>/capstan.log`.
    pub fn start(dir: Option<tempfile::TempDir>, env: &[(&str, &str)]) -> Capstan {
        let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("capstan.log"))
            .unwrap();
        let mut cmd = Command::new(capstan_bin());
        cmd.args(["serve", "--no-bundled", "--listen", &addr.to_string()])
            .arg("--data-dir")
            .arg(dir.path())
            .env("CAPSTAN_ADMIN_TOKEN", TOKEN)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Capstan {
            child: cmd.spawn().expect("start capstan"),
            addr,
            dir: Some(dir),
        }
    }

    /// The process id (for a profiler).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until `/readyz` answers 200 (60 s at most).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = crate::client()
                .get(format!("{}/readyz", self.url()))
                .send()
                .await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "capstan on {} never ready: {}",
                self.addr,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET path` with the admin token, as JSON.
    pub async fn get(&self, path: &str) -> serde_json::Value {
        get_json(&self.url(), path).await
    }

    /// `method path` with the admin token and an optional JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut rb = crate::client()
            .request(method, format!("{}{path}", self.url()))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        crate::status_json(rb.send().await.expect("request")).await
    }

    /// Uploads a plugin version (multipart: manifest + component).
    pub async fn upload(&self, manifest: &str, component: &[u8]) -> (u16, serde_json::Value) {
        let form = reqwest::multipart::Form::new()
            .text("manifest", manifest.to_string())
            .part(
                "component",
                reqwest::multipart::Part::bytes(component.to_vec()),
            );
        let r = crate::client()
            .post(format!("{}/v1/plugins", self.url()))
            .bearer_auth(TOKEN)
            .multipart(form)
            .send()
            .await
            .expect("upload");
        crate::status_json(r).await
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.path().join("capstan.log")).ok())
            .unwrap_or_default()
    }

    /// `kill -9`; returns the data directory for a restart.
    pub fn kill_9(&mut self) -> tempfile::TempDir {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-KILL", &pid])
                .status()
                .unwrap()
                .success()
        );
        let _ = self.child.wait();
        self.dir.take().expect("running")
    }
}

impl Drop for Capstan {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Uploads the test guest `pipeline-step` as deploy-step `step` (with a kv
/// grant: it records its calls there) to the server at `base`, then stores
/// pipeline `name` from `yaml`; asserts both succeed.
pub async fn step_and_pipeline(base: &str, name: &str, yaml: &str) {
    let c = crate::client();
    let kv = "[grants.kv]\nmax_bytes = 65536\nmax_value_bytes = 1024\n";
    let form = reqwest::multipart::Form::new()
        .text(
            "manifest",
            crate::manifest("step", "1.0.0", "deploy-step", kv),
        )
        .part(
            "component",
            reqwest::multipart::Part::bytes(crate::guest(crate::guests::PIPELINE_STEP)),
        );
    let r = c
        .post(format!("{base}/v1/plugins"))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r = c
        .put(format!("{base}/v1/pipelines/{name}"))
        .bearer_auth(TOKEN)
        .body(yaml.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

/// `GET base+path` with the admin token, as JSON.
pub async fn get_json(base: &str, path: &str) -> serde_json::Value {
    crate::client()
        .get(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `capstan` binary next to this test's executable (built by `cargo
/// test --workspace`; built here if a test binary runs alone, in release
/// for `cargo bench`).
pub fn capstan_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("capstan");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut args = vec!["build", "-p", "capstan", "--bin", "capstan"];
        if profile_dir.ends_with("release") {
            args.push("--release");
        }
        let ok = Command::new(cargo).args(&args).status().unwrap().success();
        assert!(ok, "building the capstan binary");
    }
    bin
}
