//! The engine's Prometheus metrics: runs by pipeline and outcome, step
//! durations, runs queued (by the concurrency limits) and waiting for an
//! environment lock, and how long lock waits took.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    pipeline: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    pipeline: String,
    step: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipelineLabels {
    pipeline: String,
}

/// Handles on the engine's metrics (cheap to clone).
#[derive(Clone)]
pub struct PipelineMetrics {
    runs: Family<RunLabels, Counter>,
    steps: Family<StepLabels, Histogram>,
    lock_wait: Family<PipelineLabels, Histogram>,
    queued: Gauge,
    waiting_lock: Gauge,
}

impl Default for PipelineMetrics {
    fn default() -> Self {
        PipelineMetrics {
            runs: Family::default(),
            steps: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 3.0, 12))
            }),
            lock_wait: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 4.0, 10))
            }),
            queued: Gauge::default(),
            waiting_lock: Gauge::default(),
        }
    }
}

impl PipelineMetrics {
    /// Registers every family with the server's metrics.
    pub fn register(&self, metrics: &mut capstan_registry::metrics::Metrics) {
        metrics.register(
            "pipeline_runs",
            "Pipeline runs finished, by pipeline and status",
            self.runs.clone(),
        );
        metrics.register(
            "pipeline_step_duration_seconds",
            "Duration of step attempts (and rollbacks), by pipeline, step and outcome",
            self.steps.clone(),
        );
        metrics.register(
            "pipeline_lock_wait_seconds",
            "How long runs waited for an environment's lock",
            self.lock_wait.clone(),
        );
        metrics.register(
            "pipeline_runs_queued",
            "Runs waiting to start (concurrency limits)",
            self.queued.clone(),
        );
        metrics.register(
            "pipeline_runs_waiting_lock",
            "Runs waiting for an environment's lock",
            self.waiting_lock.clone(),
        );
    }

    pub(super) fn run_finished(&self, pipeline: &str, status: &str) {
        let labels = RunLabels {
            pipeline: pipeline.into(),
            status: status.into(),
        };
        self.runs.get_or_create(&labels).inc();
    }

    pub(super) fn step(&self, pipeline: &str, step: &str, outcome: &str, secs: f64) {
        let labels = StepLabels {
            pipeline: pipeline.into(),
            step: step.into(),
            outcome: outcome.into(),
        };
        self.steps.get_or_create(&labels).observe(secs);
    }

    pub(super) fn lock_waited(&self, pipeline: &str, secs: f64) {
        let labels = PipelineLabels {
            pipeline: pipeline.into(),
        };
        self.lock_wait.get_or_create(&labels).observe(secs);
    }

    pub(super) fn set_depths(&self, queued: i64, waiting_lock: i64) {
        self.queued.set(queued);
        self.waiting_lock.set(waiting_lock);
    }
}
