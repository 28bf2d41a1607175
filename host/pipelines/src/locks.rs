//! The queue of runs for one environment's lock, pure: who holds it, who
//! waits, and who is superseded. The store keeps one per environment (in a
//! table, under its transaction) and turns the answers into
//! [`crate::machine::Event::LockGranted`] and
//! [`crate::machine::Event::Superseded`] for the runs concerned.

use serde::{Deserialize, Serialize};

use crate::model::LockPolicy;

/// One environment's lock and its waiting runs, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockQueue {
    /// The run holding the lock.
    pub holder: Option<String>,
    /// Runs waiting, in the order they asked.
    pub waiting: Vec<String>,
}

/// What changed after a request or a release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockChange {
    /// The run that now holds the lock, if it changed hands.
    pub granted: Option<String>,
    /// Waiting runs a newer one replaced (policy `supersede`), with it.
    pub superseded: Vec<String>,
}

impl LockQueue {
    /// `run` asks for the lock (repeating a request is harmless). With
    /// `supersede`, a new waiting run replaces every older waiting run;
    /// the holder is never superseded.
    pub fn request(&mut self, run: &str, policy: LockPolicy) -> LockChange {
        if self.holder.as_deref() == Some(run) {
            return LockChange {
                granted: Some(run.to_string()),
                superseded: vec![],
            };
        }
        if self.waiting.iter().any(|w| w == run) {
            return LockChange::default();
        }
        if self.holder.is_none() {
            self.holder = Some(run.to_string());
            return LockChange {
                granted: Some(run.to_string()),
                superseded: vec![],
            };
        }
        let superseded = match policy {
            LockPolicy::Queue => vec![],
            LockPolicy::Supersede => std::mem::take(&mut self.waiting),
        };
        self.waiting.push(run.to_string());
        LockChange {
            granted: None,
            superseded,
        }
    }

    /// `run` gives the lock up (or stops waiting for it); the oldest
    /// waiting run gets it.
    pub fn release(&mut self, run: &str) -> LockChange {
        self.waiting.retain(|w| w != run);
        if self.holder.as_deref() != Some(run) {
            return LockChange::default();
        }
        self.holder = (!self.waiting.is_empty()).then(|| self.waiting.remove(0));
        LockChange {
            granted: self.holder.clone(),
            superseded: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(run: &str) -> LockChange {
        LockChange {
            granted: Some(run.into()),
            superseded: vec![],
        }
    }

    #[test]
    fn queue_grants_oldest_first_and_drops_no_one() {
        let mut q = LockQueue::default();
        assert_eq!(q.request("r1", LockPolicy::Queue), granted("r1"));
        assert_eq!(q.request("r2", LockPolicy::Queue), LockChange::default());
        assert_eq!(q.request("r3", LockPolicy::Queue), LockChange::default());
        assert_eq!(
            q.request("r2", LockPolicy::Queue),
            LockChange::default(),
            "asking again keeps the place"
        );
        assert_eq!(q.release("r1"), granted("r2"));
        assert_eq!(q.release("r2"), granted("r3"));
        assert_eq!(q.release("r3"), LockChange::default());
        assert_eq!(q, LockQueue::default());
    }

    #[test]
    fn supersede_replaces_older_waiters_but_never_the_holder() {
        let mut q = LockQueue::default();
        q.request("r1", LockPolicy::Supersede);
        q.request("r2", LockPolicy::Supersede);
        let change = q.request("r3", LockPolicy::Supersede);
        assert_eq!(change.superseded, ["r2"]);
        assert_eq!(q.holder.as_deref(), Some("r1"));
        assert_eq!(
            q.release("r1"),
            granted("r3"),
            "the newest commit deploys next"
        );
    }

    #[test]
    fn a_waiting_run_that_gives_up_leaves_the_queue() {
        let mut q = LockQueue::default();
        q.request("r1", LockPolicy::Queue);
        q.request("r2", LockPolicy::Queue);
        assert_eq!(q.release("r2"), LockChange::default());
        assert_eq!(q.release("r1"), LockChange::default());
        assert_eq!(q.holder, None);
    }
}
