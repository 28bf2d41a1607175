//! The run state machine, pure: given a pipeline, a run's records, an
//! [`Event`] and the current time, [`Machine::apply`] returns the new records
//! and the [`Action`]s for the executor. It never reads a clock, a database or
//! a plugin, so every rule is a unit test and a journal replays exactly.
//!
//! The rules:
//! - steps whose `needs` are all done start together; a false `if` skips a
//!   step, and a step without `if` is skipped when a need did not succeed
//!   (a need that failed with `on_failure: continue` counts as succeeded);
//! - a failed attempt is retried with backoff and jitter when its error kind
//!   is listed; `retry-after` re-runs the same attempt later, and its waits
//!   count against the attempt's timeout;
//! - a final failure applies the step's `on_failure`: `stop` starts nothing
//!   new (running attempts and `retry-after` polls finish), `rollback` does
//!   the same and then rolls back the completed steps one at a time in
//!   reverse completion order, `continue` carries on;
//! - `finally` steps always run, after the main steps and any rollback;
//! - every attempt of a step carries the idempotency key `<run>/<step>`; an
//!   attempt in flight when the host restarts runs again as attempt n+1.
//!
//! Durable time is [`Run::next_wakeup`]; [`Action::ScheduleTimer`] says the
//! same for executors that keep timers in memory.

mod action;
mod control;
mod engine;
mod finish;
mod record;
mod rerun;
mod schedule;

use crate::expr::OutputLimits;
use crate::model::Pipeline;

pub use action::{Action, Decision, Event, Invocation, Outcome, RoleGrant};
pub use record::{
    ApprovalRecord, Lineage, Phase, Run, RunStatus, StepRecord, StepState, Stop, StopCause,
};

/// Defaults and caps the machine applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Timeout of a step attempt that sets none.
    pub step_timeout_ms: u64,
    /// Timeout of an approval gate that sets none.
    pub approval_timeout_ms: u64,
    /// Caps on a step's outputs.
    pub outputs: OutputLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            step_timeout_ms: 60 * 60 * 1000,
            approval_timeout_ms: 72 * 60 * 60 * 1000,
            outputs: OutputLimits::default(),
        }
    }
}

/// Why an event was refused; the run is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineError {
    /// The run already finished.
    #[error("run {0} has already finished")]
    Finished(String),
    /// `Start` on a run that is not queued.
    #[error("run {0} has already started")]
    AlreadyStarted(String),
    /// An event for a run that was never started.
    #[error("run {0} has not started")]
    NotStarted(String),
    /// The event names a step the pipeline does not have.
    #[error("no step {0:?} in this pipeline")]
    UnknownStep(String),
    /// An approval decision for a step that is not waiting for one.
    #[error("step {step:?} is not waiting for approval (it is {state})")]
    NotAwaitingApproval {
        /// The step.
        step: String,
        /// Its state.
        state: String,
    },
    /// The user started the run and the gate does not allow self-approval.
    #[error("{0} started this run and may not approve it")]
    SelfApproval(String),
    /// The user lacks the approvers' role.
    #[error("{user} does not hold role {role:?} in project {project:?}")]
    NotApprover {
        /// Who tried.
        user: String,
        /// The role required.
        role: String,
        /// Where it must be held.
        project: String,
    },
    /// The user already approved or rejected this gate.
    #[error("{user} has already decided on step {step:?}")]
    AlreadyDecided {
        /// Who.
        user: String,
        /// The gate.
        step: String,
    },
    /// A lock event for an environment no step is waiting for.
    #[error("run is not waiting for environment {0:?}")]
    NotWaitingForLock(String),
    /// Rerun from a step that is not a main step of the pipeline.
    #[error("cannot rerun from {0:?}: not a main step of this pipeline")]
    BadRerunStep(String),
    /// Rerun of a run that has not finished.
    #[error("run {0} is still in progress; cancel it before rerunning")]
    StillRunning(String),
}

/// The outcome of one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The run after the event: journal it before carrying out `actions`.
    pub run: Run,
    /// What the executor must do, in order.
    pub actions: Vec<Action>,
}

/// The state machine for one pipeline revision.
#[derive(Debug, Clone, Copy)]
pub struct Machine<'a> {
    /// The pipeline revision the run pinned.
    pub pipeline: &'a Pipeline,
    /// Defaults and caps.
    pub limits: Limits,
}

impl<'a> Machine<'a> {
    /// A machine with default limits.
    pub fn new(pipeline: &'a Pipeline) -> Self {
        Self {
            pipeline,
            limits: Limits::default(),
        }
    }

    /// Applies `event` at time `now_ms` (Unix ms) to `run`.
    pub fn apply(&self, run: &Run, event: Event, now_ms: u64) -> Result<Transition, MachineError> {
        let mut engine = engine::Engine::new(self, run.clone(), now_ms);
        engine.handle(event)?;
        Ok(engine.into_transition())
    }

    /// A new run of a finished one that reuses the outputs of the steps that
    /// succeeded and do not depend on `from_step`, and runs the rest again.
    pub fn rerun_from(
        &self,
        previous: &Run,
        from_step: &str,
        new_id: &str,
        started_by: Option<&str>,
    ) -> Result<Run, MachineError> {
        rerun::rerun_from(self.pipeline, previous, from_step, new_id, started_by)
    }
}

#[cfg(test)]
mod tests;
