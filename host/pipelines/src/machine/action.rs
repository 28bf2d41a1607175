//! What goes into the machine ([`Event`]) and what comes out ([`Action`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::RunStatus;
use crate::model::{ErrorKind, LockPolicy, PluginRef};

/// Something that happened to a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// Begin a queued run (after the executor's concurrency limits let it).
    Start,
    /// A step attempt returned.
    StepFinished {
        /// The step.
        step: String,
        /// The attempt, from its [`Invocation`]; a stale one is ignored.
        attempt: u32,
        /// What it returned.
        outcome: Outcome,
    },
    /// A rollback invocation returned.
    RollbackFinished {
        /// The step rolled back.
        step: String,
        /// The rollback attempt, from its [`Invocation`].
        attempt: u32,
        /// What it returned.
        outcome: Outcome,
    },
    /// An approver decided on a gate.
    Approval(Decision),
    /// The run now holds an environment's lock.
    LockGranted {
        /// The environment.
        environment: String,
    },
    /// A newer run took this one's place in an environment's queue.
    Superseded {
        /// The environment.
        environment: String,
        /// The newer run.
        by_run: String,
    },
    /// A user cancels the run; running attempts are stopped, completed
    /// steps are rolled back when `rollback`, then `finally` runs.
    Cancel {
        /// Who.
        by: String,
        /// Roll back completed steps first.
        rollback: bool,
    },
    /// A timer fired (or the executor polls): deadlines and waits are
    /// checked against `now`.
    Timer,
    /// The host restarted: attempts that were in flight run again as the
    /// next attempt; waits and lock requests are re-issued.
    Resumed,
}

/// What a step (or rollback) invocation returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// It did its work.
    Succeeded {
        /// Named outputs.
        outputs: BTreeMap<String, Value>,
        /// One-line summary.
        message: String,
    },
    /// Not finished: run the same attempt again after `ms`.
    RetryAfter {
        /// Delay in ms.
        ms: u64,
        /// One-line summary.
        message: String,
    },
    /// It failed (the plugin's error, a trap, ...).
    Failed {
        /// The error kind; decides whether it is retried.
        kind: ErrorKind,
        /// The message.
        message: String,
    },
}

/// A role a user holds in a project (resolved by the API layer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleGrant {
    /// The project.
    pub project: String,
    /// The role.
    pub role: String,
}

/// An approval decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The gate.
    pub step: String,
    /// Who decides.
    pub user: String,
    /// The roles the user holds.
    pub roles: Vec<RoleGrant>,
    /// Approve or reject.
    pub approve: bool,
    /// Their comment (kept in the record and audit).
    pub comment: String,
}

/// One call of a plugin's `run` or `rollback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    /// The step.
    pub step: String,
    /// The attempt (for a rollback: the rollback attempt).
    pub attempt: u32,
    /// `<run>/<step>` for `run`, `<run>/<step>/rollback` for `rollback`;
    /// the same across attempts, so the step can make itself idempotent.
    pub idempotency_key: String,
    /// The plugin to call.
    pub plugin: PluginRef,
    /// Params with templates rendered.
    pub params: Value,
    /// Outputs of the steps it needs (all main steps for `finally`), as
    /// `step.output` keys, for the plugin's context `inputs`.
    pub inputs: BTreeMap<String, Value>,
    /// The environment it deploys into, if any.
    pub environment: Option<String>,
    /// When the attempt times out, Unix ms; the executor aborts it then.
    pub deadline_ms: u64,
}

/// Something the executor must do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Call the plugin's `run`; report with [`Event::StepFinished`].
    StartStep(Invocation),
    /// Call the plugin's `rollback`; report with [`Event::RollbackFinished`].
    StartRollback(Invocation),
    /// Abort an attempt (timeout or cancel); its late result is ignored.
    CancelStep {
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
    },
    /// Ask the approvers; report with [`Event::Approval`].
    RequestApproval {
        /// The gate.
        step: String,
        /// Role approvers must hold.
        role: String,
        /// Project the role is held in.
        project: String,
        /// Distinct approvals needed.
        required: u32,
        /// When the gate times out, Unix ms.
        deadline_ms: u64,
        /// Shown to approvers.
        message: Option<String>,
    },
    /// Queue for an environment's lock; report [`Event::LockGranted`] or
    /// [`Event::Superseded`]. Idempotent: re-issued after a restart.
    AcquireLock {
        /// The environment.
        environment: String,
        /// How its queue is ordered.
        policy: LockPolicy,
    },
    /// The run is done with an environment (every step using it is done
    /// and none can be rolled back any more): hand the lock to the next run.
    ReleaseLock {
        /// The environment.
        environment: String,
    },
    /// Send [`Event::Timer`] at or after this time (Unix ms).
    ScheduleTimer {
        /// When.
        at_ms: u64,
    },
    /// Record an engine event in the run's log.
    Note {
        /// The step it is about, if any.
        step: Option<String>,
        /// What happened.
        message: String,
    },
    /// The run is over: record the status. Its locks were released by the
    /// [`Action::ReleaseLock`]s before this one.
    FinishRun {
        /// Final status.
        status: RunStatus,
        /// One line on why.
        reason: String,
    },
}
