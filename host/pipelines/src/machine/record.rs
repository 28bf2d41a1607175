//! What the machine keeps per run and per step: the records the host
//! journals (all serde, so they can be stored as JSON or mapped to columns).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{ErrorKind, Pipeline};

/// A pipeline run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Unique run id.
    pub id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// The pipeline's project.
    pub project: String,
    /// What started it (`kind`, `repo`, `ref`, `sha`, `pusher`...).
    pub trigger: Value,
    /// Resolved parameters.
    pub params: BTreeMap<String, Value>,
    /// Who started it (the pusher or the API user); may not self-approve.
    pub started_by: Option<String>,
    /// Where the run is.
    pub status: RunStatus,
    /// Which part of the run is executing.
    pub phase: Phase,
    /// Set once the main steps stop early: why, and whether to roll back.
    pub stop: Option<Stop>,
    /// Every main and `finally` step, by id.
    pub steps: BTreeMap<String, StepRecord>,
    /// Environments whose lock this run holds (released when it finishes).
    pub locks: BTreeSet<String>,
    /// Counter giving each step success its completion order.
    pub completions: u64,
    /// Set when this run reruns an earlier one.
    pub lineage: Option<Lineage>,
    /// One line on how it ended.
    pub reason: Option<String>,
}

/// The overall state of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// Created; waits for `Start` (the executor applies concurrency limits).
    Queued,
    /// Started and not finished.
    Running,
    /// Every step succeeded, was skipped, or failed with `continue`.
    Succeeded,
    /// A step failed (or a rollback or `finally` step did).
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// A step failed and every completed step was rolled back.
    RolledBack,
    /// A newer run waiting for the same environment took its place.
    Superseded,
}

impl RunStatus {
    /// The kebab-case name, as expressions see it in `run.status`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::RolledBack => "rolled-back",
            Self::Superseded => "superseded",
        }
    }
}

/// Which part of the run is executing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The main steps.
    Main,
    /// Rolling back completed steps, newest first.
    RollingBack,
    /// The `finally` steps.
    Finally,
    /// Finished.
    Done,
}

/// Why the main steps stopped early.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stop {
    /// The cause.
    pub cause: StopCause,
    /// Whether completed steps are rolled back.
    pub rollback: bool,
}

/// The cause of an early stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "kebab-case")]
pub enum StopCause {
    /// A step failed with `on_failure: stop` or `rollback`.
    StepFailed {
        /// The step.
        step: String,
    },
    /// A user cancelled the run.
    Cancelled {
        /// Who.
        by: String,
    },
    /// A newer run took this run's place in an environment's queue.
    Superseded {
        /// The environment.
        environment: String,
        /// The newer run.
        by_run: String,
    },
}

/// A rerun's origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The run this one reruns.
    pub parent: String,
    /// The step it reruns from.
    pub from_step: String,
    /// Steps whose outputs were reused from the parent.
    pub reused: Vec<String>,
}

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Where the step is.
    pub state: StepState,
    /// Attempts started so far (0: never started).
    pub attempt: u32,
    /// Retries spent on failures (crash re-runs are not counted).
    pub retries_used: u32,
    /// When the current attempt (or rollback) times out, Unix ms.
    pub deadline_ms: Option<u64>,
    /// The params of the last attempt, with templates rendered.
    pub params: Option<Value>,
    /// Outputs, once succeeded.
    pub outputs: BTreeMap<String, Value>,
    /// Completion order among the run's successes (rollback goes backwards).
    pub completed: Option<u64>,
    /// Decisions on an approval gate.
    pub approvals: Vec<ApprovalRecord>,
    /// The run whose outputs this step reused, in a rerun.
    pub reused_from: Option<String>,
    /// The latest human-readable message (plugin summary, skip reason...).
    pub message: Option<String>,
}

impl StepRecord {
    pub(crate) fn pending() -> Self {
        Self {
            state: StepState::Pending,
            attempt: 0,
            retries_used: 0,
            deadline_ms: None,
            params: None,
            outputs: BTreeMap::new(),
            completed: None,
            approvals: Vec::new(),
            reused_from: None,
            message: None,
        }
    }
}

/// One approver's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// Who decided.
    pub user: String,
    /// Approved or rejected.
    pub approve: bool,
    /// Their comment.
    pub comment: String,
    /// When, Unix ms.
    pub at_ms: u64,
}

