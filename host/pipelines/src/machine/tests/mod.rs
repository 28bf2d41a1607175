//! State machine tests: a harness that keeps the journaled run and a fake
//! clock, and drives the machine with events like an executor would.

mod approval;
mod cancel;
mod crash;
mod dag;
mod failure;
mod locks;
mod rerun;
mod retry;

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::model::ErrorKind;
use crate::validate::tests::FakeCatalog;

/// Start of the fake clock, Unix ms.
const T0: u64 = 1_800_000_000_000;

struct Harness {
    p: Pipeline,
    run: Run,
    now: u64,
    limits: Limits,
    /// Every action so far, in order.
    log: Vec<Action>,
}

fn harness(yaml: &str) -> Harness {
    harness_with(yaml, json!({}), Some("alice"))
}

fn harness_with(yaml: &str, trigger: Value, started_by: Option<&str>) -> Harness {
    let p = crate::load("test.yaml", yaml, &FakeCatalog::new()).expect("valid pipeline");
    let params = crate::model::resolve_params(&p.params, &BTreeMap::new()).expect("params");
    let run = Run::new(&p, "run1", trigger, params, started_by);
    Harness {
        p,
        run,
        now: T0,
        limits: Limits::default(),
        log: Vec::new(),
    }
}

impl Harness {
    fn try_apply(&mut self, event: Event) -> Result<Vec<Action>, MachineError> {
        let m = Machine {
            pipeline: &self.p,
            limits: self.limits,
        };
        let t = m.apply(&self.run, event, self.now)?;
        // What a store would do: journal the run as JSON and read it back.
        let journaled = serde_json::to_string(&t.run).expect("serialises");
        self.run = serde_json::from_str(&journaled).expect("deserialises");
        assert_eq!(self.run, t.run, "the journal round-trips");
        self.log.extend(t.actions.clone());
        Ok(t.actions)
    }

    fn apply(&mut self, event: Event) -> Vec<Action> {
        self.try_apply(event).expect("event accepted")
    }

    fn start(&mut self) -> Vec<Action> {
        self.apply(Event::Start)
    }

    fn ok(&mut self, step: &str, outputs: Value) -> Vec<Action> {
        let attempt = self.attempt(step);
        let outputs: BTreeMap<String, Value> = serde_json::from_value(outputs).expect("map");
        let outcome = Outcome::Succeeded {
            outputs,
            message: format!("{step} done"),
        };
        self.apply(Event::StepFinished {
            step: step.into(),
            attempt,
            outcome,
        })
    }

    fn fail(&mut self, step: &str, kind: ErrorKind) -> Vec<Action> {
        let attempt = self.attempt(step);
        let outcome = Outcome::Failed {
            kind,
            message: format!("{step} broke"),
        };
        self.apply(Event::StepFinished {
            step: step.into(),
            attempt,
            outcome,
        })
    }

    fn retry_after(&mut self, step: &str, ms: u64) -> Vec<Action> {
        let attempt = self.attempt(step);
        let outcome = Outcome::RetryAfter {
            ms,
            message: "not yet".into(),
        };
        self.apply(Event::StepFinished {
            step: step.into(),
            attempt,
            outcome,
        })
    }

    /// Moves the clock on and fires the timer.
    fn after(&mut self, ms: u64) -> Vec<Action> {
        self.now += ms;
        self.apply(Event::Timer)
    }

    fn attempt(&self, step: &str) -> u32 {
        self.run.steps[step].attempt
    }

    fn state(&self, step: &str) -> &StepState {
        &self.run.steps[step].state
    }

    fn status(&self, step: &str) -> &'static str {
        self.state(step).name()
    }
}

/// `(step, attempt)` of every step attempt started by `actions`.
fn started(actions: &[Action]) -> Vec<(String, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::StartStep(i) => Some((i.step.clone(), i.attempt)),
            _ => None,
        })
        .collect()
}

fn started_ids(actions: &[Action]) -> Vec<String> {
    started(actions).into_iter().map(|(s, _)| s).collect()
}

fn invocation<'a>(actions: &'a [Action], step: &str) -> &'a Invocation {
    actions
        .iter()
        .find_map(|a| match a {
            Action::StartStep(i) | Action::StartRollback(i) if i.step == step => Some(i),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no invocation of {step} in {actions:#?}"))
}

fn rollbacks(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::StartRollback(i) => Some(i.step.clone()),
            _ => None,
        })
        .collect()
}

fn finished(actions: &[Action]) -> Option<(RunStatus, String)> {
    actions.iter().find_map(|a| match a {
        Action::FinishRun { status, reason } => Some((*status, reason.clone())),
        _ => None,
    })
}
