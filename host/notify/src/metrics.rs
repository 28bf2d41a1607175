//! The notifier's Prometheus metrics: deliveries by channel type and
//! outcome, attempts by type and outcome, the queue depth, and the time
//! from enqueue to sent.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindOutcome {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// Handles on the notifier's metrics (cheap to clone).
#[derive(Clone)]
pub struct NotifyMetrics {
    deliveries: Family<KindOutcome, Counter>,
    attempts: Family<KindOutcome, Counter>,
    depth: Gauge,
    latency: Family<KindLabel, Histogram>,
}

impl Default for NotifyMetrics {
    fn default() -> Self {
        NotifyMetrics {
            deliveries: Family::default(),
            attempts: Family::default(),
            depth: Gauge::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 3.0, 14))
            }),
        }
    }
}

impl NotifyMetrics {
    /// Registers every family with the server's metrics.
    pub fn register(&self, metrics: &mut capstan_registry::metrics::Metrics) {
        metrics.register(
            "notify_deliveries",
            "Deliveries finished, by channel type and outcome (sent, failed, batched into another message)",
            self.deliveries.clone(),
        );
        metrics.register(
            "notify_attempts",
            "Send attempts, by channel type and outcome (sent, retry, failed)",
            self.attempts.clone(),
        );
        metrics.register(
            "notify_queue_depth",
            "Deliveries queued: waiting for their turn, a retry or a rate window",
            self.depth.clone(),
        );
        metrics.register(
            "notify_delivery_latency_seconds",
            "Time from enqueue to the provider taking the message, by channel type",
            self.latency.clone(),
        );
    }

    pub(crate) fn delivered(&self, kind: &str, outcome: &str, n: u64) {
        self.deliveries
            .get_or_create(&KindOutcome {
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .inc_by(n);
    }

    pub(crate) fn attempt(&self, kind: &str, outcome: &str) {
        self.attempts
            .get_or_create(&KindOutcome {
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub(crate) fn set_depth(&self, n: i64) {
        self.depth.set(n);
    }

    pub(crate) fn latency(&self, kind: &str, seconds: f64) {
        self.latency
            .get_or_create(&KindLabel { kind: kind.into() })
            .observe(seconds);
    }
}
