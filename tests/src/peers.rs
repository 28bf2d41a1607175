//! Real Prometheus and Alertmanager (Debian packages `prometheus`,
//! `prometheus-alertmanager`) started on loopback for a test and killed on
//! drop; HAProxy (`haproxy`) in front of replicas is in [`crate::haproxy`].

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

pub use crate::haproxy::{HaproxyPeer, ServerState, haproxy};

/// A peer process with its own temporary directory.
pub struct Peer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn binary(name: &str) -> Result<&'static str> {
    let path: &'static str = match name {
        "prometheus" => "/usr/bin/prometheus",
        _ => "/usr/bin/prometheus-alertmanager",
    };
    if !Path::new(path).exists() {
        bail!(
            "{path} is missing: run `bash tests/run.sh` (it installs Debian's prometheus and prometheus-alertmanager)"
        );
    }
    Ok(path)
}

impl Peer {
    /// The last lines of the peer's own log (its stderr), for a failure message.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self._dir.path().join("peer.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// Waits for `path` to answer 2xx; `Ok(false)` if the process exited first
/// (e.g. its port was taken between `free_port` and its bind).
async fn wait_ready(peer: &mut Peer, path: &str) -> Result<bool> {
    for _ in 0..300 {
        if peer.child.try_wait()?.is_some() {
            return Ok(false);
        }
        if let Ok(r) = crate::client()
            .get(format!("{}{path}", peer.url))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "{}{path} did not become ready within 30 s; its log:\n{}",
        peer.url,
        peer.log_tail()
    )
}

/// Writes `config` as `file` (and `extra_files`) in a fresh directory,
/// starts `bin` with the config, storage and listen flags plus `extra`, and
/// waits for `/-/ready`; on another port if the process exits first, unless
/// the caller fixed the `port`.
async fn start(
    bin: &str,
    (file, config): (&str, String),
    extra_files: &[(&str, &str)],
    storage_flag: &str,
    extra: &[&str],
    port: Option<u16>,
) -> Result<Peer> {
    let attempts = if port.is_some() { 1 } else { 3 };
    for _attempt in 0..attempts {
        let dir = tempfile::tempdir()?;
        let port = port.unwrap_or_else(free_port);
        std::fs::write(dir.path().join(file), &config)?;
        for (name, text) in extra_files {
            std::fs::write(dir.path().join(name), text)?;
        }
        let child = Command::new(bin)
            .arg(format!("--config.file={}", dir.path().join(file).display()))
            .arg(format!(
                "{storage_flag}={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("peer.log"))?)
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let mut peer = Peer {
            url: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        };
        if wait_ready(&mut peer, "/-/ready").await? {
            return Ok(peer);
        }
        eprintln!("{bin} exited at startup; its log:\n{}", peer.log_tail());
    }
    bail!("{bin} exited at startup ({attempts} attempt(s))")
}

/// Prometheus scraping `target` (`host:port`) every second, with an
/// optional bearer token.
pub async fn prometheus(target: &str, token: Option<&str>) -> Result<Peer> {
    let bin = binary("prometheus")?;
    let auth = token
        .map(|t| format!("    authorization:\n      credentials: {t}\n"))
        .unwrap_or_default();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: capstan\n    metrics_path: /metrics\n{auth}    static_configs:\n      - targets: ['{target}']\n"
    );
    start(
        bin,
        ("prometheus.yml", config),
        &[],
        "--storage.tsdb.path",
        &[],
        None,
    )
    .await
}

/// Prometheus scraping `target` (job `web`) every second and evaluating
/// `rules` (a rules file's YAML) every second, sending alerts to each
/// Alertmanager of `ams` (`host:port`).
pub async fn prometheus_alerting(target: &str, ams: &[&str], rules: &str) -> Result<Peer> {
    let bin = binary("prometheus")?;
    let ams = ams
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [rules.yml]\nalerting:\n  alertmanagers:\n    - static_configs: [{{targets: [{ams}]}}]\nscrape_configs:\n  - job_name: web\n    static_configs: [{{targets: ['{target}']}}]\n"
    );
    start(
        bin,
        ("prometheus.yml", config),
        &[("rules.yml", rules)],
        "--storage.tsdb.path",
        &[],
        None,
    )
    .await
}

/// Alertmanager sending every alert group to `webhook` (with a bearer token),
/// grouping fast (1 s) as the shared notes recommend for tests. Without
/// gossip (`--cluster.listen-address=`): two of them are an HA pair that
/// cannot see each other, and each delivers every group itself.
pub async fn alertmanager(webhook: &str, token: Option<&str>) -> Result<Peer> {
    alertmanager_on(None, webhook, token).await
}

/// [`alertmanager`] on a port the caller picked (e.g. because Capstan's
/// config names it before the Alertmanager can start).
pub async fn alertmanager_on(
    port: Option<u16>,
    webhook: &str,
    token: Option<&str>,
) -> Result<Peer> {
    let bin = binary("alertmanager")?;
    let auth = token
        .map(|t| {
            format!(
                "        http_config:\n          authorization:\n            credentials: {t}\n"
            )
        })
        .unwrap_or_default();
    let config = format!(
        "route:\n  receiver: capstan\n  group_by: ['alertname']\n  group_wait: 1s\n  group_interval: 2s\n  repeat_interval: 1h\nreceivers:\n  - name: capstan\n    webhook_configs:\n      - url: '{webhook}'\n        send_resolved: true\n{auth}"
    );
    start(
        bin,
        ("alertmanager.yml", config),
        &[],
        "--storage.path",
        &["--cluster.listen-address="],
        port,
    )
    .await
}
