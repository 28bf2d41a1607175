//! Admission of invocations: a per-plugin limit, taken before the server's
//! global one, so that a plugin spinning until its deadline holds at most its
//! own share of invoke slots and the other plugins keep being served.
//!
//! The per-plugin count lives with the plugin's name (the registry's slot),
//! not with a loaded version: calls of the old version still running after a
//! hot swap count against the new version's limit, which is read on every
//! admission.

use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Which concurrency limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// The plugin's own limit (manifest `[limits] max_concurrent`, or the
    /// server's `max_concurrent_per_plugin`).
    Plugin,
    /// The server's `[limits] max_concurrent`, shared by every plugin.
    Server,
}

impl LimitScope {
    /// `plugin` or `server`: the error details and metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Plugin => "plugin",
            LimitScope::Server => "server",
        }
    }
}

/// The calls of one plugin (all its versions) running at once.
#[derive(Debug, Default)]
pub struct PluginConcurrency {
    /// Calls admitted and not yet finished; also exported as a gauge.
    in_flight: Gauge,
    /// Signalled whenever a call finishes.
    freed: Notify,
}

/// Held while an admitted call runs; gives its place back when dropped.
#[derive(Debug)]
pub struct PluginPermit<'a>(&'a PluginConcurrency);

impl PluginConcurrency {
    /// A counter that also shows in `in_flight` (a gauge a metrics registry
    /// may hold a clone of).
    pub fn new(in_flight: Gauge) -> PluginConcurrency {
        PluginConcurrency {
            in_flight,
            freed: Notify::new(),
        }
    }

    /// Calls of this plugin running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.get().max(0) as usize
    }

    /// Takes a place if fewer than `limit` calls run; otherwise waits until
    /// one finishes or `deadline` passes (then `None`).
    pub async fn acquire(&self, limit: usize, deadline: Instant) -> Option<PluginPermit<'_>> {
        loop {
            // Registered before the check, so a call finishing in between
            // still wakes this one.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(p) = self.try_acquire(limit) {
                return Some(p);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return None;
            }
        }
    }

    /// Takes a place if fewer than `limit` calls run.
    pub fn try_acquire(&self, limit: usize) -> Option<PluginPermit<'_>> {
        let limit = limit as i64;
        self.in_flight
            .inner()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| PluginPermit(self))
    }
}

impl Drop for PluginPermit<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
        // Every waiter re-checks: the limit may have changed since it queued.
        self.0.freed.notify_waiters();
    }
}

/// The deadline of a call that starts waiting now for `wait`.
pub(super) fn deadline_after(wait: Duration) -> Instant {
    Instant::now() + wait
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_most_limit_run_and_a_finished_call_admits_a_waiter() {
        let c = PluginConcurrency::default();
        let a = c.try_acquire(2).unwrap();
        let _b = c.try_acquire(2).unwrap();
        assert!(c.try_acquire(2).is_none());
        assert_eq!(c.in_flight(), 2);
        let soon = deadline_after(Duration::from_millis(10));
        assert!(c.acquire(2, soon).await.is_none(), "no place was free");
        let waiter = c.acquire(2, deadline_after(Duration::from_secs(30)));
        let release = async {
            tokio::task::yield_now().await;
            drop(a);
        };
        let (admitted, ()) = tokio::join!(waiter, release);
        assert!(admitted.is_some());
        assert_eq!(c.in_flight(), 2);
        drop(admitted);
        assert_eq!(c.in_flight(), 1);
    }

    #[tokio::test]
    async fn a_lower_limit_applies_to_calls_already_running() {
        let c = PluginConcurrency::default();
        let mut held: Vec<_> = (0..4).map(|_| c.try_acquire(4).unwrap()).collect();
        // The limit dropped to 2 (a new version): nobody enters until three finish.
        assert!(c.try_acquire(2).is_none());
        held.truncate(2);
        assert_eq!(c.in_flight(), 2);
        assert!(c.try_acquire(2).is_none());
        held.pop();
        assert!(c.try_acquire(2).is_some());
    }
}
