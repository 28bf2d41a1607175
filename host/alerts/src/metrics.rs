//! The engine's Prometheus metrics: deliveries by result, alerts new and
//! seen before, groups handled by final state, actions by kind and
//! outcome, the backlog, and how long storing a delivery took. Labels are
//! bounded (no receiver names or fingerprints).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    kind: String,
    outcome: String,
}

/// Handles on the engine's metrics (cheap to clone).
#[derive(Clone)]
pub struct AlertMetrics {
    deliveries: Family<ResultLabels, Counter>,
    alerts: Family<ResultLabels, Counter>,
    groups: Family<ResultLabels, Counter>,
    actions: Family<ActionLabels, Counter>,
    backlog: Gauge,
    ingest: Histogram,
}

impl Default for AlertMetrics {
    fn default() -> Self {
        AlertMetrics {
            deliveries: Family::default(),
            alerts: Family::default(),
            groups: Family::default(),
            actions: Family::default(),
            backlog: Gauge::default(),
            ingest: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
        }
    }
}

impl AlertMetrics {
    /// Registers every family with the server's metrics.
    pub fn register(&self, metrics: &mut capstan_registry::metrics::Metrics) {
        metrics.register(
            "alert_deliveries",
            "Alertmanager webhook deliveries, by result (stored, duplicate, invalid, unauthorized, overloaded, error)",
            self.deliveries.clone(),
        );
        metrics.register(
            "alert_alerts",
            "Alerts received, by result (new, or deduped: seen before with the same group key, fingerprint, status and start)",
            self.alerts.clone(),
        );
        metrics.register(
            "alert_groups_handled",
            "Groups handled, by final state (processed, muted, unrouted, failed)",
            self.groups.clone(),
        );
        metrics.register(
            "alert_actions",
            "Actions of alert handlers, by kind and outcome",
            self.actions.clone(),
        );
        metrics.register(
            "alert_backlog_groups",
            "Groups stored and waiting to be handled",
            self.backlog.clone(),
        );
        metrics.register(
            "alert_ingest_seconds",
            "Time to store a delivery (before the answer)",
            self.ingest.clone(),
        );
    }

    pub(crate) fn delivery(&self, result: &str) {
        self.deliveries
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    pub(crate) fn alerts(&self, new: usize, deduped: usize) {
        for (result, n) in [("new", new), ("deduped", deduped)] {
            self.alerts
                .get_or_create(&ResultLabels {
                    result: result.into(),
                })
                .inc_by(n as u64);
        }
    }

    pub(crate) fn group(&self, state: &str) {
        self.groups
            .get_or_create(&ResultLabels {
                result: state.into(),
            })
            .inc();
    }

    pub(crate) fn action(&self, kind: &str, outcome: &str) {
        self.actions
            .get_or_create(&ActionLabels {
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub(crate) fn set_backlog(&self, n: i64) {
        self.backlog.set(n);
    }

    pub(crate) fn ingested(&self, secs: f64) {
        self.ingest.observe(secs);
    }
}
