//! `/v1/notify`: notification channels (admins of a channel's project
//! configure them; credentials are names of secrets), sending through one
//! (queued, idempotent), test-send (synchronous, answers with the
//! provider's real answer), and delivery receipts.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody, StorageClass, storage_error};
use super::json::Body;
use crate::trust::{Authority, Role};
use capstan_notify::store::{ChannelRow, Delivery, DeliveryFilter, DeliveryStatus};
use capstan_notify::{ChannelSpec, Enqueue, Enqueued, Format, NotifyError};

impl From<NotifyError> for ApiError {
    fn from(e: NotifyError) -> Self {
        let message = e.to_string();
        match e {
            NotifyError::Invalid(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
            }
            NotifyError::NotFound(_) => ApiError::not_found(message),
            NotifyError::Forbidden(_) => ApiError::forbidden(message),
            NotifyError::RateLimited { retry_after, .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
                    .retry_after(retry_after.as_secs().max(1))
            }
            NotifyError::Provider { delivery, answer } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "provider_error", message)
                    .with_details(serde_json::json!({ "delivery": delivery, "answer": answer }))
            }
            NotifyError::Store(s) => match s {
                crate::store::StoreError::NotFound(_) => ApiError::not_found(message),
                crate::store::StoreError::Conflict(_) => ApiError::conflict(message),
                other => storage_error(message, StorageClass::of_store(&other)),
            },
        }
    }
}

/// The channel listing.
#[derive(Serialize, ToSchema)]
pub struct ChannelList {
    /// Channels of the projects the caller has a role in, by name.
    pub channels: Vec<ChannelRow>,
}

/// Body of `POST /v1/notify/channels/{name}/send`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    /// `text` (default) or `markdown`.
    #[serde(default)]
    pub format: Option<Format>,
    /// The message (at most 64 KiB).
    pub body: String,
    /// Sending the same key again returns the first delivery and sends nothing more.
    pub idempotency_key: String,
}

/// Body of `POST /v1/notify/channels/{name}/test` (optional).
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TestBody {
    /// The text to send; a default test message if absent.
    #[serde(default)]
    pub body: Option<String>,
}

/// Filter of `GET /v1/notify/deliveries`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Only this channel.
    pub channel: Option<String>,
    /// Only this status.
    pub status: Option<DeliveryStatus>,
    /// At most this many, newest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// The delivery listing.
#[derive(Serialize, ToSchema)]
pub struct DeliveryList {
    /// Newest first.
    pub deliveries: Vec<Delivery>,
}

fn require(who: &Authority, project: &str, role: Role, what: &str) -> Result<(), ApiError> {
    if who.role_in(project).is_some_and(|r| r >= role) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "{what} needs the {} role in project `{project}`",
            role.as_str()
        )))
    }
}

/// The channel `name` if the caller may see it (a role in its project).
fn visible(state: &AppState, who: &Authority, name: &str) -> Result<ChannelRow, ApiError> {
    match state.notify.channel(name)? {
        Some(c) if who.can_view(&c.spec.project) => Ok(c),
        _ => Err(ApiError::not_found(format!("no channel `{name}`"))),
    }
}

/// Lists channels.
#[utoipa::path(get, path = "/v1/notify/channels", tag = "notify",
    responses((status = 200, body = ChannelList)))]
pub async fn list_channels(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ChannelList>, ApiError> {
    let who = caller.authority();
    let mut channels = state.notify.channels()?;
    channels.retain(|c| who.can_view(&c.spec.project));
    Ok(Json(ChannelList { channels }))
}

/// One channel.
#[utoipa::path(get, path = "/v1/notify/channels/{name}", tag = "notify",
    params(("name" = String, Path)),
    responses((status = 200, body = ChannelRow), (status = 404, body = ErrorBody)))]
pub async fn show_channel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<ChannelRow>, ApiError> {
    Ok(Json(visible(&state, &caller.authority(), &name)?))
}

