//! Server configuration: embedded defaults, optionally overridden by a TOML
//! file and then by command-line flags / environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::api::ApiLimits;
use crate::runtime::RuntimeConfig;

/// Everything `capstan serve` needs. Every field has a working default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the API listens on.
    pub listen: SocketAddr,
    /// Where the database, blobs and compiled artifacts live.
    pub data_dir: PathBuf,
    /// The database: unset or `sqlite` for `<data_dir>/capstan.db`, or a
    /// `postgres://user:password@host:port/db` URL that several replicas
    /// share (blobs then live in the database too; `data_dir` keeps only
    /// this replica's compiled-artifact cache and secrets key file).
    pub database: Option<String>,
    /// The watched plugins directory; `<data_dir>/plugins` if unset.
    pub plugins_dir: Option<PathBuf>,
    /// The watched pipelines directory (`*.yaml`); `<data_dir>/pipelines` if unset.
    pub pipelines_dir: Option<PathBuf>,
    /// Pipeline runs started (not finished) at once, over every pipeline
    /// and replica; more wait, queued, oldest first. Default 64.
    pub pipelines_max_running: i64,
    /// Install the bundled example plugins into a fresh data directory.
    pub bundled_plugins: bool,
    /// Log as JSON lines instead of human-readable text.
    pub log_json: bool,
    /// Key that encrypts secrets at rest: 32 bytes, base64. Unset: the key
    /// file is used.
    pub secrets_key: Option<String>,
    /// File holding the secrets key (base64); default `<data_dir>/secrets.key`,
    /// generated (mode 0600) only if missing while no secret is stored. Keep
    /// it outside the data directory so a copy of the data is not enough.
    pub secrets_key_file: Option<PathBuf>,
    /// The first admin API token. If unset and no token exists yet, one is
    /// generated and printed once at startup.
    pub admin_token: Option<String>,
    /// Kubernetes clusters plugins may be granted (`[[kube.clusters]]`).
    pub kube: KubeSection,
    /// Plugins' outbound HTTP (`[http]`).
    pub http: HttpSection,
    /// The provisioning engine (`[provisioning]`).
    pub provisioning: ProvisioningConfig,
    /// Limits applied to plugins.
    pub limits: LimitsConfig,
    /// Limits at the HTTP edge.
    pub api: ApiConfig,
    /// Default grant ceilings (`[[ceilings]]`, see `trust::ceilings`):
    /// stored on start where no ceiling for the same project and plugin is
    /// stored yet, so changes made through the API win.
    pub ceilings: Vec<crate::trust::ceilings::CeilingEntry>,
    /// Audit log retention.
    pub audit: AuditConfig,
    /// Notification channels and delivery (`[notify]`, `[[notify.channels]]`).
    pub notify: NotifySection,
    /// When metrics-source plugins run (`[metrics]`).
    pub metrics: MetricsConfig,
    /// The alerts engine: routes, Alertmanager for silences, retention, limits.
    pub alerts: crate::alerts::AlertsConfig,
}

/// The `[notify]` section: channels (stored on start, replacing stored
/// ones of the same name) and how deliveries are retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifySection {
    /// Channels (`[[notify.channels]]`, the same fields as `PUT /v1/notify/channels/{name}`).
    pub channels: Vec<capstan_notify::ChannelSpec>,
    /// First retry delay after a retryable refusal, ms (doubling, with jitter).
    pub retry_min_ms: u64,
    /// Longest retry delay, ms.
    pub retry_max_ms: u64,
    /// Attempts before a delivery fails for good.
    pub max_attempts: u32,
    /// How often the worker looks for due deliveries when nothing wakes it, ms.
    pub poll_ms: u64,
    /// Timeout of one send, ms.
    pub timeout_ms: u64,
    /// Days finished deliveries and their receipts are kept (0: forever).
    pub retention_days: u64,
}

impl Default for NotifySection {
    fn default() -> Self {
        let d = capstan_notify::NotifyConfig::default();
        NotifySection {
            channels: Vec::new(),
            retry_min_ms: d.retry_min.as_millis() as u64,
            retry_max_ms: d.retry_max.as_millis() as u64,
            max_attempts: d.max_attempts,
            poll_ms: d.poll.as_millis() as u64,
            timeout_ms: d.timeout.as_millis() as u64,
            retention_days: d.retention.as_secs() / 86_400,
        }
    }
}