/// The state of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum StepState {
    /// Not started.
    Pending,
    /// Waiting for its environment's lock.
    WaitingLock {
        /// The environment.
        environment: String,
    },
    /// An attempt is executing.
    Running {
        /// The attempt.
        attempt: u32,
    },
    /// Waiting to run `attempt`: a retry after a failure (a new attempt) or
    /// the same attempt again after `retry-after`.
    WaitingRetry {
        /// The attempt to run.
        attempt: u32,
        /// When, Unix ms.
        until_ms: u64,
    },
    /// An approval gate waiting for decisions.
    WaitingApproval,
    /// Done; its outputs are in the record.
    Succeeded,
    /// Failed after its retries.
    Failed {
        /// Why.
        kind: ErrorKind,
        /// The plugin's or engine's message.
        message: String,
    },
    /// Not run: its `if` was false or a need did not succeed.
    Skipped {
        /// Why.
        reason: String,
    },
    /// Stopped or never started because the run was cancelled or stopped.
    Cancelled {
        /// Why.
        reason: String,
    },
    /// Its rollback is executing (or waiting after `retry-after`).
    RollingBack {
        /// Rollback invocations so far.
        attempt: u32,
        /// Set while waiting for a `retry-after`.
        until_ms: Option<u64>,
    },
    /// Its rollback succeeded.
    RolledBack,
    /// Its rollback failed or timed out.
    RollbackFailed {
        /// Why.
        message: String,
    },
}

impl StepState {
    /// The kebab-case name, as expressions see it in `steps.<id>.status`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::WaitingLock { .. } => "waiting-lock",
            Self::Running { .. } => "running",
            Self::WaitingRetry { .. } => "waiting-retry",
            Self::WaitingApproval => "waiting-approval",
            Self::Succeeded => "succeeded",
            Self::Failed { .. } => "failed",
            Self::Skipped { .. } => "skipped",
            Self::Cancelled { .. } => "cancelled",
            Self::RollingBack { .. } => "rolling-back",
            Self::RolledBack => "rolled-back",
            Self::RollbackFailed { .. } => "rollback-failed",
        }
    }

    /// Whether the step is done: it will not run (again) in this phase.
    pub fn is_terminal(&self) -> bool {
        !matches!(
            self,
            Self::Pending
                | Self::WaitingLock { .. }
                | Self::Running { .. }
                | Self::WaitingRetry { .. }
                | Self::WaitingApproval
                | Self::RollingBack { .. }
        )
    }
}

impl Run {
    /// A queued run of `pipeline` with every step pending.
    pub fn new(
        pipeline: &Pipeline,
        id: &str,
        trigger: Value,
        params: BTreeMap<String, Value>,
        started_by: Option<&str>,
    ) -> Self {
        Self {
            id: id.to_string(),
            pipeline: pipeline.name.clone(),
            project: pipeline.project.clone(),
            trigger,
            params,
            started_by: started_by.map(str::to_string),
            status: RunStatus::Queued,
            phase: Phase::Main,
            stop: None,
            steps: pipeline
                .all_steps()
                .map(|s| (s.id.clone(), StepRecord::pending()))
                .collect(),
            locks: BTreeSet::new(),
            completions: 0,
            lineage: None,
            reason: None,
        }
    }

    /// The idempotency key every attempt of `step` carries: `<run>/<step>`.
    pub fn idempotency_key(&self, step: &str) -> String {
        format!("{}/{step}", self.id)
    }

    /// The earliest time the machine must be woken with [`super::Event::Timer`]
    /// (a deadline or the end of a wait), if any; store it with the run.
    pub fn next_wakeup(&self) -> Option<u64> {
        self.steps
            .values()
            .filter_map(|r| match &r.state {
                StepState::Running { .. } | StepState::WaitingApproval => r.deadline_ms,
                StepState::WaitingRetry { until_ms, .. } => {
                    Some((*until_ms).min(r.deadline_ms.unwrap_or(u64::MAX)))
                }
                StepState::RollingBack { until_ms, .. } => match (until_ms, r.deadline_ms) {
                    (Some(u), Some(d)) => Some((*u).min(d)),
                    (u, d) => u.or(d),
                },
                _ => None,
            })
            .min()
    }
}
