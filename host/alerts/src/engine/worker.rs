//! The shard workers. Groups are spread over shards by group key; each
//! shard is claimed through a lease (`alerts/shard/<n>`), so with several
//! replicas exactly one handles a shard, in the order deliveries were
//! stored, and another takes over when it dies. A group is handled once:
//! its new alerts are routed, muted routes are recorded as muted, each
//! handler is invoked with its share, and the actions it returns are
//! carried out and recorded (see [`super::actions`]).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use capstan_store::leases::Lease;
use capstan_store::unix_millis;

use super::{Engine, sorted};
use crate::AlertsError;
use crate::model::Alert;
use crate::routes::{Route, dispatch};
use crate::store::GroupRow;

const LEASE_TTL: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(250);

pub(super) fn spawn(engine: &Arc<Engine>) {
    for shard in 0..engine.config.shards {
        tokio::spawn(shard_loop(Arc::downgrade(engine), shard));
    }
    tokio::spawn(housekeeping(Arc::downgrade(engine)));
}

async fn shard_loop(engine: Weak<Engine>, shard: u32) {
    let name = format!("alerts/shard/{shard}");
    loop {
        let Some(e) = engine.upgrade() else { return };
        let wake = e.wake.clone();
        // Created before the work, so a delivery stored meanwhile wakes it.
        let woken = wake.notified();
        // The lease is claimed only when there is work, so an idle server
        // does not write to the leases table four times a second per shard.
        let claim = if e.registry.is_ready() {
            // Off the worker threads and awaited: a server shutting down
            // drops this task here instead of resuming it on a runtime
            // whose timers are gone.
            let (db, name, replica) = (e.db.clone(), name.clone(), e.replica.clone());
            let claimed = tokio::task::spawn_blocking(move || {
                if db.pending(shard, 1)?.is_empty() {
                    return Ok(None);
                }
                db.store().acquire_lease(&name, &replica, LEASE_TTL)
            });
            match claimed.await {
                Ok(claim) => Some(claim),
                // The runtime is shutting down.
                Err(_) => return,
            }
        } else {
            None
        };
        if let Some(claim) = claim {
            match claim {
                Ok(Some(lease)) => {
                    if let Err(err) = e.drain(shard, &lease).await {
                        tracing::error!(shard, "alerts worker: {err}");
                    }
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(shard, "claiming an alerts shard: {err}"),
            }
        }
        drop(e);
        let _ = tokio::time::timeout(POLL, woken).await;
    }
}

/// Refreshes the backlog figure every second, deletes old records hourly,
/// and sweeps for silences of resolved alerts every `silence_check_secs`.
async fn housekeeping(engine: Weak<Engine>) {
    let (mut last_retention, mut last_sweep) = (0i64, 0i64);
    loop {
        let Some(e) = engine.upgrade() else { return };
        match e.db.backlog() {
            Ok(n) => {
                e.backlog.store(n, Ordering::Relaxed);
                e.metrics.set_backlog(n);
            }
            Err(err) => tracing::warn!("counting the alerts backlog: {err}"),
        }
        let now = unix_millis();
        if e.config.retention_days > 0 && now - last_retention > 3_600_000 {
            last_retention = now;
            let cutoff = now - e.config.retention_days as i64 * 86_400_000;
            match e.db.delete_before(cutoff) {
                Ok(0) => {}
                Ok(n) => tracing::info!(groups = n, "alerts retention: deleted old groups"),
                Err(err) => tracing::warn!("alerts retention: {err}"),
            }
        }
        let every = e.config.silence_check_secs as i64 * 1000;
        if every > 0 && e.config.expire_silences_on_resolve && now - last_sweep >= every {
            last_sweep = now;
            let lease = e.db.store().acquire_lease(
                "alerts/silence-sweep",
                &e.replica,
                Duration::from_millis(every as u64),
            );
            if let Ok(Some(_)) = lease {
                e.expire_silences_of_resolved().await;
            }
        }
        drop(e);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What a group's handling came to.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) failed: bool,
    pub(super) handled: usize,
    pub(super) muted: usize,
    pub(super) lost_lease: bool,
}

impl Engine {
    async fn drain(self: &Arc<Self>, shard: u32, lease: &Lease) -> Result<(), AlertsError> {
        loop {
            let ids = self.db.pending(shard, 20)?;
            if ids.is_empty() {
                return Ok(());
            }
            for id in ids {
                if !self.db.store().lease_is_current(lease)? {
                    return Ok(());
                }
                self.handle_group(&id, lease).await?;
            }
        }
    }

    async fn handle_group(self: &Arc<Self>, id: &str, lease: &Lease) -> Result<(), AlertsError> {
        // A group stored here comes parsed from the handoff; any other is
        // read back from the store.
        let (group, all_new) = match self.handoff.take(id) {
            Some(fresh) => (self.db.group_with(id, fresh.hook)?, fresh.all_new),
            None => (self.db.group(id)?, false),
        };
        let Some(group) = group else {
            return Ok(());
        };
        if group.state != "pending" {
            return Ok(());
        }
        let alerts = if all_new {
            group.hook.alerts.clone()
        } else {
            self.new_alerts(&group)?
        };
        self.unsilence_resolved(&group, &alerts).await;
        let mut all: Vec<Route> = self.routes()?.into_iter().map(|v| v.route).collect();
        all = sorted(all);
        let shares = dispatch(&all, &group.receiver, &alerts);
        let mut projects: Vec<String> = shares.iter().map(|d| d.route.project.clone()).collect();
        projects.sort();
        projects.dedup();
        let mut tally = Tally::default();
        let now = unix_millis();
        for share in &shares {
            if share.route.muted_at(now) {
                tally.muted += 1;
                self.record_mute(&group, share.route, &share.alerts);
                continue;
            }
            tally.handled += 1;
            for plugin in &share.route.handlers {
                if !self.db.store().lease_is_current(lease)? {
                    tally.lost_lease = true;
                    break;
                }
                let sub = group.hook.with_alerts(share.alerts.clone());
                self.run_handler(&group, share.route, plugin, sub, &mut tally, lease)
                    .await;
            }
        }
        if tally.lost_lease {
            // Another replica holds the shard now and handles the group again;
            // recorded actions are not repeated.
            return Ok(());
        }
        let (state, note) = if shares.is_empty() {
            ("unrouted", "no route matched its alerts".to_string())
        } else if tally.handled == 0 {
            ("muted", "every matching route was muted".to_string())
        } else if tally.failed {
            (
                "failed",
                "a handler or an action failed; see its actions".to_string(),
            )
        } else {
            ("processed", String::new())
        };
        self.db.finish(id, state, &projects, &note)?;
        self.metrics.group(state);
        self.backlog.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }

    /// The delivery's alerts that it brought first (once each).
    fn new_alerts(&self, group: &GroupRow) -> Result<Vec<Alert>, AlertsError> {
        let mut new: HashSet<(String, String, String)> =
            self.db.new_alerts(&group.id)?.into_iter().collect();
        Ok(group
            .hook
            .alerts
            .iter()
            .filter(|a| new.remove(&(a.fingerprint.clone(), a.status.clone(), a.starts_at.clone())))
            .cloned()
            .collect())
    }

    fn record_mute(&self, group: &GroupRow, route: &Route, alerts: &[Alert]) {
        let id = format!("{}:{}:-:mute", group.id, route.name);
        let detail = serde_json::json!({
            "alerts": alerts.iter().map(Alert::episode).collect::<Vec<_>>(),
            "reason": "the route is in a mute window",
        });
        let result = self
            .db
            .begin_action(&id, &group.id, &route.name, "-", "mute", &route.name)
            .and_then(|_| self.db.finish_action(&id, "muted", &detail));
        if let Err(e) = result {
            tracing::error!(group = %group.id, "recording a mute: {e}");
        }
        self.metrics.action("mute", "muted");
    }
}