/// The `[metrics]` section: defaults for metrics sources; a plugin's own
/// `[metrics]` in its manifest wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `schedule` (run on a timer, serve the last good values) or `scrape`
    /// (run during each scrape).
    pub mode: crate::manifest::SourceMode,
    /// Time between runs, milliseconds (default 30 s).
    pub interval_ms: u64,
    /// Longest a run may take, milliseconds (default 10 s).
    pub timeout_ms: u64,
    /// Taken off `X-Prometheus-Scrape-Timeout-Seconds` for scrape-mode runs (default 500).
    pub scrape_offset_ms: u64,
    /// Scheduled runs at once (default 16); more due sources wait their turn.
    pub max_parallel: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        let d = crate::sources::SourceDefaults::default();
        MetricsConfig {
            mode: d.mode,
            interval_ms: d.interval.as_millis() as u64,
            timeout_ms: d.timeout.as_millis() as u64,
            scrape_offset_ms: d.scrape_offset.as_millis() as u64,
            max_parallel: d.max_parallel,
        }
    }
}

impl NotifySection {
    /// The notifier's settings for replica `replica`.
    pub fn config(&self, replica: String) -> capstan_notify::NotifyConfig {
        use std::time::Duration;
        capstan_notify::NotifyConfig {
            replica,
            poll: Duration::from_millis(self.poll_ms.max(10)),
            retry_min: Duration::from_millis(self.retry_min_ms.max(1)),
            retry_max: Duration::from_millis(self.retry_max_ms.max(self.retry_min_ms).max(1)),
            max_attempts: self.max_attempts.max(1),
            timeout: Duration::from_millis(self.timeout_ms.max(100)),
            retention: Duration::from_secs(self.retention_days.saturating_mul(86_400)),
            ..Default::default()
        }
    }
}

impl MetricsConfig {
    /// The engine's defaults this section describes.
    pub fn defaults(&self) -> crate::sources::SourceDefaults {
        use std::time::Duration;
        crate::sources::SourceDefaults {
            mode: self.mode,
            interval: Duration::from_millis(self.interval_ms.max(100)),
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
            scrape_offset: Duration::from_millis(self.scrape_offset_ms),
            max_parallel: self.max_parallel.max(1),
            ..Default::default()
        }
    }
}

/// The `[audit]` section: how long audit records are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Records older than this many days are deleted; 0 keeps them forever.
    pub max_age_days: u64,
    /// At most this many records are kept (the newest); 0 means no limit.
    pub max_rows: u64,
    /// How often retention runs (also once at startup), seconds.
    pub retention_interval_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        let r = crate::capabilities::audit::Retention::default();
        AuditConfig {
            max_age_days: r.max_age.map_or(0, |d| d.as_secs() / 86_400),
            max_rows: r.max_rows.unwrap_or(0),
            retention_interval_secs: r.interval.as_secs(),
        }
    }
}

impl AuditConfig {
    /// The retention policy this section describes.
    pub fn retention(&self) -> crate::capabilities::audit::Retention {
        crate::capabilities::audit::Retention {
            max_age: (self.max_age_days > 0)
                .then(|| std::time::Duration::from_secs(self.max_age_days * 86_400)),
            max_rows: (self.max_rows > 0).then_some(self.max_rows),
            interval: std::time::Duration::from_secs(self.retention_interval_secs.max(1)),
        }
    }
}

/// The `[kube]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubeSection {
    /// Clusters by name.
    pub clusters: Vec<crate::capabilities::kube::ClusterConfig>,
}

/// The `[http]` section: what the server's TLS clients trust.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// A PEM file of CA certificates trusted besides the public roots (a
    /// private CA of internal services), by plugins' https requests and by
    /// notification channels (email over STARTTLS or implicit TLS, https
    /// webhooks). Read at startup; a file without a usable certificate is a
    /// startup error.
    pub ca_file: Option<PathBuf>,
}

/// The `[provisioning]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisioningConfig {
    /// Clusters whose plans need an approval (project admin) before apply.
    pub approval_clusters: Vec<String>,
    /// Approvals a plan needs there.
    pub approvals_required: u32,
    /// How long one wave may take to become ready, and how long destroy
    /// waits for Namespace termination, seconds.
    pub wait_timeout_secs: u64,
    /// How often applied instances are re-planned for drift, seconds (0: never).
    pub drift_interval_secs: u64,
}

