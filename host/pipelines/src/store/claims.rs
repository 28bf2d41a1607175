//! What a trigger claims in the transaction that creates its run, so that a
//! webhook delivery or a cron due time starts at most one run, across
//! replicas, retries and restarts (migration `V12__cron_marks`): a delivery
//! id not seen before, or a cron mark moved from the value the scheduler
//! read. Either the claim and the run are both stored, or neither is.

use capstan_store::sql::{Conn, DbError};
use capstan_store::{StoreError, args, unix_millis};

use super::PipelineStore;

/// What a run start claims with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// A webhook delivery id, scoped to the pipeline it was sent to.
    Delivery {
        /// `github`, `gitlab` or `gitea`.
        provider: String,
        /// `<pipeline>/<delivery id>`.
        delivery: String,
    },
    /// A cron firing: the trigger's mark moves from `prev` to `next`.
    Cron {
        /// The pipeline.
        pipeline: String,
        /// `<index>:<schedule>@<timezone>`.
        trigger: String,
        /// The mark the scheduler read.
        prev: i64,
        /// The new mark (the due time fired for, or later).
        next: i64,
    },
}

/// Takes `claim` inside the caller's transaction; `false` if another
/// delivery or firing took it first (then nothing was written).
pub(super) fn take(c: &mut Conn, claim: &Claim) -> Result<bool, DbError> {
    match claim {
        Claim::Delivery { provider, delivery } => insert_delivery(c, provider, delivery),
        Claim::Cron {
            pipeline,
            trigger,
            prev,
            next,
        } => Ok(c.exec(
            "UPDATE cron_marks SET last_due_ms = ?4
             WHERE pipeline = ?1 AND trigger_key = ?2 AND last_due_ms = ?3",
            args![pipeline, trigger, *prev, *next],
        )? == 1),
    }
}

pub(super) fn insert_delivery(
    c: &mut Conn,
    provider: &str,
    delivery: &str,
) -> Result<bool, DbError> {
    Ok(c.exec(
        "INSERT INTO webhook_deliveries (provider, delivery, received_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT DO NOTHING",
        args![provider, delivery, unix_millis()],
    )? == 1)
}

/// A cron trigger's mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronMark {
    /// The pipeline.
    pub pipeline: String,
    /// `<index>:<schedule>@<timezone>`.
    pub trigger: String,
    /// The due time (Unix ms) it last fired for, or when it was first seen.
    pub last_due_ms: i64,
}

impl PipelineStore {
    /// Every cron mark.
    pub fn cron_marks(&self) -> Result<Vec<CronMark>, StoreError> {
        self.store.with(|c| {
            c.rows(
                "SELECT pipeline, trigger_key, last_due_ms FROM cron_marks",
                args![],
            )?
            .iter()
            .map(|r| {
                Ok(CronMark {
                    pipeline: r.get(0)?,
                    trigger: r.get(1)?,
                    last_due_ms: r.get(2)?,
                })
            })
            .collect()
        })
    }

    /// Sets a mark for a trigger seen for the first time (kept if another
    /// replica set one first); it fires from the next due time after `at_ms`.
    pub fn init_cron_mark(
        &self,
        pipeline: &str,
        trigger: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.store.with(|c| {
            c.exec(
                "INSERT INTO cron_marks (pipeline, trigger_key, last_due_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
                args![pipeline, trigger, at_ms],
            )
        })?;
        Ok(())
    }

    /// Moves a mark without starting a run (the run could not be started:
    /// the pipeline is invalid); `false` if it moved since it was read.
    pub fn advance_cron_mark(&self, claim: &Claim) -> Result<bool, StoreError> {
        Ok(self.store.with(|c| take(c, claim))?)
    }

    /// Forgets a mark (its trigger or pipeline is gone).
    pub fn drop_cron_mark(&self, pipeline: &str, trigger: &str) -> Result<(), StoreError> {
        self.store.with(|c| {
            c.exec(
                "DELETE FROM cron_marks WHERE pipeline = ?1 AND trigger_key = ?2",
                args![pipeline, trigger],
            )
        })?;
        Ok(())
    }

    /// Forgets webhook deliveries received before `before_ms`; returns how many.
    pub fn prune_deliveries(&self, before_ms: i64) -> Result<u64, StoreError> {
        Ok(self.store.with(|c| {
            c.exec(
                "DELETE FROM webhook_deliveries WHERE received_ms < ?1",
                args![before_ms],
            )
        })?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::machine::Run;
    use crate::model::Pipeline;

    fn run(id: &str) -> Run {
        let p = Pipeline::from_yaml("name: nightly\nsteps: [{id: a, plugin: p}]\n").unwrap();
        let trigger = serde_json::json!({ "kind": "cron" });
        Run::new(&p, id, trigger, Default::default(), Some("cron"))
    }

    fn runs(db: &PipelineStore) -> usize {
        db.runs(Some("nightly"), 100).unwrap().len()
    }

    /// Two replicas over one database read the same mark and race to fire
    /// the same due time: one run is stored, and the loser stores nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cron_due_time_and_a_delivery_start_one_run_across_replicas() {
        for t in capstan_store::testing::backends() {
            let (a, b) = (
                PipelineStore::new(t.store.clone()),
                PipelineStore::new(Arc::new(t.reopen())),
            );
            a.init_cron_mark("nightly", "0:* * * * * *@UTC", 1_000)
                .unwrap();
            b.init_cron_mark("nightly", "0:* * * * * *@UTC", 5_000)
                .unwrap();
            let marks = b.cron_marks().unwrap();
            assert_eq!(marks.len(), 1);
            assert_eq!(marks[0].last_due_ms, 1_000, "the first mark is kept");
            let claim = |next| Claim::Cron {
                pipeline: "nightly".into(),
                trigger: "0:* * * * * *@UTC".into(),
                prev: 1_000,
                next,
            };
            let pins = BTreeMap::new();
            assert!(
                a.create_run_claimed(&run("r1"), 1, &pins, Some(&claim(2_000)))
                    .await
                    .unwrap()
            );
            assert!(
                !b.create_run_claimed(&run("r2"), 1, &pins, Some(&claim(2_100)))
                    .await
                    .unwrap()
            );
            assert_eq!(runs(&a), 1, "{:?}", t.backend());
            assert_eq!(a.cron_marks().unwrap()[0].last_due_ms, 2_000);
            assert!(!a.advance_cron_mark(&claim(3_000)).unwrap(), "stale mark");

            let delivery = Claim::Delivery {
                provider: "github".into(),
                delivery: "nightly/72d3162e".into(),
            };
            assert!(
                b.create_run_claimed(&run("r3"), 1, &pins, Some(&delivery))
                    .await
                    .unwrap()
            );
            assert!(
                !a.create_run_claimed(&run("r4"), 1, &pins, Some(&delivery))
                    .await
                    .unwrap()
            );
            assert!(!a.first_delivery("github", "nightly/72d3162e").unwrap());
            assert_eq!(runs(&a), 2);
            // Old delivery ids are forgotten.
            assert_eq!(a.prune_deliveries(unix_millis() + 1).unwrap(), 1);
            assert!(a.first_delivery("github", "nightly/72d3162e").unwrap());
            a.drop_cron_mark("nightly", "0:* * * * * *@UTC").unwrap();
            assert!(a.cron_marks().unwrap().is_empty());
        }
    }
}
