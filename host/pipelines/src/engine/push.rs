//! Push webhooks: a delivery to `/v1/hooks/{provider}/{pipeline}` is
//! authenticated with the secret the pipeline's push trigger names,
//! filtered by its repo, branches and tags, and deduplicated by delivery id
//! in the transaction that stores the run ([`Claim::Delivery`]), so a
//! retried or replayed delivery starts nothing.

use std::collections::BTreeMap;

use capstan_registry::trust::Authority;
use capstan_runtime::capabilities::secrets::SecretError;
use capstan_store::StoreError;

use super::{Engine, EngineError, StartAudit};
use crate::model::{Provider, PushTrigger, Trigger};
use crate::store::{Claim, RunRow};
use crate::webhook::{self, EventKind, Headers};

/// What became of an authenticated delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// A run was started.
    Started {
        /// Its id.
        run: String,
        /// The delivery id.
        delivery: String,
    },
    /// This delivery started a run before.
    Duplicate,
    /// Nothing to do, and why (a ping, a deletion, filters not matching).
    Ignored(String),
}

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// No such pipeline, or it has no push trigger for the provider.
    #[error("{0}")]
    NotFound(String),
    /// The signature (GitLab: the token) is missing or wrong, or the
    /// trigger's secret is not stored. The message is for the audit log
    /// and the server's operators (it names secrets), not for the caller.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but not a push payload this provider sends.
    #[error("{0}")]
    BadRequest(String),
    /// The run could not be started.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<StoreError> for HookError {
    fn from(e: StoreError) -> Self {
        HookError::Engine(e.into())
    }
}

impl Engine {
    /// Handles one delivery of `provider`'s webhook for `pipeline`: the raw
    /// `body` and a reader of its headers.
    pub async fn receive_push(
        &self,
        provider: Provider,
        pipeline: &str,
        headers: Headers<'_>,
        body: &[u8],
    ) -> Result<HookOutcome, HookError> {
        let verified = self.authenticate(provider, pipeline, headers, body)?;
        if let EventKind::Other(e) = webhook::event_kind(provider, headers) {
            return Ok(HookOutcome::Ignored(format!("`{e}` event")));
        }
        let delivery = webhook::delivery_id(provider, headers).ok_or_else(|| {
            HookError::BadRequest(format!("no delivery id header from {}", provider.as_str()))
        })?;
        if delivery.len() > webhook::MAX_DELIVERY_LEN {
            return Err(HookError::BadRequest("the delivery id is too long".into()));
        }
        let push = webhook::parse_push(provider, body).map_err(HookError::BadRequest)?;
        if push.deleted {
            return Ok(HookOutcome::Ignored(format!(
                "{} was deleted: nothing to deploy",
                push.git_ref
            )));
        }
        let event = push.event(provider);
        if !verified.iter().any(|t| t.matches(&event)) {
            return Ok(HookOutcome::Ignored(format!(
                "{} of {} matches no push trigger of `{pipeline}`",
                push.git_ref, push.repo
            )));
        }
        let claim = Claim::Delivery {
            provider: provider.as_str().into(),
            // Scoped to the pipeline: two pipelines may share one hook's events.
            delivery: format!("{pipeline}/{delivery}"),
        };
        let trigger = push.trigger(provider, &delivery);
        let who = Authority {
            actor: format!("webhook:{}", provider.as_str()),
            global: None,
            projects: BTreeMap::new(),
        };
        let audit = StartAudit {
            who: &who,
            detail: serde_json::json!({
                "delivery": delivery, "ref": push.git_ref, "sha": push.sha, "repo": push.repo,
                "pusher": push.pusher,
            }),
            by_caller: false,
        };
        let started = self
            .start_claimed(
                pipeline,
                BTreeMap::new(),
                trigger,
                &push.started_by(),
                Some(&claim),
                Some(audit),
            )
            .await?;
        let Some(RunRow { run, .. }) = started else {
            return Ok(HookOutcome::Duplicate);
        };
        Ok(HookOutcome::Started {
            run: run.id,
            delivery,
        })
    }

    /// The pipeline's push triggers for `provider` whose secret signed the
    /// request.
    fn authenticate(
        &self,
        provider: Provider,
        pipeline: &str,
        headers: Headers<'_>,
        body: &[u8],
    ) -> Result<Vec<PushTrigger>, HookError> {
        let (row, _) = self
            .db
            .get(pipeline)?
            .ok_or_else(|| HookError::NotFound(format!("no pipeline named `{pipeline}`")))?;
        let p = self.pipeline_at(pipeline, row.revision)?;
        let triggers: Vec<&PushTrigger> = p
            .triggers
            .iter()
            .filter_map(|t| match t {
                Trigger::Push(t) if t.provider == provider => Some(t),
                _ => None,
            })
            .collect();
        if triggers.is_empty() {
            return Err(HookError::NotFound(format!(
                "pipeline `{pipeline}` has no push trigger for {}",
                provider.as_str()
            )));
        }
        let env = self.registry.runtime().env();
        let mut verified = Vec::new();
        let mut unusable = Vec::new();
        for t in triggers {
            let Some(name) = &t.secret else {
                unusable.push("a push trigger names no secret".to_string());
                continue;
            };
            match env.secrets.get(&env.store, name) {
                Ok(secret) if webhook::verify(provider, headers, body, &secret) => {
                    verified.push(t.clone());
                }
                Ok(_) => {}
                Err(SecretError::NotFound(_)) => {
                    unusable.push(format!("the secret `{name}` is not stored"));
                }
                Err(e) => {
                    tracing::error!(%pipeline, secret = %name, "reading a webhook secret: {e}");
                    unusable.push(format!("the secret `{name}` cannot be read"));
                }
            }
        }
        if verified.is_empty() {
            let mut why = format!(
                "the {} signature is missing or does not match the secret of `{pipeline}`",
                provider.as_str()
            );
            if !unusable.is_empty() {
                why = format!("{why} ({})", unusable.join("; "));
            }
            return Err(HookError::Unauthorized(why));
        }
        Ok(verified)
    }
}
