//! One task drives a run at a time: a step that ends drives its run at
//! once from its own task, with its own result when it can (one journal
//! write); an event that comes while another task drives the run makes
//! that task drive it once more.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use super::Engine;
use crate::store::AttemptResult;

impl Engine {
    /// Drives run `id` now in a task of its own (an event for it was
    /// journaled), without waiting for the driver's next turn; if a task
    /// drives it already, that task drives it once more.
    pub(super) fn kick(self: &Arc<Self>, id: &str) {
        if !self.begin_driving(id) {
            return;
        }
        let (engine, id) = (self.clone(), id.to_string());
        tokio::spawn(async move { engine.drive_exclusively(&id, false).await });
    }

    /// Runs driven by a task now, each with its "drive once more" mark.
    pub(super) fn driving_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.driving.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks run `id` as driven by the caller, who must then call
    /// [`Engine::drive_exclusively`]; `false` (and the run marked to be
    /// driven again) when another task drives it.
    pub(super) fn begin_driving(&self, id: &str) -> bool {
        match self.driving_lock().entry(id.to_string()) {
            Entry::Occupied(mut again) => {
                *again.get_mut() = true;
                false
            }
            Entry::Vacant(v) => {
                v.insert(false);
                true
            }
        }
    }

    /// Turns of run `id` until no event came for it meanwhile; one task at
    /// a time per run (see [`Engine::begin_driving`]).
    pub(super) async fn drive_exclusively(self: &Arc<Self>, id: &str, may_start: bool) {
        let mut start = may_start;
        loop {
            if let Err(err) = self.drive(id, start).await {
                tracing::error!(run = %id, "driving a run: {err}");
            }
            start = false;
            if !self.drive_again(id) {
                return;
            }
        }
    }

    /// After a turn of run `id` by the task that holds it: `true` (and the
    /// mark reset) when an event came meanwhile, so that the task drives
    /// the run once more; else the run is let go.
    fn drive_again(&self, id: &str) -> bool {
        let mut driving = self.driving_lock();
        match driving.get_mut(id) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                driving.remove(id);
                false
            }
        }
    }

    /// Hands a finished attempt's result to its run. When no other task
    /// drives the run, this one drives it with the result at once (one
    /// journal write, see [`Engine::drive_result`]); otherwise, or when
    /// that cannot be done here, the result goes to the run's inbox and the
    /// run is driven from there.
    pub(super) async fn finish_attempt(self: &Arc<Self>, result: AttemptResult) {
        let id = result.run.clone();
        if !self.begin_driving(&id) {
            // The task driving the run drives it once more, after this.
            self.queue_result(result).await;
            self.kick(&id);
            return;
        }
        match self.drive_result(&result).await {
            Ok(true) => {
                if self.drive_again(&id) {
                    self.drive_exclusively(&id, false).await;
                }
                return;
            }
            Ok(false) => {}
            Err(e) => tracing::error!(run = %id, "driving a run with a step result: {e}"),
        }
        self.queue_result(result).await;
        self.drive_exclusively(&id, false).await;
    }

    /// Journals a finished attempt's result in its run's inbox.
    async fn queue_result(&self, result: AttemptResult) {
        let id = result.run.clone();
        if let Err(e) = self.db.attempt_finished(result).await {
            // Journaled as running: a resumed run runs it again as the next attempt.
            tracing::error!(run = %id, "recording a step result: {e}");
        }
    }
}
