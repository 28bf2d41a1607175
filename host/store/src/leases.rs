//! Leases: how work that must run once (a schedule, a pipeline step, an
//! alert's remediation, a drift check) is claimed in the database, so that
//! of several replicas exactly one does it, and another takes over when
//! the holder dies.
//!
//! A lease has a name (what is claimed, e.g. `run/01938f…/step/deploy`),
//! a holder (the replica's id), an expiry and a fencing token. Acquiring
//! succeeds when the lease is free, expired, or already held by the caller
//! (then it renews). Every change of holder increments the token, so work
//! started under an old token can be told apart from work of the new holder
//! ([`Store::lease_is_current`] before each effect). Time is the replicas'
//! wall clock, in milliseconds: keep TTLs well above the clock skew.
//!
//! [`LeaseKeeper`] holds one lease in the background: it renews at a third
//! of the TTL and says when the lease was lost.

use std::sync::Arc;
use std::time::Duration;

use super::{Store, StoreError};
use crate::args;
use crate::sql::{Conn, DbError, Row};

/// A held lease.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    /// What is claimed.
    pub name: String,
    /// Who holds it.
    pub holder: String,
    /// Fencing token: grows each time the lease changes hands.
    pub token: i64,
    /// Unix milliseconds when it expires unless renewed.
    pub expires_at_ms: i64,
}

use super::unix_millis as now_ms;

impl Store {
    /// Claims `name` for `holder` for `ttl`: granted when the lease is free,
    /// expired, or already `holder`'s (a renewal, same token). `None` when
    /// another holder has it.
    pub fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        Ok(self.with(|c| acquire_lease_in(c, name, holder, ttl))?)
    }

    /// Extends a held lease; `None` if it expired and changed hands (or was
    /// released) since.
    pub fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let expires = now_ms() + ttl.as_millis() as i64;
        let n = self.with(|c| {
            c.exec(
                "UPDATE leases SET expires_at_ms = ?4
                 WHERE name = ?1 AND holder = ?2 AND token = ?3",
                args![&lease.name, &lease.holder, lease.token, expires],
            )
        })?;
        Ok((n == 1).then(|| Lease {
            expires_at_ms: expires,
            ..lease.clone()
        }))
    }

    /// [`Store::renew_lease`] for many leases in one transaction (an engine
    /// holding a lease per run renews them together); answers in order.
    pub fn renew_leases(
        &self,
        leases: &[Lease],
        ttl: Duration,
    ) -> Result<Vec<Option<Lease>>, StoreError> {
        let expires = now_ms() + ttl.as_millis() as i64;
        self.with(|c| {
            c.tx(|c| {
                let mut out = Vec::with_capacity(leases.len());
                for lease in leases {
                    let n = c.exec(
                        "UPDATE leases SET expires_at_ms = ?4
                         WHERE name = ?1 AND holder = ?2 AND token = ?3",
                        args![&lease.name, &lease.holder, lease.token, expires],
                    )?;
                    out.push((n == 1).then(|| Lease {
                        expires_at_ms: expires,
                        ..lease.clone()
                    }));
                }
                Ok(out)
            })
        })
    }

    /// Whether `lease` is still the current one (same holder and token, not
    /// expired): check it before each effect done under the lease.
    pub fn lease_is_current(&self, lease: &Lease) -> Result<bool, StoreError> {
        Ok(self
            .with(|c| {
                c.row(
                    "SELECT 1 FROM leases WHERE name = ?1 AND holder = ?2 AND token = ?3 AND expires_at_ms > ?4",
                    args![&lease.name, &lease.holder, lease.token, now_ms()],
                )
            })?
            .is_some())
    }

    /// Gives a lease up early, so another replica need not wait for expiry.
    /// The token is kept, so the next holder's is higher.
    pub fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        self.with(|c| {
            c.exec(
                "UPDATE leases SET expires_at_ms = 0 WHERE name = ?1 AND holder = ?2 AND token = ?3",
                args![&lease.name, &lease.holder, lease.token],
            )
        })?;
        Ok(())
    }

    /// The current holder of `name`, if any and not expired.
    pub fn lease_holder(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        self.with(|c| {
            c.row(
                "SELECT name, holder, token, expires_at_ms FROM leases WHERE name = ?1 AND expires_at_ms > ?2",
                args![name, now_ms()],
            )?
            .map(|r| row_to_lease(&r))
            .transpose()
        })
    }
}