/// Creates or replaces a channel (admin of its project). The secrets it
/// names must be stored (`PUT /v1/secrets/{name}`).
#[utoipa::path(put, path = "/v1/notify/channels/{name}", tag = "notify", request_body = ChannelSpec,
    params(("name" = String, Path, description = "Channel name, as in the body")),
    responses((status = 200, body = ChannelRow), (status = 201, body = ChannelRow),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_channel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(spec): Body<ChannelSpec>,
) -> Result<(StatusCode, Json<ChannelRow>), ApiError> {
    let who = caller.authority();
    if spec.name != name {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("the body names channel `{}`, the path `{name}`", spec.name),
        ));
    }
    spec.validate()
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", m))?;
    require(&who, &spec.project, Role::Admin, "configuring channels")?;
    if let Some(old) = state.notify.channel(&name)? {
        require(
            &who,
            &old.spec.project,
            Role::Admin,
            "replacing this channel",
        )?;
    }
    let exists = state
        .registry
        .gate()
        .projects()
        .exists(&spec.project)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if !exists {
        return Err(ApiError::not_found(format!(
            "no project `{}`",
            spec.project
        )));
    }
    let missing = state.notify.missing_secrets(&spec)?;
    if !missing.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!(
                "secrets not stored: {}; store them first (PUT /v1/secrets/{{name}})",
                missing.join(", ")
            ),
        ));
    }
    let created = state.notify.put_channel(&spec, "api", &who.actor)?;
    state
        .registry
        .audit_change(
            &who,
            "notify.channel.put",
            &name,
            serde_json::to_value(&spec).unwrap_or_default(),
        )
        .await;
    let row = visible(&state, &who, &name)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(row)))
}

/// Deletes a channel (admin of its project); its queued deliveries fail.
#[utoipa::path(delete, path = "/v1/notify/channels/{name}", tag = "notify",
    params(("name" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_channel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let who = caller.authority();
    let c = visible(&state, &who, &name)?;
    require(&who, &c.spec.project, Role::Admin, "deleting channels")?;
    state.notify.delete_channel(&name)?;
    state
        .registry
        .audit_change(
            &who,
            "notify.channel.delete",
            &name,
            serde_json::json!({ "name": name }),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends a real message now and answers with the provider's answer: 200
/// when it took the message, 502 `provider_error` with the answer
/// (`details.answer`: status, code, message, body) when it refused, 429
/// when the channel's rate window is full (operator of its project).
#[utoipa::path(post, path = "/v1/notify/channels/{name}/test", tag = "notify",
    params(("name" = String, Path)), request_body(content = TestBody, description = "Optional"),
    responses((status = 200, body = Delivery), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn test_channel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Delivery>, ApiError> {
    let who = caller.authority();
    let c = visible(&state, &who, &name)?;
    require(&who, &c.spec.project, Role::Operator, "test-sending")?;
    let body: TestBody = if body.iter().all(u8::is_ascii_whitespace) {
        TestBody::default()
    } else {
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the body must be JSON: {e}")))?;
        Body::<TestBody>::from_value(v, |e| e.to_string())?.0
    };
    Ok(Json(
        state.notify.test_send(&name, body.body, &who.actor).await?,
    ))
}

/// Queues a message for the channel (operator of its project); answers
/// at once with the delivery id (the same one for a repeated key).
#[utoipa::path(post, path = "/v1/notify/channels/{name}/send", tag = "notify",
    params(("name" = String, Path)), request_body = SendBody,
    responses((status = 202, body = Enqueued), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn send(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(body): Body<SendBody>,
) -> Result<(StatusCode, Json<Enqueued>), ApiError> {
    let who = caller.authority();
    let c = visible(&state, &who, &name)?;
    require(&who, &c.spec.project, Role::Operator, "sending")?;
    let e = state
        .notify
        .enqueue(Enqueue {
            project: c.spec.project,
            channel: name,
            format: body.format.unwrap_or(Format::Text),
            body: body.body,
            idempotency_key: body.idempotency_key,
            plugin: None,
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(e)))
}

/// Delivery receipts, newest first.
#[utoipa::path(get, path = "/v1/notify/deliveries", tag = "notify", params(DeliveryQuery),
    responses((status = 200, body = DeliveryList), (status = 400, body = ErrorBody)))]
pub async fn deliveries(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<DeliveryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeliveryList>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if q.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
        return Err(ApiError::bad_request("limit must be 1 to 1000"));
    }
    let who = caller.authority();
    let mut deliveries = state.notify.deliveries(&DeliveryFilter {
        channel: q.channel,
        status: q.status,
        limit: i64::from(q.limit.unwrap_or(100)),
    })?;
    deliveries.retain(|d| who.can_view(&d.project));
    Ok(Json(DeliveryList { deliveries }))
}

/// One delivery with every attempt and the provider's answers.
#[utoipa::path(get, path = "/v1/notify/deliveries/{id}", tag = "notify",
    params(("id" = String, Path)),
    responses((status = 200, body = Delivery), (status = 404, body = ErrorBody)))]
pub async fn delivery(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Delivery>, ApiError> {
    match state.notify.delivery(&id)? {
        Some(d) if caller.authority().can_view(&d.project) => Ok(Json(d)),
        _ => Err(ApiError::not_found(format!("no delivery {id}"))),
    }
}
