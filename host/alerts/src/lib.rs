//! Alerts: from an Alertmanager webhook to the actions of alert-handler
//! plugins, executed on the host and recorded.
//!
//! * [`model`]: the v4 webhook payload; [`matchers`]: Alertmanager's
//!   matcher syntax; [`routes`]: routes, `continue` and mute windows.
//! * [`store`]: the tables (migration `V13__alerts`). A delivery is stored
//!   in one transaction before it is answered; each `(group key,
//!   fingerprint, status, startsAt)` is a unique row, so HA copies and
//!   resends are recognised in the database, on every replica.
//! * [`engine`]: receives deliveries, and a worker per shard (claimed
//!   through a lease, so one replica handles a group key at a time, in
//!   order) routes new alerts to handler plugins and carries out their
//!   actions: `notify` through a [`Notifier`], `run-pipeline` through a
//!   [`PipelineTrigger`] (both provided by the binary), `silence` against
//!   Alertmanager's API, `kube` through the kube capability under the
//!   handler's own grants.
//!
//! Depends on `capstan-registry`, `capstan-runtime` and `capstan-store`;
//! nothing here knows HTTP serving (the API module is in `capstan-api`).

pub mod engine;
pub mod matchers;
mod metrics;
pub mod model;
pub mod routes;
pub mod store;

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use serde::Deserialize;

pub use engine::Engine;
pub use metrics::AlertMetrics;

/// Why an alerts operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    /// The request is malformed (a 4xx: Alertmanager will not resend).
    #[error("{0}")]
    Invalid(String),
    /// The caller lacks the role.
    #[error("{0}")]
    Forbidden(String),
    /// No such group or route.
    #[error("{0}")]
    NotFound(String),
    /// The change contradicts what is stored.
    #[error("{0}")]
    Conflict(String),
    /// Too much in flight or waiting: try again later (503 with Retry-After,
    /// never 429, which Alertmanager would drop).
    #[error("{why}")]
    Overloaded {
        /// Why.
        why: String,
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] capstan_store::StoreError),
}

/// Why a notification was not delivered.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct NotifyError {
    /// What went wrong (the provider's answer, if any).
    pub message: String,
    /// Whether a later attempt may succeed.
    pub retryable: bool,
}

/// Delivers `notify` actions to the channels admins configured (the
/// `capstan-notify` crate implements it; the binary wires it in).
pub trait Notifier: Send + Sync {
    /// Delivers `body` (in `format`) to `channel` for `plugin` of `project`;
    /// `idempotency_key` is the same on every retry of one action. Returns
    /// the delivery id.
    fn notify<'a>(
        &'a self,
        project: &'a str,
        plugin: &'a str,
        channel: &'a str,
        format: &'a str,
        body: &'a str,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<String, NotifyError>>;
}

/// Why a pipeline run was not started.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TriggerError(pub String);

/// Starts pipeline runs (implemented by the binary over the pipelines
/// engine's one entry point, so this crate does not depend on it).
pub trait PipelineTrigger: Send + Sync {
    /// The project owning `pipeline`, `None` if there is no such pipeline.
    fn project_of(&self, pipeline: &str) -> Result<Option<String>, TriggerError>;

    /// Starts a run of `pipeline`. `candidates` are values by name (alert
    /// labels, the handler's params); the run takes those the pipeline
    /// declares as parameters. Returns the run id.
    fn start<'a>(
        &'a self,
        pipeline: &'a str,
        candidates: BTreeMap<String, serde_json::Value>,
        trigger: serde_json::Value,
        started_by: &'a str,
    ) -> BoxFuture<'a, Result<String, TriggerError>>;
}

/// The `[alerts]` section of the server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Routes from the config file (read-only over the API).
    pub routes: Vec<routes::Route>,
    /// Alertmanager for `silence` actions, e.g. `http://alertmanager:9093`.
    pub alertmanager_url: Option<String>,
    /// Expire the silences made for an alert when it resolves.
    pub expire_silences_on_resolve: bool,
    /// How often Alertmanager's alerts are read to find the alerts that
    /// resolved while silenced (Alertmanager sends no resolve for a
    /// silenced alert), seconds (0: never).
    pub silence_check_secs: u64,
    /// Days groups, alerts and actions are kept (0 keeps them forever).
    pub retention_days: u64,
    /// Largest webhook body, bytes.
    pub max_body_bytes: usize,
    /// Groups waiting to be handled before deliveries get 503.
    pub max_backlog: i64,
    /// Deliveries being stored at once before more get 503.
    pub max_ingest_in_flight: usize,
    /// Processing shards (leases `alerts/shard/<n>`); a group key always
    /// falls in the same one, so its deliveries are handled in order.
    pub shards: u32,
    /// How long a remediation claim lasts before another worker may retry it.
    pub remediation_claim_secs: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            routes: Vec::new(),
            alertmanager_url: None,
            expire_silences_on_resolve: true,
            silence_check_secs: 60,
            retention_days: 30,
            max_body_bytes: 16 << 20,
            max_backlog: 10_000,
            max_ingest_in_flight: 64,
            shards: 8,
            remediation_claim_secs: 300,
        }
    }
}
