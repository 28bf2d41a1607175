//! Audit retention: records older than a maximum age, or beyond a maximum
//! row count (the oldest first), are deleted by a background task in
//! bounded chunks, so the connection is never held long.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::store::args;
use crate::store::sql::DbError;

use super::{Audit, now_ms};
use crate::store::Store;

/// Rows deleted per statement by retention.
const PRUNE_CHUNK: usize = 5_000;

/// How long audit records are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    /// Records older than this go (`None`: no age limit).
    pub max_age: Option<Duration>,
    /// Only the newest this many records stay (`None`: no row limit).
    pub max_rows: Option<u64>,
    /// How often retention runs.
    pub interval: Duration,
}

impl Default for Retention {
    /// 90 days, 1,000,000 rows, hourly.
    fn default() -> Self {
        Retention {
            max_age: Some(Duration::from_secs(90 * 86_400)),
            max_rows: Some(1_000_000),
            interval: Duration::from_secs(3600),
        }
    }
}

impl Audit {
    /// Enforces `policy` now and then every `policy.interval`, in the
    /// background, until the store is gone.
    pub fn start_retention(&self, policy: Retention) {
        if policy.max_age.is_none() && policy.max_rows.is_none() {
            return;
        }
        let store: Weak<Store> = Arc::downgrade(&self.store);
        tokio::spawn(async move {
            loop {
                let Some(s) = store.upgrade() else { return };
                let p = policy.clone();
                match tokio::task::spawn_blocking(move || prune(&s, &p, PRUNE_CHUNK)).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => tracing::info!(deleted = n, "audit retention"),
                    Ok(Err(e)) => tracing::warn!("audit retention failed: {e}"),
                    Err(e) => tracing::warn!("audit retention task: {e}"),
                }
                tokio::time::sleep(policy.interval).await;
            }
        });
    }
}

/// Deletes records past `policy`, oldest first, at most `chunk` rows per
/// statement so the connection is never held long. Returns rows deleted.
pub fn prune(store: &Store, policy: &Retention, chunk: usize) -> Result<usize, DbError> {
    let mut deleted = 0;
    if let Some(age) = policy.max_age {
        let cutoff = now_ms().saturating_sub(age.as_millis() as i64);
        // Ids grow with time: everything before the first recent record goes.
        let first_kept: Option<i64> = store.with(|c| {
            c.row(
                "SELECT id FROM audit WHERE at_ms >= ?1 ORDER BY id LIMIT 1",
                args![cutoff],
            )?
            .map(|r| r.get(0))
            .transpose()
        })?;
        let bound = match first_kept {
            Some(id) => id,
            // No recent record: everything up to the newest old one goes.
            // Not `max(id) + 1` of the whole table: a record stored since
            // the query above would be deleted the moment it was written.
            None => store.with(|c| {
                c.value(
                    "SELECT coalesce(max(id), 0) + 1 FROM audit WHERE at_ms < ?1",
                    args![cutoff],
                )
            })?,
        };
        deleted += delete_before(store, bound, chunk)?;
    }
    if let Some(max) = policy.max_rows {
        let first_kept: Option<i64> = store.with(|c| {
            c.row(
                "SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET ?1",
                args![max.saturating_sub(1) as i64],
            )?
            .map(|r| r.get(0))
            .transpose()
        })?;
        if let Some(id) = first_kept {
            deleted += delete_before(store, id, chunk)?;
        }
    }
    Ok(deleted)
}

fn delete_before(store: &Store, id: i64, chunk: usize) -> Result<usize, DbError> {
    let mut deleted = 0;
    loop {
        let n = store.with(|c| {
            c.exec(
                "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE id < ?1 ORDER BY id LIMIT ?2)",
                args![id, chunk as i64],
            )
        })? as usize;
        deleted += n;
        if n < chunk {
            return Ok(deleted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{count, rec};
    use super::super::{AuditQuery, insert};
    use super::*;

    #[tokio::test]
    async fn retention_keeps_the_newest_rows_and_drops_old_ones() {
        for t in crate::store::testing::backends() {
            keeps_newest(t.store.clone()).await;
        }
    }

    async fn keeps_newest(store: Arc<Store>) {
        let b = store.backend();
        let audit = Audit::start(store.clone());
        // 20 records from 200 days ago, then 30 recent ones.
        store
            .with(|c| {
                (0..20).try_for_each(|i| {
                    let mut r = rec(&format!("old{i}"));
                    r.at_ms = now_ms() - 200 * 86_400_000;
                    insert(c, &r)
                })
            })
            .unwrap();
        for i in 0..30 {
            audit.record(rec(&format!("new{i}")));
        }
        audit.flush().await;
        assert_eq!(count(&store), 50, "{b:?}");
        let by_age = Retention {
            max_rows: None,
            ..Retention::default()
        };
        // Chunks of 7: several statements per pass.
        assert_eq!(prune(&store, &by_age, 7).unwrap(), 20, "{b:?}");
        assert_eq!(count(&store), 30, "{b:?}");
        let by_rows = Retention {
            max_age: None,
            max_rows: Some(10),
            ..Retention::default()
        };
        assert_eq!(prune(&store, &by_rows, 7).unwrap(), 20, "{b:?}");
        let q = AuditQuery {
            limit: Some(1000),
            ..Default::default()
        };
        let kept: Vec<String> = audit
            .query(&q)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.target)
            .collect();
        let newest: Vec<String> = (20..30).rev().map(|i| format!("new{i}")).collect();
        assert_eq!(kept, newest, "{b:?}");
        assert_eq!(prune(&store, &by_rows, 7).unwrap(), 0, "{b:?}");
    }
}
