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
    /// The watched plugins directory; `<data_dir>/plugins` if unset.
    pub plugins_dir: Option<PathBuf>,
    /// Install the bundled example plugins into a fresh data directory.
    pub bundled_plugins: bool,
    /// Log as JSON lines instead of human-readable text.
    pub log_json: bool,
    /// Key that encrypts secrets at rest: 32 bytes, base64. If unset, one is
    /// generated into `<data_dir>/secrets.key`.
    pub secrets_key: Option<String>,
    /// The first admin API token. If unset and no token exists yet, one is
    /// generated and printed once at startup.
    pub admin_token: Option<String>,
    /// Kubernetes clusters plugins may be granted (`[[kube.clusters]]`).
    pub kube: KubeSection,
    /// Limits applied to plugins.
    pub limits: LimitsConfig,
    /// Limits at the HTTP edge.
    pub api: ApiConfig,
}

/// The `[kube]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubeSection {
    /// Clusters by name.
    pub clusters: Vec<crate::capabilities::kube::ClusterConfig>,
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
            plugins_dir: None,
            bundled_plugins: true,
            log_json: false,
            secrets_key: None,
            admin_token: None,
            kube: KubeSection::default(),
            limits: LimitsConfig::default(),
            api: ApiConfig::default(),
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
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl ServerConfig {
    /// Reads a TOML config file; unknown keys are an error.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<ServerConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }

    /// The plugins directory in effect.
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
