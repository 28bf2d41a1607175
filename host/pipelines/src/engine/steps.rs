//! Step attempts: a deploy-step plugin's `run` (or `rollback`) called
//! through the registry at the version the run pinned, with the step's
//! context (`run-id` and `step` together are the idempotency key, the same
//! for every attempt), bounded by the attempt's deadline. The result goes
//! back to the run's inbox as an event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use capstan_registry::registry::RegistryError;
use capstan_runtime::runtime::bindings::deploy_step;
use capstan_runtime::runtime::{Accounting, Call, InvokeError, Output};
use capstan_store::unix_millis;
use serde_json::Value;

use super::Engine;
use crate::machine::{Event, Invocation, Outcome, Run};
use crate::model::ErrorKind;
use crate::store::{AttemptResult, Pin};

/// How soon an attempt the server had no room for is tried again.
const OVERLOADED_RETRY_MS: u64 = 200;

impl Engine {
    /// Starts one attempt in the background; its result becomes the run's
    /// `StepFinished` (or `RollbackFinished`) event.
    pub(super) fn spawn_attempt(
        self: &Arc<Self>,
        run: &Run,
        pins: &BTreeMap<String, Pin>,
        inv: Invocation,
        rollback: bool,
    ) {
        let engine = self.clone();
        let key = (run.id.clone(), inv.step.clone(), inv.attempt);
        let (run_id, pipeline) = (run.id.clone(), run.pipeline.clone());
        let pin = pins.get(&inv.plugin.name).cloned();
        let task = tokio::spawn(async move {
            let (step, attempt) = (inv.step.clone(), inv.attempt);
            let started = std::time::Instant::now();
            let (outcome, plugin_lines) = engine
                .attempt(&pipeline, &run_id, pin, &inv, rollback)
                .await;
            let label = match (&outcome, rollback) {
                (_, true) => "rollback".to_string(),
                (Outcome::Succeeded { .. }, _) => "succeeded".into(),
                (Outcome::RetryAfter { .. }, _) => "retry-after".into(),
                (Outcome::Failed { kind, .. }, _) => format!("failed-{kind}"),
            };
            engine
                .metrics
                .step(&pipeline, &step, &label, started.elapsed().as_secs_f64());
            let summary = summary(&outcome);
            let event = if rollback {
                Event::RollbackFinished {
                    step: step.clone(),
                    attempt,
                    outcome,
                }
            } else {
                Event::StepFinished {
                    step: step.clone(),
                    attempt,
                    outcome,
                }
            };
            let result = AttemptResult {
                run: run_id.clone(),
                step,
                plugin_lines,
                summary,
                event,
            };
            // Done with the plugin: from here on, nothing aborts this task
            // half-way through handing its result over.
            engine
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key_of(&run_id, &inv));
            // The run goes on at once, not at the driver's next turn.
            engine.finish_attempt(result).await;
        });
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, task.abort_handle());
    }

    #[tracing::instrument(name = "run.step", skip_all, fields(pipeline = %pipeline, run = %run_id, step = %inv.step, attempt = inv.attempt))]
    async fn attempt(
        &self,
        pipeline: &str,
        run_id: &str,
        pin: Option<Pin>,
        inv: &Invocation,
        rollback: bool,
    ) -> (Outcome, Vec<(String, String, i64)>) {
        let Some(pin) = pin else {
            let why = format!("plugin `{}` was not pinned by this run", inv.plugin.name);
            return (failed(ErrorKind::NotFound, why), Vec::new());
        };
        let ctx = deploy_step::Context {
            pipeline: pipeline.to_string(),
            run_id: run_id.to_string(),
            step: inv.step.clone(),
            environment: inv.environment.clone().unwrap_or_default(),
            attempt: inv.attempt,
            inputs: inv
                .inputs
                .iter()
                .map(|(k, v)| (k.clone(), text(v)))
                .collect(),
        };
        let params = inv.params.to_string();
        let call = if rollback {
            Call::Rollback { ctx, params }
        } else {
            Call::Run { ctx, params }
        };
        let left = inv.deadline_ms.saturating_sub(unix_millis() as u64);
        let invoke = self.registry.invoke_version_accounted(
            &inv.plugin.name,
            &pin.version,
            &pin.digest,
            call,
        );
        let (result, account) =
            match tokio::time::timeout(Duration::from_millis(left), invoke).await {
                Err(_) => {
                    let why = format!("the attempt ran past its timeout ({left} ms left at start)");
                    return (failed(ErrorKind::Timeout, why), Vec::new());
                }
                Ok(done) => done,
            };
        let lines = account.as_ref().map(plugin_lines).unwrap_or_default();
        let outcome = match result {
            Ok(Output::Step(r)) => outcome_of(r),
            Ok(other) => failed(
                ErrorKind::Failed,
                format!("plugin answered {other:?}, not a step result"),
            ),
            // The host's own backpressure, not the step's failure: the same
            // attempt goes again shortly, within its timeout.
            Err(RegistryError::Invoke(e @ InvokeError::Overloaded { .. })) => Outcome::RetryAfter {
                ms: OVERLOADED_RETRY_MS,
                message: format!("not started: {e}"),
            },
            Err(e) => failed(kind_of(&e), e.to_string()),
        };
        (outcome, lines)
    }
}

