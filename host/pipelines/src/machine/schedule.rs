//! Moving a run forward: deadlines and waits against `now`, starting the
//! steps whose needs are done (or skipping them), and handing over to the
//! rollback and `finally` phases.

use serde_json::{Value, json};

use super::engine::Engine;
use super::{Action, Invocation, Phase, StepState};
use crate::expr::{Scope, StepView};
use crate::model::{ErrorKind, OnFailure};
use crate::validate::ancestors;

impl Engine<'_> {
    /// Applies every consequence of the current state until nothing changes.
    pub(super) fn advance(&mut self) {
        loop {
            let before = (self.run.phase, self.run.steps.clone());
            match self.run.phase {
                Phase::Main => {
                    let ids: Vec<String> = self.p.steps.iter().map(|s| s.id.clone()).collect();
                    self.check_times(&ids);
                    if self.run.stop.is_some() {
                        self.wind_down(&ids);
                    } else {
                        self.start_ready(&ids);
                    }
                    if self.all_terminal(&ids) {
                        self.end_main();
                    }
                }
                Phase::RollingBack => self.roll_back_next(),
                Phase::Finally => {
                    let ids: Vec<String> = self.p.finally.iter().map(|s| s.id.clone()).collect();
                    self.check_times(&ids);
                    self.start_ready(&ids);
                    if self.all_terminal(&ids) {
                        self.finish();
                    }
                }
                Phase::Done => return,
            }
            if before == (self.run.phase, self.run.steps.clone()) {
                return self.release_locks();
            }
        }
    }

    /// Releases the locks of environments the run is done with. A lock is
    /// kept while a step that could still trigger a rollback is not done,
    /// since the rollback may undo this environment's steps.
    fn release_locks(&mut self) {
        let rollback_ahead = match self.run.phase {
            Phase::Main => {
                self.run.stop.as_ref().is_some_and(|s| s.rollback)
                    || self.p.steps.iter().any(|s| {
                        s.on_failure == OnFailure::Rollback && !self.state(&s.id).is_terminal()
                    })
            }
            Phase::RollingBack => true,
            Phase::Finally | Phase::Done => false,
        };
        if rollback_ahead {
            return;
        }
        for env in self.run.locks.clone() {
            let in_use = self.p.all_steps().any(|s| {
                s.environment.as_deref() == Some(env.as_str()) && !self.state(&s.id).is_terminal()
            });
            if !in_use {
                self.run.locks.remove(&env);
                self.note(None, format!("released the lock on environment {env:?}"));
                self.actions.push(Action::ReleaseLock { environment: env });
            }
        }
    }

    pub(super) fn all_terminal(&self, ids: &[String]) -> bool {
        ids.iter().all(|id| self.state(id).is_terminal())
    }

    /// Times out attempts and gates past their deadline; starts attempts
    /// whose wait is over.
    fn check_times(&mut self, ids: &[String]) {
        for id in ids {
            let r = &self.run.steps[id];
            let deadline = r.deadline_ms.unwrap_or(u64::MAX);
            match r.state.clone() {
                StepState::Running { attempt } if self.now >= deadline => {
                    self.actions.push(Action::CancelStep {
                        step: id.clone(),
                        attempt,
                    });
                    self.time_out(id);
                }
                StepState::WaitingApproval if self.now >= deadline => self.time_out(id),
                StepState::WaitingRetry { .. } if self.now >= deadline => self.time_out(id),
                StepState::WaitingRetry { attempt, until_ms } if self.now >= until_ms => {
                    let fresh = attempt > r.attempt;
                    self.start_attempt(id, attempt, fresh);
                }
                _ => {}
            }
        }
    }

    fn time_out(&mut self, id: &str) {
        let limit = std::time::Duration::from_millis(self.timeout_of(id));
        let text = humantime::format_duration(limit);
        self.fail_attempt(id, ErrorKind::Timeout, format!("timed out after {text}"));
    }

    pub(super) fn timeout_of(&self, id: &str) -> u64 {
        let Ok(spec) = self.spec(id) else {
            return self.limits.step_timeout_ms;
        };
        match &spec.approval {
            Some(gate) => gate
                .timeout
                .as_ref()
                .and_then(|t| t.ms().ok())
                .unwrap_or(self.limits.approval_timeout_ms),
            None => spec
                .timeout
                .as_ref()
                .and_then(|t| t.ms().ok())
                .unwrap_or(self.limits.step_timeout_ms),
        }
    }

    /// The main steps stopped: skip pending steps, cancel waits for a new
    /// attempt, an approval or a lock; running attempts and `retry-after`
    /// polls of the current attempt are left to finish.
    fn wind_down(&mut self, ids: &[String]) {
        let reason = self.stop_reason();
        for id in ids {
            let r = &self.run.steps[id];
            let next = match &r.state {
                StepState::Pending => StepState::Skipped {
                    reason: reason.clone(),
                },
                StepState::WaitingRetry { attempt, .. } if *attempt > r.attempt => {
                    StepState::Cancelled {
                        reason: reason.clone(),
                    }
                }
                StepState::WaitingApproval | StepState::WaitingLock { .. } => {
                    StepState::Cancelled {
                        reason: reason.clone(),
                    }
                }
                _ => continue,
            };
            self.set_state(id, next);
        }
    }

    /// Starts (or skips) every pending step in `ids` whose needs are done.
    fn start_ready(&mut self, ids: &[String]) {
        for id in ids {
            if *self.state(id) != StepState::Pending {
                continue;
            }
            let Ok(spec) = self.spec(id) else { continue };
            let needs: Vec<&StepState> = spec.needs.iter().map(|n| self.state(n)).collect();
            if !needs.iter().all(|s| s.is_terminal()) {
                continue;
            }
            let run_it = match &spec.condition {
                Some(cond) => match self.scope().condition(cond) {
                    Ok(b) => b,
                    Err(e) => {
                        if let Some(r) = self.run.steps.get_mut(id.as_str()) {
                            r.attempt = 1;
                        }
                        self.fail_attempt(id, ErrorKind::Expression, e.to_string());
                        continue;
                    }
                },
                None => spec.needs.iter().all(|n| self.satisfied(n)),
            };
            if !run_it {
                let reason = match &spec.condition {
                    Some(cond) => format!("`if: {cond}` was false"),
                    None => {
                        let unmet: Vec<&str> = spec
                            .needs
                            .iter()
                            .filter(|n| !self.satisfied(n))
                            .map(String::as_str)
                            .collect();
                        format!("needs {} did not succeed", unmet.join(", "))
                    }
                };
                self.note(Some(id), format!("skipped: {reason}"));
                self.set_state(id, StepState::Skipped { reason });
                continue;
            }
            self.begin(id);
        }
    }

    /// A need lets its dependents run by default: it succeeded, or failed
    /// with `on_failure: continue`.
    fn satisfied(&self, id: &str) -> bool {
        match self.state(id) {
            StepState::Succeeded => true,
            StepState::Failed { .. } => self
                .spec(id)
                .is_ok_and(|s| s.on_failure == OnFailure::Continue),
            _ => false,
        }
    }

    /// A ready step begins: an approval gate waits for decisions, a plugin
    /// step queues for its environment's lock or starts attempt 1.
    fn begin(&mut self, id: &str) {
        let Ok(spec) = self.spec(id) else { return };
        if spec.approval.is_some() {
            let deadline = self.now.saturating_add(self.timeout_of(id));
            if let Some(r) = self.run.steps.get_mut(id) {
                r.attempt = 1;
                r.deadline_ms = Some(deadline);
                r.state = StepState::WaitingApproval;
            }
            let request = self.approval_request(id);
            self.actions.extend(request);
            self.timer(deadline);
            return;
        }
        match &spec.environment {
            Some(env) if !self.run.locks.contains(env) => {
                let already = self.run.steps.values().any(|r| matches!(&r.state, StepState::WaitingLock { environment } if environment == env));
                self.set_state(
                    id,
                    StepState::WaitingLock {
                        environment: env.clone(),
                    },
                );
                if !already {
                    let policy = self
                        .p
                        .environments
                        .get(env)
                        .map(|e| e.lock)
                        .unwrap_or_default();
                    self.actions.push(Action::AcquireLock {
                        environment: env.clone(),
                        policy,
                    });
                }
                self.note(
                    Some(id),
                    format!("waiting for the lock on environment {env:?}"),
                );
            }
            _ => self.start_attempt(id, 1, true),
        }
    }

    /// The request to the approvers of gate `id`, which is waiting.
    pub(super) fn approval_request(&self, id: &str) -> Option<Action> {
        let gate = self.spec(id).ok()?.approval.as_ref()?;
        Some(Action::RequestApproval {
            step: id.to_string(),
            role: gate.approvers.role.clone(),
            project: gate
                .approvers
                .project
                .clone()
                .unwrap_or_else(|| self.p.project.clone()),
            required: gate.required,
            deadline_ms: self.run.steps[id].deadline_ms?,
            message: gate.message.as_ref().map(|m| self.render_text(m)),
        })
    }

    /// A template rendered to text; on error, the error (so a gate's message
    /// never blocks the gate).
    fn render_text(&self, template: &str) -> String {
        match self.scope().render_str(template) {
            Ok(Value::String(s)) => s,
            Ok(v) => v.to_string(),
            Err(e) => format!("{template} ({e})"),
        }
    }

    /// Starts `attempt` of a plugin step. A `fresh` attempt gets a new
    /// deadline; a `retry-after` continuation keeps the attempt's deadline.
    pub(super) fn start_attempt(&mut self, id: &str, attempt: u32, fresh: bool) {
        let Ok(spec) = self.spec(id) else { return };
        let Some(plugin) = spec.plugin.clone() else {
            return;
        };
        if fresh {
            let deadline = self.now.saturating_add(self.timeout_of(id));
            if let Some(r) = self.run.steps.get_mut(id) {
                r.attempt = attempt;
                r.deadline_ms = Some(deadline);
            }
        }
        let params = match self
            .scope()
            .render(&Value::Object(spec.params.clone().into_iter().collect()))
        {
            Ok(v) => v,
            Err(e) => {
                if let Some(r) = self.run.steps.get_mut(id) {
                    r.attempt = r.attempt.max(1);
                }
                return self.fail_attempt(id, ErrorKind::Expression, e.to_string());
            }
        };
        let deadline_ms = self.run.steps[id].deadline_ms.unwrap_or(u64::MAX);
        if let Some(r) = self.run.steps.get_mut(id) {
            r.params = Some(params.clone());
            r.state = StepState::Running { attempt };
        }
        self.actions.push(Action::StartStep(Invocation {
            step: id.to_string(),
            attempt,
            idempotency_key: self.run.idempotency_key(id),
            plugin,
            params,
            inputs: self.inputs(id),
            environment: spec.environment.clone(),
            deadline_ms,
        }));
        self.timer(deadline_ms);
    }

    /// Outputs of the steps `id` may read, as `step.output` keys.
    pub(super) fn inputs(&self, id: &str) -> std::collections::BTreeMap<String, Value> {
        let mut readable = ancestors(self.p, id);
        if self.p.is_finally(id) {
            readable.extend(self.p.steps.iter().map(|s| s.id.clone()));
        }
        readable
            .iter()
            .filter_map(|s| self.run.steps.get(s).map(|r| (s, r)))
            .flat_map(|(s, r)| {
                r.outputs
                    .iter()
                    .map(move |(k, v)| (format!("{s}.{k}"), v.clone()))
            })
            .collect()
    }

    /// What expressions see now.
    pub(super) fn scope(&self) -> Scope {
        Scope {
            trigger: self.run.trigger.clone(),
            params: self.run.params.clone(),
            steps: self
                .run
                .steps
                .iter()
                .map(|(id, r)| {
                    let view = StepView {
                        status: r.state.name().to_string(),
                        outputs: r.outputs.clone(),
                    };
                    (id.clone(), view)
                })
                .collect(),
            run: json!({
                "id": self.run.id,
                "pipeline": self.run.pipeline,
                "project": self.run.project,
                "status": self.outcome().name(),
            }),
        }
    }
}
