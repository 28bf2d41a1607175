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

/// The notifier the alerts engine uses: `notify` actions become deliveries
/// of the channels admins configured (`capstan-notify`).
pub(crate) fn notifier(n: &Arc<capstan_notify::Notifier>) -> Arc<dyn crate::alerts::Notifier> {
    Arc::new(Notify(n.clone()))
}

struct Notify(Arc<capstan_notify::Notifier>);

impl crate::alerts::Notifier for Notify {
    fn notify<'a>(
        &'a self,
        project: &'a str,
        plugin: &'a str,
        channel: &'a str,
        format: &'a str,
        body: &'a str,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<String, crate::alerts::NotifyError>> {
        Box::pin(async move {
            let (format, body) =
                plain(format, body).map_err(|message| crate::alerts::NotifyError {
                    message,
                    retryable: false,
                })?;
            self.0
                .notify(project, plugin, channel, format, &body, idempotency_key)
                .await
                .map_err(|e| crate::alerts::NotifyError {
                    retryable: matches!(
                        e,
                        capstan_notify::NotifyError::RateLimited { .. }
                            | capstan_notify::NotifyError::Store(_)
                    ),
                    message: e.to_string(),
                })
        })
    }
}

/// A handler's message as the channel's text: `text` and `markdown` as
/// they are; a message a handler wrote in a provider's own JSON (`slack`,
/// `dingtalk`, `wecom`, as the WIT `notification` allows) is reduced to its
/// markdown, which the channel renders for its own provider.
fn plain(format: &str, body: &str) -> Result<(&'static str, String), String> {
    let json = || -> Result<Value, String> {
        serde_json::from_str(body).map_err(|e| format!("a `{format}` message must be JSON: {e}"))
    };
    let pick = |v: &Value, paths: &[&[&str]]| -> Option<String> {
        paths.iter().find_map(|path| {
            let mut at = v;
            for key in *path {
                at = at.get(key)?;
            }
            at.as_str().map(str::to_string)
        })
    };
    let text = match format {
        "text" => return Ok(("text", body.to_string())),
        "markdown" => return Ok(("markdown", body.to_string())),
        "dingtalk" => pick(&json()?, &[&["markdown", "text"], &["text", "content"]]),
        "wecom" => pick(&json()?, &[&["markdown", "content"], &["text", "content"]]),
        "slack" => {
            let v = json()?;
            let sections: Vec<String> = v["blocks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| b["text"]["text"].as_str().map(str::to_string))
                .collect();
            if sections.is_empty() {
                pick(&v, &[&["text"]])
            } else {
                Some(sections.join("\n\n"))
            }
        }
        other => {
            return Err(format!(
                "format `{other}` is not text, markdown, slack, dingtalk or wecom"
            ));
        }
    };
    text.map(|t| ("markdown", t))
        .ok_or_else(|| format!("the `{format}` message has no text"))
}

#[cfg(test)]
mod tests {
    use super::plain;

    #[test]
    fn provider_messages_are_reduced_to_their_markdown() {
        let ding = r####"{"msgtype":"markdown","markdown":{"title":"FIRING","text":"### FIRING\n- disk full"}}"####;
        assert_eq!(
            plain("dingtalk", ding).unwrap(),
            ("markdown", "### FIRING\n- disk full".to_string())
        );
        let slack = r#"{"text":"FIRING","blocks":[{"type":"header","text":{"type":"plain_text","text":"FIRING (1): Disk"}},{"type":"section","text":{"type":"mrkdwn","text":"• disk full"}}]}"#;
        assert_eq!(
            plain("slack", slack).unwrap().1,
            "FIRING (1): Disk\n\n• disk full"
        );
        assert_eq!(plain("text", "hi").unwrap(), ("text", "hi".to_string()));
        assert!(plain("wecom", "{}").unwrap_err().contains("no text"));
        assert!(plain("sms", "x").unwrap_err().contains("not text"));
    }
}