/// The plugin's own log lines (secrets already masked by the runtime),
/// for the step's log: (level, message, Unix ms), with a count of those
/// not kept.
fn plugin_lines(account: &Accounting) -> Vec<(String, String, i64)> {
    let mut lines: Vec<(String, String, i64)> = account
        .logs
        .iter()
        .map(|l| (l.level.to_string(), l.message.clone(), l.at_ms))
        .collect();
    if account.logs_dropped > 0 {
        let dropped = format!("{} more lines not kept", account.logs_dropped);
        lines.push(("warn".into(), dropped, unix_millis()));
    }
    lines
}

fn key_of(run: &str, inv: &Invocation) -> (String, String, u32) {
    (run.to_string(), inv.step.clone(), inv.attempt)
}

fn outcome_of(r: deploy_step::StepResult) -> Outcome {
    match r.outcome {
        deploy_step::Outcome::Succeeded => Outcome::Succeeded {
            outputs: r
                .outputs
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
            message: r.message,
        },
        deploy_step::Outcome::RetryAfter(ms) => Outcome::RetryAfter {
            ms,
            message: r.message,
        },
        deploy_step::Outcome::Failed => failed(ErrorKind::Failed, r.message),
    }
}

fn kind_of(e: &RegistryError) -> ErrorKind {
    let RegistryError::Invoke(e) = e else {
        return ErrorKind::NotFound;
    };
    match e {
        InvokeError::Plugin(p) => match p.kind {
            "retryable" => ErrorKind::Transient,
            "invalid-input" => ErrorKind::InvalidInput,
            "denied" => ErrorKind::Denied,
            "not-found" => ErrorKind::NotFound,
            _ => ErrorKind::Failed,
        },
        InvokeError::Deadline { .. } => ErrorKind::Timeout,
        InvokeError::Overloaded { .. } | InvokeError::Host(_) => ErrorKind::Transient,
        InvokeError::WrongCall(_) => ErrorKind::Failed,
        _ => ErrorKind::Trap,
    }
}

fn failed(kind: ErrorKind, message: String) -> Outcome {
    Outcome::Failed { kind, message }
}

fn summary(o: &Outcome) -> String {
    match o {
        Outcome::Succeeded { message, .. } => format!("succeeded: {message}"),
        Outcome::RetryAfter { ms, message } => format!("retry after {ms} ms: {message}"),
        Outcome::Failed { kind, message } => format!("failed ({kind}): {message}"),
    }
}

/// Inputs reach the plugin as text: strings as they are, the rest as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
