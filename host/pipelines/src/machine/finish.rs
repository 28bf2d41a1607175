//! The end of a run: rolling back completed steps one at a time in reverse
//! completion order, then the `finally` phase, then the final status.

use std::time::Duration;

use serde_json::json;

use super::engine::Engine;
use super::{Action, Invocation, MachineError, Outcome, Phase, RunStatus, StepState, StopCause};
use crate::model::OnFailure;

impl Engine<'_> {
    /// The main steps are all done: roll back if asked, else run `finally`.
    pub(super) fn end_main(&mut self) {
        if self.run.stop.as_ref().is_some_and(|s| s.rollback) {
            self.note(None, "rolling back completed steps, newest first");
            self.run.phase = Phase::RollingBack;
        } else {
            self.run.phase = Phase::Finally;
        }
    }

    /// Drives the rollback phase: waits on the rollback in flight, else
    /// starts the next one, else moves on to `finally`.
    pub(super) fn roll_back_next(&mut self) {
        let in_flight = self.run.steps.iter().find_map(|(id, r)| match r.state {
            StepState::RollingBack { attempt, until_ms } => {
                Some((id.clone(), attempt, until_ms, r.deadline_ms))
            }
            _ => None,
        });
        if let Some((id, attempt, until_ms, deadline)) = in_flight {
            if self.now >= deadline.unwrap_or(u64::MAX) {
                if until_ms.is_none() {
                    self.actions.push(Action::CancelStep {
                        step: id.clone(),
                        attempt,
                    });
                }
                let limit = humantime::format_duration(Duration::from_millis(self.timeout_of(&id)));
                self.rollback_failed(&id, format!("rollback timed out after {limit}"));
            } else if until_ms.is_some_and(|u| self.now >= u) {
                self.start_rollback(&id, attempt, false);
            }
            return;
        }
        if !self.run.stop.as_ref().is_some_and(|s| s.rollback) {
            self.run.phase = Phase::Finally;
            return;
        }
        let next = self
            .p
            .steps
            .iter()
            .filter(|s| s.plugin.is_some())
            .filter_map(|s| {
                let r = &self.run.steps[&s.id];
                let ours = r.state == StepState::Succeeded && r.reused_from.is_none();
                ours.then_some((r.completed.unwrap_or(0), s.id.clone()))
            })
            .max();
        match next {
            Some((_, id)) => self.start_rollback(&id, 1, true),
            None => self.run.phase = Phase::Finally,
        }
    }

    pub(super) fn start_rollback(&mut self, id: &str, attempt: u32, fresh: bool) {
        let Ok(spec) = self.spec(id) else { return };
        let Some(plugin) = spec.plugin.clone() else {
            return;
        };
        if fresh {
            let deadline = self.now.saturating_add(self.timeout_of(id));
            if let Some(r) = self.run.steps.get_mut(id) {
                r.deadline_ms = Some(deadline);
            }
            self.note(Some(id), format!("rolling back (attempt {attempt})"));
        }
        let r = &self.run.steps[id];
        let deadline_ms = r.deadline_ms.unwrap_or(u64::MAX);
        let params = r.params.clone().unwrap_or_else(|| json!({}));
        self.set_state(
            id,
            StepState::RollingBack {
                attempt,
                until_ms: None,
            },
        );
        self.actions.push(Action::StartRollback(Invocation {
            step: id.to_string(),
            attempt,
            idempotency_key: format!("{}/rollback", self.run.idempotency_key(id)),
            plugin,
            params,
            inputs: self.inputs(id),
            environment: spec.environment.clone(),
            deadline_ms,
        }));
        self.timer(deadline_ms);
    }

    /// A rollback invocation returned.
    pub(super) fn rollback_finished(
        &mut self,
        id: &str,
        attempt: u32,
        outcome: Outcome,
    ) -> Result<(), MachineError> {
        self.spec(id)?;
        let expected = StepState::RollingBack {
            attempt,
            until_ms: None,
        };
        if *self.state(id) != expected {
            self.note(
                Some(id),
                format!("ignored a late result of rollback attempt {attempt}"),
            );
            return Ok(());
        }
        match outcome {
            Outcome::Succeeded { message, .. } => {
                self.note(Some(id), format!("rolled back: {message}"));
                self.set_state(id, StepState::RolledBack);
            }
            Outcome::RetryAfter { ms, message } => {
                let until = self.now.saturating_add(ms);
                self.set_state(
                    id,
                    StepState::RollingBack {
                        attempt,
                        until_ms: Some(until),
                    },
                );
                let deadline = self.run.steps[id].deadline_ms.unwrap_or(u64::MAX);
                self.timer(until.min(deadline));
                self.note(
                    Some(id),
                    format!("{message} (rollback checks again in {ms} ms)"),
                );
            }
            Outcome::Failed { kind, message } => {
                self.rollback_failed(id, format!("{kind}: {message}"))
            }
        }
        Ok(())
    }

    pub(super) fn rollback_failed(&mut self, id: &str, message: String) {
        self.note(Some(id), format!("rollback failed: {message}"));
        if let Some(r) = self.run.steps.get_mut(id) {
            r.deadline_ms = None;
            r.state = StepState::RollbackFailed { message };
        }
    }

    /// The status the run has so far (what `finally` sees as `run.status`).
    pub(super) fn outcome(&self) -> RunStatus {
        let rollback_failed = self
            .run
            .steps
            .values()
            .any(|r| matches!(r.state, StepState::RollbackFailed { .. }));
        match &self.run.stop {
            Some(stop) => match &stop.cause {
                StopCause::Cancelled { .. } => RunStatus::Cancelled,
                StopCause::Superseded { .. } => RunStatus::Superseded,
                StopCause::StepFailed { .. } if stop.rollback && !rollback_failed => {
                    RunStatus::RolledBack
                }
                StopCause::StepFailed { .. } => RunStatus::Failed,
            },
            None if self.failed_finally().is_some() => RunStatus::Failed,
            None => RunStatus::Succeeded,
        }
    }

    fn failed_finally(&self) -> Option<&str> {
        self.p.finally.iter().find_map(|s| {
            let failed = matches!(self.run.steps[&s.id].state, StepState::Failed { .. });
            (failed && s.on_failure != OnFailure::Continue).then_some(s.id.as_str())
        })
    }

    /// One line on why the main steps stopped, or how the run went.
    pub(super) fn stop_reason(&self) -> String {
        let Some(stop) = &self.run.stop else {
            return match self.failed_finally() {
                Some(id) => format!("finally step {id} failed"),
                None => "all steps succeeded".into(),
            };
        };
        match &stop.cause {
            StopCause::StepFailed { step } => {
                let why = match &self.run.steps[step].state {
                    StepState::Failed { kind, message } => format!(" ({kind}: {message})"),
                    _ => String::new(),
                };
                format!("step {step} failed{why}")
            }
            StopCause::Cancelled { by } => format!("cancelled by {by}"),
            StopCause::Superseded {
                environment,
                by_run,
            } => {
                format!("superseded by run {by_run} in the queue for environment {environment}")
            }
        }
    }

    /// Every `finally` step is done: record the final status.
    pub(super) fn finish(&mut self) {
        let status = self.outcome();
        let mut reason = self.stop_reason();
        let unrolled: Vec<&str> = self
            .run
            .steps
            .iter()
            .filter(|(_, r)| matches!(r.state, StepState::RollbackFailed { .. }))
            .map(|(id, _)| id.as_str())
            .collect();
        if status == RunStatus::RolledBack {
            reason.push_str("; completed steps rolled back");
        } else if !unrolled.is_empty() {
            reason.push_str(&format!(
                "; rollback did not complete for {}",
                unrolled.join(", ")
            ));
        }
        for environment in std::mem::take(&mut self.run.locks) {
            self.actions.push(Action::ReleaseLock { environment });
        }
        self.run.status = status;
        self.run.phase = Phase::Done;
        self.run.reason = Some(reason.clone());
        self.actions.push(Action::FinishRun { status, reason });
    }
}
