//! Wires the alerts engine to the pipelines engine: `run-pipeline` actions
//! start runs through the pipelines engine's one entry point
//! ([`Engine::start_run`]), so `capstan-alerts` does not depend on
//! `capstan-pipelines`.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::alerts::{PipelineTrigger, TriggerError};
use crate::pipelines::engine::Engine;

/// The trigger the alerts engine uses.
pub(crate) fn pipelines(engine: &Arc<Engine>) -> Arc<dyn PipelineTrigger> {
    Arc::new(Trigger(engine.clone()))
}

struct Trigger(Arc<Engine>);

impl PipelineTrigger for Trigger {
    fn project_of(&self, pipeline: &str) -> Result<Option<String>, TriggerError> {
        self.0
            .db()
            .get(pipeline)
            .map(|row| row.map(|(r, _)| r.project))
            .map_err(|e| TriggerError(e.to_string()))
    }

    /// Keeps the candidates the pipeline declares as parameters (alert
    /// labels and handler params by name); the others are dropped, so an
    /// alert with more labels than the runbook needs still starts it.
    fn start<'a>(
        &'a self,
        pipeline: &'a str,
        candidates: BTreeMap<String, Value>,
        trigger: Value,
        started_by: &'a str,
    ) -> BoxFuture<'a, Result<String, TriggerError>> {
        Box::pin(async move {
            let err = |e: String| TriggerError(format!("pipeline `{pipeline}`: {e}"));
            let (_, yaml) = self
                .0
                .db()
                .get(pipeline)
                .map_err(|e| err(e.to_string()))?
                .ok_or_else(|| err("no such pipeline".into()))?;
            let declared = crate::pipelines::Pipeline::from_yaml(&yaml)
                .map_err(|e| err(e.to_string()))?
                .params;
            let given: BTreeMap<String, Value> = candidates
                .into_iter()
                .filter(|(k, _)| declared.contains_key(k))
                .collect();
            let run = self
                .0
                .start_run(pipeline, given, trigger, started_by)
                .await
                .map_err(|e| err(e.to_string()))?;
            Ok(run.id)
        })
    }
}