impl Default for ProvisioningConfig {
    fn default() -> Self {
        ProvisioningConfig {
            approval_clusters: vec!["prod".into()],
            approvals_required: 1,
            wait_timeout_secs: 60,
            drift_interval_secs: 300,
        }
    }
}

/// Runtime limits (see [`RuntimeConfig`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Memory cap when a manifest sets none, MiB.
    pub default_memory_mb: u64,
    /// Deadline when a manifest sets none, ms.
    pub default_deadline_ms: u64,
    /// Largest memory any plugin may have, MiB.
    pub max_memory_mb: u64,
    /// Largest result, bytes.
    pub max_result_bytes: usize,
    /// Invocations that may run at once.
    pub max_concurrent: usize,
    /// Invocations of one plugin that may run at once, unless its manifest
    /// says otherwise (`[limits] max_concurrent`); a quarter of
    /// `max_concurrent` (at least 1) if unset.
    pub max_concurrent_per_plugin: Option<usize>,
    /// How long a call may wait for a slot before 503, ms.
    pub queue_wait_ms: u64,
}

/// The `[api]` section: the HTTP edge (TLS, limits, public metrics).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Largest upload, bytes.
    pub max_upload_bytes: usize,
    /// Largest other request body, bytes.
    pub max_body_bytes: usize,
    /// A request not answered within this many ms (its body included) gets
    /// 408; invocations and uploads are exempt; 0 disables.
    pub request_timeout_ms: u64,
    /// Serve `/metrics` without a token (default true, so Prometheus can
    /// scrape without credentials). When false it needs a `viewer` token.
    pub metrics_public: bool,
    /// Requests per second per API token, on average; 0 disables. Admin
    /// tokens are exempt. Over the limit: 429 with `Retry-After`.
    pub rate_limit_per_sec: u32,
    /// Requests a token may burst above `rate_limit_per_sec`.
    pub rate_limit_burst: u32,
    /// Requests handled at once; more get 503 with `Retry-After`; 0 disables.
    pub max_in_flight_requests: usize,
    /// Connections open at once; at the limit the listener stops accepting
    /// until one closes; 0 disables.
    pub max_connections: usize,
    /// On SIGTERM, how long `/readyz` answers 503 `draining` while requests
    /// are still served, before the listener closes (so that a load
    /// balancer's health checks take the replica out first), ms. A second
    /// signal skips the wait.
    pub drain_delay_ms: u64,
    /// PEM certificate chain (leaf first); with `tls_key`, the API serves HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            data_dir: PathBuf::from("capstan-data"),
            database: None,
            plugins_dir: None,
            pipelines_dir: None,
            pipelines_max_running: 64,
            bundled_plugins: true,
            log_json: false,
            secrets_key: None,
            secrets_key_file: None,
            admin_token: None,
            kube: KubeSection::default(),
            http: HttpSection::default(),
            provisioning: ProvisioningConfig::default(),
            limits: LimitsConfig::default(),
            api: ApiConfig::default(),
            ceilings: Vec::new(),
            audit: AuditConfig::default(),
            notify: NotifySection::default(),
            metrics: MetricsConfig::default(),
            alerts: Default::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let r = RuntimeConfig::default();
        LimitsConfig {
            default_memory_mb: r.default_memory_mb,
            default_deadline_ms: r.default_deadline_ms,
            max_memory_mb: r.max_memory_mb,
            max_result_bytes: r.max_result_bytes,
            max_concurrent: r.max_concurrent,
            max_concurrent_per_plugin: None,
            queue_wait_ms: r.queue_wait_ms,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        let a = ApiLimits::default();
        ApiConfig {
            max_upload_bytes: a.max_upload_bytes,
            max_body_bytes: a.max_body_bytes,
            request_timeout_ms: a.request_timeout.as_millis() as u64,
            metrics_public: true,
            rate_limit_per_sec: a.rate_limit_per_sec,
            rate_limit_burst: a.rate_limit_burst,
            max_in_flight_requests: a.max_in_flight_requests,
            max_connections: a.max_connections,
            drain_delay_ms: 2000,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl ServerConfig {
    /// Opens the store: the data directory, with the configured database.
    pub fn open_store(&self) -> anyhow::Result<crate::store::Store> {
        let db = crate::store::sql::Database::parse(
            self.database.as_deref().unwrap_or_default(),
            &self.data_dir,
        )?;
        tracing::info!(database = %db, "opening the store");
        Ok(crate::store::Store::open_with(&self.data_dir, db)?)
    }

    /// Reads a TOML config file; unknown keys are an error.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<ServerConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }

    /// Checks what parsing cannot: the concurrency limits' ranges.
    pub fn validate(&self) -> anyhow::Result<()> {
        for r in &self.alerts.routes {
            r.check()
                .map_err(|e| anyhow::anyhow!("alerts.routes: {e}"))?;
        }
        let l = &self.limits;
        if l.max_concurrent == 0 {
            anyhow::bail!("limits.max_concurrent must be at least 1");
        }
        if let Some(n) = l.max_concurrent_per_plugin
            && !(1..=l.max_concurrent).contains(&n)
        {
            anyhow::bail!(
                "limits.max_concurrent_per_plugin is {n}, outside 1..={} (limits.max_concurrent)",
                l.max_concurrent
            );
        }
        for c in &self.notify.channels {
            c.validate()
                .map_err(|e| anyhow::anyhow!("notify.channels: {e}"))?;
        }
        Ok(())
    }

    /// The plugins directory in effect.
    pub fn pipelines_dir(&self) -> PathBuf {
        self.pipelines_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("pipelines"))
    }

    /// The watched plugins directory.
    pub fn plugins_dir(&self) -> PathBuf {
        self.plugins_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("plugins"))
    }

    /// The runtime settings these limits describe.
    pub fn runtime(&self) -> RuntimeConfig {
        let l = &self.limits;
        RuntimeConfig {
            default_memory_mb: l.default_memory_mb,
            default_deadline_ms: l.default_deadline_ms,
            max_result_bytes: l.max_result_bytes,
            pool_instances: (l.max_concurrent as u32 + 16).max(32),
            max_memory_mb: l.max_memory_mb,
            max_concurrent: l.max_concurrent,
            max_concurrent_per_plugin: l
                .max_concurrent_per_plugin
                .unwrap_or_else(|| crate::runtime::default_share(l.max_concurrent)),
            queue_wait_ms: l.queue_wait_ms,
        }
    }

    /// The HTTP edge limits.
    pub fn api_limits(&self) -> ApiLimits {
        ApiLimits {
            max_upload_bytes: self.api.max_upload_bytes,
            max_body_bytes: self.api.max_body_bytes,
            request_timeout: std::time::Duration::from_millis(self.api.request_timeout_ms),
            rate_limit_per_sec: self.api.rate_limit_per_sec,
            rate_limit_burst: self.api.rate_limit_burst,
            max_in_flight_requests: self.api.max_in_flight_requests,
            max_connections: self.api.max_connections,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<ServerConfig> {
        let c: ServerConfig = toml::from_str(text)?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn per_plugin_share_defaults_to_a_quarter_of_the_server_limit() {
        assert_eq!(
            ServerConfig::default().runtime().max_concurrent_per_plugin,
            16
        );
        let c = parse("[limits]\nmax_concurrent = 8").unwrap();
        assert_eq!(c.runtime().max_concurrent_per_plugin, 2);
        let c = parse("[limits]\nmax_concurrent = 2").unwrap();
        assert_eq!(c.runtime().max_concurrent_per_plugin, 1);
        let c = parse("[limits]\nmax_concurrent = 8\nmax_concurrent_per_plugin = 8").unwrap();
        assert_eq!(c.runtime().max_concurrent_per_plugin, 8);
    }

    #[test]
    fn per_plugin_share_outside_its_range_is_refused() {
        let e = parse("[limits]\nmax_concurrent = 8\nmax_concurrent_per_plugin = 9")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_concurrent_per_plugin is 9, outside 1..=8"),
            "{e}"
        );
        let e = parse("[limits]\nmax_concurrent_per_plugin = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside 1..=64"), "{e}");
        let e = parse("[limits]\nmax_concurrent = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_concurrent must be at least 1"), "{e}");
    }
}
