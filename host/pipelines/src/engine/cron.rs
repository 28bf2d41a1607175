//! Cron triggers: the scheduler that starts a run of a pipeline at each due
//! time of its `cron` triggers, in their time zone.
//!
//! **Once across replicas and restarts.** One replica runs the scheduler at
//! a time: the holder of the lease [`LEASE`] (another takes over when it
//! dies). What makes a due time fire once is not the lease but a stored
//! mark per (pipeline, trigger): the due time it last fired for. A firing
//! moves the mark from the value the scheduler read, in the transaction
//! that stores the run ([`Claim::Cron`]); if the mark moved in between (a
//! second replica that briefly thought it held the lease, or an old process
//! still winding down), that transaction stores nothing. A lease per firing
//! would instead leave a row per due time in the lease table, and once it
//! expired would let a late replica fire the same time again.
//!
//! **Missed schedules.** After downtime (or a stall), the due times missed
//! fire once, not once each: the run's `trigger.due_ms` is the first missed
//! time and the mark jumps to now. A trigger seen for the first time (a new
//! pipeline, a changed schedule) fires from the next due time on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Weak;
use std::time::{Duration, Instant};

use capstan_registry::trust::Authority;
use capstan_store::unix_millis;
use serde_json::json;

use super::{Engine, EngineError, StartAudit};
use crate::model::{CronTrigger, Trigger};
use crate::store::Claim;

/// The lease of the replica that runs the scheduler.
pub const LEASE: &str = "pipelines/cron";

/// Longest the scheduler sleeps: how soon it sees a new pipeline or takes
/// over from a dead replica once the lease is free.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Webhook delivery ids are kept this long for deduplication.
const DELIVERY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The scheduler of one replica; ends with the engine.
pub(super) async fn run(engine: Weak<Engine>) {
    let mut pruned: Option<Instant> = None;
    loop {
        let Some(e) = engine.upgrade() else { return };
        // Off the worker threads and awaited: a server shutting down drops
        // this task here instead of resuming it on a runtime whose timers
        // are gone.
        let (store, replica, ttl) = (
            e.db.store().clone(),
            e.config.replica.clone(),
            e.config.lease_ttl,
        );
        let leased = tokio::task::spawn_blocking(move || store.acquire_lease(LEASE, &replica, ttl));
        let leased = match leased.await {
            Ok(leased) => leased.map_err(EngineError::from),
            // The runtime is shutting down.
            Err(_) => return,
        };
        let tick = match leased {
            Ok(Some(_)) => e.cron_tick(&mut pruned).await,
            Ok(None) => Ok(MAX_SLEEP),
            Err(err) => Err(err),
        };
        let sleep = match tick {
            Ok(sleep) => sleep,
            Err(err) => {
                tracing::warn!("cron scheduler: {err}");
                MAX_SLEEP
            }
        };
        drop(e);
        tokio::time::sleep(sleep).await;
    }
}

/// `<index>:<schedule>@<timezone>`: a changed schedule is a new trigger.
fn trigger_key(index: usize, c: &CronTrigger) -> String {
    format!("{index}:{}@{}", c.schedule, c.timezone)
}

impl Engine {
    /// Fires what is due (this replica holds the scheduler lease); returns
    /// how long to sleep.
    async fn cron_tick(&self, pruned: &mut Option<Instant>) -> Result<Duration, EngineError> {
        if pruned.is_none_or(|at| at.elapsed() > Duration::from_secs(3600)) {
            let before = unix_millis() - DELIVERY_RETENTION.as_millis() as i64;
            let n = self.db.prune_deliveries(before)?;
            tracing::debug!(deleted = n, "pruned webhook delivery ids");
            *pruned = Some(Instant::now());
        }
        let marks: HashMap<(String, String), i64> = self
            .db
            .cron_marks()?
            .into_iter()
            .map(|m| ((m.pipeline, m.trigger), m.last_due_ms))
            .collect();
        let mut live = HashSet::new();
        let mut wake = unix_millis() + MAX_SLEEP.as_millis() as i64;
        for row in self.db.list()? {
            let p = match self.pipeline_at(&row.name, row.revision) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(pipeline = %row.name, "cron: {e}");
                    continue;
                }
            };
            for (i, t) in p.triggers.iter().enumerate() {
                let Trigger::Cron(c) = t else { continue };
                let key = trigger_key(i, c);
                let now = unix_millis();
                let next = match marks.get(&(row.name.clone(), key.clone())) {
                    None => {
                        self.db.init_cron_mark(&row.name, &key, now)?;
                        next_after(c, now)
                    }
                    Some(&last) => match next_after(c, last) {
                        Some(due) if due <= now => {
                            self.fire(&row.name, c, &key, last, due, now).await;
                            next_after(c, now)
                        }
                        other => other,
                    },
                };
                if let Some(next) = next {
                    wake = wake.min(next);
                }
                live.insert((row.name.clone(), key));
            }
        }
        for (pipeline, key) in marks.keys() {
            if !live.contains(&(pipeline.clone(), key.clone())) {
                self.db.drop_cron_mark(pipeline, key)?;
            }
        }
        let left = (wake - unix_millis()).clamp(5, MAX_SLEEP.as_millis() as i64);
        Ok(Duration::from_millis(left as u64))
    }

    /// Starts the run of one due time, moving the mark from `last` to now.
    async fn fire(
        &self,
        pipeline: &str,
        c: &CronTrigger,
        key: &str,
        last: i64,
        due: i64,
        now: i64,
    ) {
        let claim = Claim::Cron {
            pipeline: pipeline.into(),
            trigger: key.into(),
            prev: last,
            next: now.max(due),
        };
        let trigger = json!({
            "kind": "cron", "schedule": c.schedule, "timezone": c.timezone, "due_ms": due,
        });
        let who = Authority {
            actor: "cron".into(),
            global: None,
            projects: BTreeMap::new(),
        };
        let audit = StartAudit {
            who: &who,
            detail: json!({ "schedule": c.schedule, "timezone": c.timezone, "due_ms": due }),
            by_caller: false,
        };
        let started = self
            .start_claimed(
                pipeline,
                BTreeMap::new(),
                trigger,
                "cron",
                Some(&claim),
                Some(audit),
            )
            .await;
        match started {
            Ok(Some(row)) => {
                tracing::info!(%pipeline, run = %row.run.id, due_ms = due, late_ms = now - due, "cron trigger fired");
            }
            // Fired already, by another replica or process.
            Ok(None) => {}
            // The pipeline cannot start (required parameters, a plugin
            // with no active version): skip this due time, not every tick.
            Err(e @ (EngineError::Invalid(_) | EngineError::NotFound(_))) => {
                tracing::error!(%pipeline, due_ms = due, "cron trigger skipped: {e}");
                if let Err(e) = self.db.advance_cron_mark(&claim) {
                    tracing::warn!(%pipeline, "cron: {e}");
                }
            }
            Err(e) => tracing::warn!(%pipeline, "cron trigger not fired yet: {e}"),
        }
    }
}

/// The next due time after `ms`, if the schedule has one.
fn next_after(c: &CronTrigger, ms: i64) -> Option<i64> {
    let after = u64::try_from(ms).ok()?;
    match c.next_after(after) {
        Ok(next) => i64::try_from(next).ok(),
        Err(e) => {
            tracing::debug!(schedule = %c.schedule, "cron: {e}");
            None
        }
    }
}
