//! Events from outside the steps: cancel, superseded, lock granted, and
//! resuming after a host restart.

use std::collections::BTreeSet;

use super::engine::Engine;
use super::{Action, MachineError, Phase, RunStatus, StepState, Stop, StopCause};

impl Engine<'_> {
    /// The steps of the current phase.
    fn phase_ids(&self) -> Vec<String> {
        let steps = match self.run.phase {
            Phase::Main => &self.p.steps,
            _ => &self.p.finally,
        };
        steps.iter().map(|s| s.id.clone()).collect()
    }

    /// Stops every step of the current phase that is not done; attempts in
    /// flight are aborted.
    fn abort_phase(&mut self, reason: &str) {
        for id in self.phase_ids() {
            match self.state(&id).clone() {
                StepState::Running { attempt } => {
                    self.actions.push(Action::CancelStep {
                        step: id.clone(),
                        attempt,
                    });
                }
                s if s.is_terminal() => continue,
                _ => {}
            }
            if let Some(r) = self.run.steps.get_mut(&id) {
                r.deadline_ms = None;
                r.state = StepState::Cancelled {
                    reason: reason.to_string(),
                };
            }
        }
    }

    /// A user cancels: running attempts stop; completed steps are rolled
    /// back when asked; `finally` still runs. A cancel during the rollback
    /// stops the rollback; a cancel during `finally` stops `finally`.
    pub(super) fn cancel(&mut self, by: &str, rollback: bool) {
        let reason = format!("cancelled by {by}");
        self.note(None, reason.clone());
        let cause = StopCause::Cancelled { by: by.to_string() };
        if self.run.status == RunStatus::Queued {
            for r in self.run.steps.values_mut() {
                r.state = StepState::Cancelled {
                    reason: reason.clone(),
                };
            }
            self.run.stop = Some(Stop {
                cause,
                rollback: false,
            });
            self.run.phase = Phase::Finally;
            return self.finish();
        }
        match self.run.phase {
            Phase::Main => {
                let rollback = rollback || self.run.stop.as_ref().is_some_and(|s| s.rollback);
                self.run.stop = Some(Stop { cause, rollback });
                self.abort_phase(&reason);
            }
            Phase::RollingBack => {
                self.run.stop = Some(Stop {
                    cause,
                    rollback: false,
                });
                let rolling: Vec<(String, StepState)> = self
                    .run
                    .steps
                    .iter()
                    .filter(|(_, r)| matches!(r.state, StepState::RollingBack { .. }))
                    .map(|(id, r)| (id.clone(), r.state.clone()))
                    .collect();
                for (id, state) in rolling {
                    if let StepState::RollingBack {
                        attempt,
                        until_ms: None,
                    } = state
                    {
                        self.actions.push(Action::CancelStep {
                            step: id.clone(),
                            attempt,
                        });
                    }
                    self.rollback_failed(&id, format!("rollback {reason}"));
                }
            }
            Phase::Finally => {
                let rollback = self.run.stop.as_ref().is_some_and(|s| s.rollback);
                self.run.stop = Some(Stop { cause, rollback });
                self.abort_phase(&reason);
            }
            Phase::Done => {}
        }
    }

    /// A newer run took this one's place in an environment's queue.
    pub(super) fn superseded(
        &mut self,
        environment: String,
        by_run: String,
    ) -> Result<(), MachineError> {
        let waiting = self.run.steps.values().any(
            |r| matches!(&r.state, StepState::WaitingLock { environment: e } if *e == environment),
        );
        if !waiting {
            return Err(MachineError::NotWaitingForLock(environment));
        }
        let cause = StopCause::Superseded {
            environment,
            by_run,
        };
        self.run.stop = Some(Stop {
            cause,
            rollback: false,
        });
        let reason = self.stop_reason();
        self.note(None, reason.clone());
        self.abort_phase(&reason);
        Ok(())
    }

    /// The run holds `environment`'s lock: start the steps waiting for it.
    pub(super) fn lock_granted(&mut self, environment: &str) {
        self.run.locks.insert(environment.to_string());
        let waiting: Vec<String> = self
            .run
            .steps
            .iter()
            .filter(|(_, r)| matches!(&r.state, StepState::WaitingLock { environment: e } if e == environment))
            .map(|(id, _)| id.clone())
            .collect();
        self.note(
            None,
            format!("holds the lock on environment {environment:?}"),
        );
        for id in waiting {
            self.start_attempt(&id, 1, true);
        }
    }

    /// After a host restart: an attempt that was in flight runs again as
    /// the next attempt with the same idempotency key (it may have had
    /// effects); rollbacks likewise; lock requests, approval requests (the
    /// executor may dedupe notifications) and timers are re-issued.
    pub(super) fn resume(&mut self) {
        self.note(
            None,
            "resumed: driven again after a restart or a takeover by another replica",
        );
        let mut asked = BTreeSet::new();
        let states: Vec<(String, StepState)> = self
            .run
            .steps
            .iter()
            .map(|(id, r)| (id.clone(), r.state.clone()))
            .collect();
        for (id, state) in states {
            match state {
                StepState::Running { attempt } => {
                    self.note(
                        Some(&id),
                        format!("attempt {attempt} was in flight at a restart; running it again as attempt {}", attempt + 1),
                    );
                    self.start_attempt(&id, attempt + 1, true);
                }
                StepState::RollingBack {
                    attempt,
                    until_ms: None,
                } => {
                    self.note(
                        Some(&id),
                        format!("rollback attempt {attempt} was in flight at a restart"),
                    );
                    self.start_rollback(&id, attempt + 1, true);
                }
                StepState::WaitingApproval => {
                    let request = self.approval_request(&id);
                    self.actions.extend(request);
                }
                StepState::WaitingLock { environment } if asked.insert(environment.clone()) => {
                    let policy = self
                        .p
                        .environments
                        .get(&environment)
                        .map(|e| e.lock)
                        .unwrap_or_default();
                    self.actions.push(Action::AcquireLock {
                        environment,
                        policy,
                    });
                }
                _ => {}
            }
        }
        if let Some(at_ms) = self.run.next_wakeup() {
            self.timer(at_ms);
        }
    }
}
