//! The engine for one event: checks it against the run, updates the step
//! records, then lets [`Engine::advance`] start whatever became ready.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{
    Action, ApprovalRecord, Decision, Event, Limits, Machine, MachineError, Outcome, Phase, Run,
    RunStatus, StepState, Stop, StopCause, Transition,
};
use crate::expr::check_outputs;
use crate::model::{ErrorKind, OnFailure, Pipeline, Step};

pub(super) struct Engine<'a> {
    pub(super) p: &'a Pipeline,
    pub(super) limits: Limits,
    pub(super) now: u64,
    pub(super) run: Run,
    pub(super) actions: Vec<Action>,
}

impl<'a> Engine<'a> {
    pub(super) fn new(m: &Machine<'a>, run: Run, now: u64) -> Self {
        Self {
            p: m.pipeline,
            limits: m.limits,
            now,
            run,
            actions: Vec::new(),
        }
    }

    pub(super) fn into_transition(self) -> Transition {
        Transition {
            run: self.run,
            actions: self.actions,
        }
    }

    pub(super) fn note(&mut self, step: Option<&str>, message: impl Into<String>) {
        self.actions.push(Action::Note {
            step: step.map(str::to_string),
            message: message.into(),
        });
    }

    pub(super) fn spec(&self, id: &str) -> Result<&'a Step, MachineError> {
        self.p
            .step(id)
            .ok_or_else(|| MachineError::UnknownStep(id.to_string()))
    }

    pub(super) fn state(&self, id: &str) -> &StepState {
        &self.run.steps[id].state
    }

    pub(super) fn set_state(&mut self, id: &str, state: StepState) {
        if let Some(r) = self.run.steps.get_mut(id) {
            r.state = state;
        }
    }

    pub(super) fn handle(&mut self, event: Event) -> Result<(), MachineError> {
        let id = self.run.id.clone();
        match (&event, self.run.status) {
            (_, _) if self.run.phase == Phase::Done => return Err(MachineError::Finished(id)),
            (Event::Start, RunStatus::Queued) => {
                self.run.status = RunStatus::Running;
                self.note(None, "run started");
            }
            (Event::Start, _) => return Err(MachineError::AlreadyStarted(id)),
            (Event::Cancel { by, rollback }, _) => self.cancel(by, *rollback),
            (_, RunStatus::Queued) => return Err(MachineError::NotStarted(id)),
            _ => {}
        }
        match event {
            Event::StepFinished {
                step,
                attempt,
                outcome,
            } => self.step_finished(&step, attempt, outcome)?,
            Event::RollbackFinished {
                step,
                attempt,
                outcome,
            } => self.rollback_finished(&step, attempt, outcome)?,
            Event::Approval(d) => self.decide(d)?,
            Event::LockGranted { environment } => self.lock_granted(&environment),
            Event::Superseded {
                environment,
                by_run,
            } => self.superseded(environment, by_run)?,
            Event::Resumed => self.resume(),
            Event::Start | Event::Cancel { .. } | Event::Timer => {}
        }
        self.advance();
        Ok(())
    }

    fn step_finished(
        &mut self,
        id: &str,
        attempt: u32,
        outcome: Outcome,
    ) -> Result<(), MachineError> {
        let spec = self.spec(id)?;
        if *self.state(id) != (StepState::Running { attempt }) {
            self.note(
                Some(id),
                format!("ignored a late result of attempt {attempt}"),
            );
            return Ok(());
        }
        match outcome {
            Outcome::Succeeded { outputs, message } => {
                match check_outputs(&outputs, &spec.output_names(), self.limits.outputs) {
                    Ok(()) => self.succeed(id, outputs, message),
                    Err(e) => self.fail_attempt(id, ErrorKind::Output, e),
                }
            }
            Outcome::RetryAfter { ms, message } => {
                let until_ms = self.now.saturating_add(ms);
                self.set_state(id, StepState::WaitingRetry { attempt, until_ms });
                self.timer(until_ms.min(self.run.steps[id].deadline_ms.unwrap_or(u64::MAX)));
                self.note(Some(id), format!("{message} (checking again in {ms} ms)"));
            }
            Outcome::Failed { kind, message } => self.fail_attempt(id, kind, message),
        }
        Ok(())
    }

    pub(super) fn succeed(&mut self, id: &str, outputs: BTreeMap<String, Value>, message: String) {
        self.run.completions += 1;
        let seq = self.run.completions;
        if let Some(r) = self.run.steps.get_mut(id) {
            r.state = StepState::Succeeded;
            r.outputs = outputs;
            r.completed = Some(seq);
            r.deadline_ms = None;
            r.message = Some(message);
        }
    }

    /// An attempt failed: retry it if its policy says so, else fail the
    /// step and apply `on_failure`.
    pub(super) fn fail_attempt(&mut self, id: &str, kind: ErrorKind, message: String) {
        let Ok(spec) = self.spec(id) else { return };
        let policy = spec.retry_policy();
        let r = &self.run.steps[id];
        let (attempt, used) = (r.attempt, r.retries_used);
        // An expression gives the same error every time: never retried.
        if kind != ErrorKind::Expression && policy.allows(used, kind) {
            let delay = policy.backoff.delay_ms(used + 1, seed(&self.run.id, id));
            let until_ms = self.now.saturating_add(delay);
            if let Some(r) = self.run.steps.get_mut(id) {
                r.retries_used += 1;
                r.deadline_ms = None;
                r.state = StepState::WaitingRetry {
                    attempt: attempt + 1,
                    until_ms,
                };
            }
            self.timer(until_ms);
            let retry = used + 1;
            self.note(
                Some(id),
                format!("attempt {attempt} failed ({kind}: {message}); retry {retry} of {} in {delay} ms", policy.count),
            );
            return;
        }
        self.note(Some(id), format!("failed ({kind}): {message}"));
        if let Some(r) = self.run.steps.get_mut(id) {
            r.deadline_ms = None;
            r.state = StepState::Failed { kind, message };
        }
        if self.p.is_finally(id) {
            return;
        }
        let rollback = match spec.on_failure {
            OnFailure::Continue => return,
            OnFailure::Stop => false,
            OnFailure::Rollback => true,
        };
        match &mut self.run.stop {
            Some(stop) => stop.rollback |= rollback,
            None => {
                self.run.stop = Some(Stop {
                    cause: StopCause::StepFailed {
                        step: id.to_string(),
                    },
                    rollback,
                });
            }
        }
    }

    fn decide(&mut self, d: Decision) -> Result<(), MachineError> {
        let spec = self.spec(&d.step)?;
        let Some(gate) = &spec.approval else {
            return Err(self.not_waiting(&d.step));
        };
        if *self.state(&d.step) != StepState::WaitingApproval {
            return Err(self.not_waiting(&d.step));
        }
        if !gate.allow_self && self.run.started_by.as_deref() == Some(d.user.as_str()) {
            return Err(MachineError::SelfApproval(d.user));
        }
        let project = gate
            .approvers
            .project
            .clone()
            .unwrap_or_else(|| self.p.project.clone());
        if !d
            .roles
            .iter()
            .any(|g| g.project == project && g.role == gate.approvers.role)
        {
            return Err(MachineError::NotApprover {
                user: d.user,
                role: gate.approvers.role.clone(),
                project,
            });
        }
        let record = self
            .run
            .steps
            .get_mut(&d.step)
            .ok_or_else(|| MachineError::UnknownStep(d.step.clone()))?;
        if record.approvals.iter().any(|a| a.user == d.user) {
            return Err(MachineError::AlreadyDecided {
                user: d.user,
                step: d.step,
            });
        }
        record.approvals.push(ApprovalRecord {
            user: d.user.clone(),
            approve: d.approve,
            comment: d.comment.clone(),
            at_ms: self.now,
        });
        let approved: Vec<&ApprovalRecord> =
            record.approvals.iter().filter(|a| a.approve).collect();
        let outputs = BTreeMap::from([
            (
                "approved_by".to_string(),
                json!(approved.iter().map(|a| &a.user).collect::<Vec<_>>()),
            ),
            (
                "comments".to_string(),
                json!(approved.iter().map(|a| &a.comment).collect::<Vec<_>>()),
            ),
        ]);
        let count = approved.len();
        if !d.approve {
            let message = format!("rejected by {}: {}", d.user, d.comment);
            self.fail_attempt(&d.step, ErrorKind::Rejected, message);
        } else if u32::try_from(count).unwrap_or(u32::MAX) >= gate.required {
            self.note(Some(&d.step), format!("approved by {}", d.user));
            self.succeed(
                &d.step,
                outputs,
                format!("approved ({count} of {})", gate.required),
            );
        } else {
            self.note(
                Some(&d.step),
                format!("approved by {} ({count} of {})", d.user, gate.required),
            );
        }
        Ok(())
    }

    fn not_waiting(&self, step: &str) -> MachineError {
        MachineError::NotAwaitingApproval {
            step: step.to_string(),
            state: self.state(step).name().to_string(),
        }
    }

    pub(super) fn timer(&mut self, at_ms: u64) {
        self.actions.push(Action::ScheduleTimer { at_ms });
    }
}

/// Seed of a step's retry jitter: FNV-1a of `<run>/<step>`, stable across
/// releases and restarts (unlike `std`'s hasher).
fn seed(run: &str, step: &str) -> u64 {
    format!("{run}/{step}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}
