//! Drift: applied instances re-planned periodically by one replica at a
//! time (lease `provision-drift`). An instance whose plan would create,
//! update or prune anything is `drifted`; one whose plan fails is `failed`;
//! otherwise `in-sync`. Exposed as `capstan_provision_drifted{provision}`
//! (1 drifted, 0 not), which an alert rule can watch (see
//! `deploy/prometheus/capstan-rules.yaml`). The label is not `instance`:
//! Prometheus gives that one to every scraped target.

use std::sync::Weak;

use capstan_store::unix_millis;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::{Engine, ProvisionError};
use crate::model::Verdict;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    provision: String,
}

/// Handles on the engine's metrics (cheap to clone).
#[derive(Clone, Default)]
pub struct ProvisionMetrics {
    drifted: Family<InstanceLabels, Gauge>,
}

impl ProvisionMetrics {
    /// Registers every family with the server's metrics.
    pub fn register(&self, metrics: &mut capstan_registry::metrics::Metrics) {
        metrics.register(
            "provision_drifted",
            "Whether a provisioned instance has drifted from its spec (1) or not (0), by provisioned instance",
            self.drifted.clone(),
        );
    }

    pub(super) fn drifted(&self, instance: &str, drifted: bool) {
        self.drifted
            .get_or_create(&InstanceLabels {
                provision: instance.into(),
            })
            .set(i64::from(drifted));
    }
}

/// The outcome of one instance's check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftCheck {
    /// `in-sync`, `drifted` or `failed`.
    pub drift: String,
    /// Which objects, or why it failed.
    pub detail: String,
}

pub(super) async fn sweeper(engine: Weak<Engine>) {
    loop {
        let Some(e) = engine.upgrade() else { return };
        let every = e.config.drift_interval;
        if every.is_zero() {
            return;
        }
        if e.registry.is_ready()
            && let Err(err) = e.sweep().await
        {
            tracing::warn!("drift sweep: {err}");
        }
        drop(e);
        tokio::time::sleep(every / 4).await;
    }
}

impl Engine {
    /// One sweep: the instances not checked for an interval, under the
    /// sweep lease. Returns how many were checked.
    pub async fn sweep(&self) -> Result<usize, ProvisionError> {
        let ttl = self.config.lease_ttl.max(std::time::Duration::from_secs(5));
        let Some(lease) = self.registry.store().acquire_lease(
            "provision-drift",
            &self.config.replica,
            ttl * 4,
        )?
        else {
            return Ok(0);
        };
        let before = unix_millis() - self.config.drift_interval.as_millis() as i64;
        let due = self.db.due_for_drift(before, 1000)?;
        let mut n = 0;
        for name in due {
            if !self.registry.store().lease_is_current(&lease)? {
                break;
            }
            self.check_drift(&name).await?;
            n += 1;
        }
        let _ = self.registry.store().release_lease(&lease);
        Ok(n)
    }

    /// [`Engine::check_drift`] for an operator of the instance's project.
    pub async fn drift_now(
        &self,
        name: &str,
        who: &capstan_registry::trust::Authority,
    ) -> Result<DriftCheck, ProvisionError> {
        let (i, _) = self.instance(name, who)?;
        super::require(
            who,
            &i.project,
            capstan_registry::trust::Role::Operator,
            "check drift",
        )?;
        self.check_drift(name).await
    }

    /// Re-plans one instance and records whether it drifted.
    pub async fn check_drift(&self, name: &str) -> Result<DriftCheck, ProvisionError> {
        let (i, members) = self.instance_of(name)?;
        let check = match self.compute(&i, &members, "drift").await {
            Ok(plan) => {
                let changed: Vec<String> = plan
                    .objects
                    .iter()
                    .filter(|o| o.verdict != Verdict::Unchanged)
                    .map(|o| format!("{} ({})", o.object.label(), o.verdict.as_str()))
                    .collect();
                if changed.is_empty() {
                    DriftCheck {
                        drift: "in-sync".into(),
                        detail: String::new(),
                    }
                } else {
                    DriftCheck {
                        drift: "drifted".into(),
                        detail: changed.join("; "),
                    }
                }
            }
            Err(e) => DriftCheck {
                drift: "failed".into(),
                detail: e.to_string(),
            },
        };
        self.db.set_drift(name, &check.drift, &check.detail)?;
        self.metrics.drifted(name, check.drift == "drifted");
        Ok(check)
    }
}
