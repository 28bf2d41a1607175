//! `POST /v1/hooks/{provider}/{pipeline}`: git push webhooks from GitHub,
//! GitLab and Gitea. Providers cannot send a bearer token, so the route is
//! public in the route table and each delivery is authenticated by the
//! provider's own mechanism with the secret the pipeline's push trigger
//! names (see [`crate::pipelines::webhook`]). Every answer is audited as
//! `webhook:<provider>`; failed signatures count against the caller
//! address's rate limit, as failed bearer tokens do.

use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::limits::RateKey;
use super::listen::PeerAddr;
use crate::pipelines::engine::{HookError, HookOutcome};
use crate::pipelines::model::Provider;

/// Largest webhook body accepted (GitHub sends up to 25 MB, but a push with
/// that much in it is thousands of commits; their file lists are not needed).
pub const MAX_HOOK_BYTES: usize = 5 << 20;

/// A delivery that started a run.
#[derive(Serialize, ToSchema)]
pub struct HookStarted {
    /// The run's id (`GET /v1/runs/{id}`).
    pub run: String,
    /// The pipeline.
    pub pipeline: String,
    /// The provider's delivery id.
    pub delivery: String,
}

/// An authenticated delivery that started nothing.
#[derive(Serialize, ToSchema)]
pub struct HookSkipped {
    /// `true`: this delivery started a run before (a retry or a replay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    /// Why nothing was started: a ping or another event, a deleted ref, or
    /// a push that matches none of the pipeline's push triggers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
}

/// Receives a provider's push webhook and starts a run of the pipeline if
/// the push matches one of its push triggers. Authenticated with the
/// trigger's secret: GitHub `X-Hub-Signature-256`, Gitea
/// `X-Gitea-Signature` (HMAC-SHA256 of the body), GitLab `X-Gitlab-Token`.
/// Deliveries are deduplicated by their delivery id.
#[utoipa::path(post, path = "/v1/hooks/{provider}/{pipeline}", tag = "pipelines",
    params(
        ("provider" = String, Path, pattern = "^(github|gitlab|gitea)$", description = "The sending provider: github, gitlab or gitea"),
        ("pipeline" = String, Path, description = "The pipeline whose push trigger the hook is for"),
        ("X-Hub-Signature-256" = Option<String>, Header, description = "GitHub: `sha256=<hex HMAC-SHA256(secret, body)>`"),
        ("X-GitHub-Event" = Option<String>, Header, description = "GitHub: `push`; `ping` and other events start nothing"),
        ("X-GitHub-Delivery" = Option<String>, Header, description = "GitHub: the delivery id"),
        ("X-Gitea-Signature" = Option<String>, Header, description = "Gitea: `<hex HMAC-SHA256(secret, body)>` (Forgejo: also `X-Forgejo-Signature`)"),
        ("X-Gitea-Event" = Option<String>, Header, description = "Gitea: `push`"),
        ("X-Gitea-Delivery" = Option<String>, Header, description = "Gitea: the delivery id"),
        ("X-Gitlab-Token" = Option<String>, Header, description = "GitLab: the secret token itself"),
        ("X-Gitlab-Event" = Option<String>, Header, description = "GitLab: `Push Hook` or `Tag Push Hook`"),
        ("Idempotency-Key" = Option<String>, Header, description = "GitLab 17.4+: the delivery id, the same on retries"),
        ("X-Gitlab-Event-UUID" = Option<String>, Header, description = "GitLab: the delivery id when there is no Idempotency-Key"),
    ),
    request_body(content = Object, content_type = "application/json",
        description = "The provider's push event, exactly as sent (the signature covers the raw bytes)"),
    security(()),
    responses(
        (status = 202, body = HookStarted, description = "A run was started"),
        (status = 200, body = HookSkipped, description = "Authenticated; nothing started (duplicate delivery, ping or other event, deleted ref, filters not matching)"),
        (status = 400, body = ErrorBody, description = "Authenticated, but no delivery id or not a push payload of this provider"),
        (status = 401, body = ErrorBody, description = "The signature (GitLab: token) is missing or wrong"),
        (status = 404, body = ErrorBody, description = "No such provider or pipeline, or the pipeline has no push trigger for the provider"),
        (status = 413, body = ErrorBody, description = "The body is over 5 MiB"),
        (status = 422, body = ErrorBody, description = "The pipeline cannot start (e.g. a required parameter without default)"),
        (status = 429, body = ErrorBody, description = "Too many failed signatures from this address (`Retry-After`)"),
    ))]
pub async fn receive(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<PeerAddr>>>,
    Path((provider, pipeline)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let path = format!("/v1/hooks/{provider}/{pipeline}");
    let actor = format!("webhook:{provider}");
    let refuse = |e: ApiError, reason: String| {
        let detail = serde_json::json!({ "pipeline": pipeline, "reason": reason });
        super::audit::delivery(&state, &actor, &path, false, e.status, detail);
        e.into_response()
    };
    let Some(kind) = Provider::parse(&provider) else {
        let message = format!("no webhook provider `{provider}` (github, gitlab or gitea)");
        return refuse(ApiError::not_found(message.clone()), message);
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let status = e.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("the webhook body is over {MAX_HOOK_BYTES} bytes")
            } else {
                e.body_text()
            };
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "payload_too_large"
            } else {
                "bad_request"
            };
            return refuse(ApiError::new(status, code, message.clone()), message);
        }
    };
    let read = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let outcome = state
        .pipelines
        .receive_push(kind, &pipeline, &read, &body)
        .await;
    let (status, answer, detail) = match outcome {
        Ok(HookOutcome::Started { run, delivery }) => {
            let detail =
                serde_json::json!({ "pipeline": pipeline, "run": run, "delivery": delivery });
            let answer = Json(HookStarted {
                run,
                pipeline: pipeline.clone(),
                delivery,
            })
            .into_response();
            (StatusCode::ACCEPTED, answer, detail)
        }
        Ok(HookOutcome::Duplicate) => {
            let detail = serde_json::json!({ "pipeline": pipeline, "duplicate": true });
            let answer = Json(HookSkipped {
                duplicate: Some(true),
                ignored: None,
            })
            .into_response();
            (StatusCode::OK, answer, detail)
        }
        Ok(HookOutcome::Ignored(why)) => {
            let detail = serde_json::json!({ "pipeline": pipeline, "ignored": why });
            let answer = Json(HookSkipped {
                duplicate: None,
                ignored: Some(why),
            })
            .into_response();
            (StatusCode::OK, answer, detail)
        }
        Err(HookError::Unauthorized(why)) => {
            let ip = peer.map(|Extension(ConnectInfo(p))| p.0.ip());
            if let Err(retry) = state.auth.limiter.check(RateKey::Anonymous(ip)) {
                let e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many failed webhook signatures; slow down",
                )
                .retry_after(retry);
                return refuse(e, why);
            }
            // The reason names secrets: it goes to the audit log only.
            let e = ApiError::unauthorized(format!(
                "the {provider} webhook signature is missing or does not match the pipeline's secret"
            ));
            return refuse(e, why);
        }
        Err(HookError::NotFound(m)) => return refuse(ApiError::not_found(m.clone()), m),
        Err(HookError::BadRequest(m)) => return refuse(ApiError::bad_request(m.clone()), m),
        Err(HookError::Engine(e)) => {
            let m = e.to_string();
            return refuse(ApiError::from(e), m);
        }
    };
    super::audit::delivery(&state, &actor, &path, true, status, detail);
    (status, answer).into_response()
}