/// [`Store::acquire_lease`] inside the caller's transaction on `c` (e.g.
/// with the row the lease is about).
pub fn acquire_lease_in(
    c: &mut Conn,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<Option<Lease>, DbError> {
    let now = now_ms();
    let expires = now + ttl.as_millis() as i64;
    let token: Option<i64> = c
        .row(
            "INSERT INTO leases (name, holder, token, expires_at_ms) VALUES (?1, ?2, 1, ?3)
             ON CONFLICT (name) DO UPDATE SET
                 token = CASE WHEN leases.holder = excluded.holder THEN leases.token ELSE leases.token + 1 END,
                 holder = excluded.holder,
                 expires_at_ms = excluded.expires_at_ms
             WHERE leases.holder = excluded.holder OR leases.expires_at_ms <= ?4
             RETURNING token",
            args![name, holder, expires, now],
        )?
        .map(|r| r.get(0))
        .transpose()?;
    Ok(token.map(|token| Lease {
        name: name.into(),
        holder: holder.into(),
        token,
        expires_at_ms: expires,
    }))
}

fn row_to_lease(r: &Row) -> Result<Lease, StoreError> {
    Ok(Lease {
        name: r.get(0)?,
        holder: r.get(1)?,
        token: r.get(2)?,
        expires_at_ms: r.get(3)?,
    })
}

/// Holds one lease in the background, renewing it at a third of its TTL.
/// Dropping the keeper stops renewing (the lease then expires, as when a
/// replica dies); [`LeaseKeeper::release`] gives it up at once.
pub struct LeaseKeeper {
    lease: tokio::sync::watch::Receiver<Option<Lease>>,
    task: tokio::task::JoinHandle<()>,
    store: Arc<Store>,
}

impl LeaseKeeper {
    /// Tries to take `name` for `holder`; `None` if another holder has it.
    pub async fn acquire(
        store: Arc<Store>,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<LeaseKeeper>, StoreError> {
        let (s, n, h) = (store.clone(), name.to_string(), holder.to_string());
        let first = tokio::task::spawn_blocking(move || s.acquire_lease(&n, &h, ttl))
            .await
            .map_err(|e| StoreError::Conflict(format!("lease task: {e}")))??;
        let Some(first) = first else {
            return Ok(None);
        };
        let (tx, rx) = tokio::sync::watch::channel(Some(first.clone()));
        let renewer = store.clone();
        let task = tokio::spawn(async move {
            let mut held = first;
            loop {
                tokio::time::sleep(ttl / 3).await;
                let (s, l) = (renewer.clone(), held.clone());
                let renewed = tokio::task::spawn_blocking(move || s.renew_lease(&l, ttl)).await;
                match renewed {
                    Ok(Ok(Some(l))) => held = l,
                    Ok(Ok(None)) => {
                        tracing::warn!(lease = %held.name, "lease lost to another holder");
                        let _ = tx.send(None);
                        return;
                    }
                    // A failed renewal is retried until the lease expires.
                    Ok(Err(e)) => tracing::warn!(lease = %held.name, "renewing lease: {e}"),
                    Err(e) => tracing::warn!(lease = %held.name, "renewing lease: {e}"),
                }
                if held.expires_at_ms <= now_ms() {
                    let _ = tx.send(None);
                    return;
                }
            }
        });
        Ok(Some(LeaseKeeper {
            lease: rx,
            task,
            store,
        }))
    }

    /// The lease while it is held.
    pub fn lease(&self) -> Option<Lease> {
        self.lease.borrow().clone()
    }

    /// Waits until the lease is lost.
    pub async fn lost(&mut self) {
        let _ = self.lease.wait_for(Option::is_none).await;
    }

    /// Stops renewing and releases the lease.
    pub async fn release(self) -> Result<(), StoreError> {
        self.task.abort();
        if let Some(lease) = self.lease() {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.release_lease(&lease))
                .await
                .map_err(|e| StoreError::Conflict(format!("lease task: {e}")))??;
        }
        Ok(())
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two replicas (two stores over the same database) per backend.
    fn replicas() -> Vec<(crate::testing::TestStore, Arc<Store>, Arc<Store>)> {
        crate::testing::backends()
            .into_iter()
            .map(|t| {
                let (a, b) = (t.store.clone(), Arc::new(t.reopen()));
                (t, a, b)
            })
            .collect()
    }

    #[test]
    fn one_holder_at_a_time_and_a_higher_token_after_expiry() {
        for (_t, a, b) in replicas() {
            one_holder_at_a_time(a, b);
        }
    }

    fn one_holder_at_a_time(a: Arc<Store>, b: Arc<Store>) {
        let ttl = Duration::from_millis(200);
        let la = a
            .acquire_lease("drift/prod", "replica-a", ttl)
            .unwrap()
            .unwrap();
        assert_eq!(la.token, 1);
        assert_eq!(
            b.acquire_lease("drift/prod", "replica-b", ttl).unwrap(),
            None
        );
        // The holder renews and keeps its token.
        let again = a
            .acquire_lease("drift/prod", "replica-a", ttl)
            .unwrap()
            .unwrap();
        assert_eq!(again.token, 1);
        assert!(a.lease_is_current(&again).unwrap());
        // Replica a dies: after the TTL, b takes over with a higher token,
        // and a's late writes can be told apart.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let lb = loop {
            if let Some(l) = b.acquire_lease("drift/prod", "replica-b", ttl).unwrap() {
                break l;
            }
            assert!(std::time::Instant::now() < deadline, "never expired");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(lb.token, 2);
        assert!(!a.lease_is_current(&again).unwrap());
        assert_eq!(a.renew_lease(&again, ttl).unwrap(), None);
        assert_eq!(
            b.lease_holder("drift/prod").unwrap().unwrap().holder,
            "replica-b"
        );
        // Releasing frees it at once, and the token still grows.
        b.release_lease(&lb).unwrap();
        let la2 = a
            .acquire_lease("drift/prod", "replica-a", ttl)
            .unwrap()
            .unwrap();
        assert_eq!(la2.token, 3);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_keeper_renews_and_another_replica_takes_over_when_it_dies() {
        for (_t, a, b) in replicas() {
            keeper_takeover(a, b).await;
        }
    }

    async fn keeper_takeover(a: Arc<Store>, b: Arc<Store>) {
        let ttl = Duration::from_millis(300);
        let keeper = LeaseKeeper::acquire(a.clone(), "schedule/nightly", "replica-a", ttl)
            .await
            .unwrap()
            .expect("free");
        // Renewal keeps it held well past one TTL.
        let until = std::time::Instant::now() + ttl * 3;
        while std::time::Instant::now() < until {
            assert!(
                LeaseKeeper::acquire(b.clone(), "schedule/nightly", "replica-b", ttl)
                    .await
                    .unwrap()
                    .is_none()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let held = keeper.lease().unwrap();
        // kill -9 of replica a: nothing renews any more.
        drop(keeper);
        let mut taken = None;
        for _ in 0..100 {
            taken = LeaseKeeper::acquire(b.clone(), "schedule/nightly", "replica-b", ttl)
                .await
                .unwrap();
            if taken.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut taken = taken.expect("replica b takes over after the TTL");
        assert!(taken.lease().unwrap().token > held.token);
        // The old holder's renewal now fails: its keeper would report loss.
        assert_eq!(a.renew_lease(&held, ttl).unwrap(), None);
        let lease = taken.lease().unwrap();
        b.release_lease(&lease).unwrap();
        a.acquire_lease("schedule/nightly", "replica-a", ttl)
            .unwrap()
            .expect("released");
        tokio::time::timeout(Duration::from_secs(5), taken.lost())
            .await
            .expect("b's keeper notices it lost the lease");
    }
}
