//! `/v1/alerts`: the Alertmanager webhook receiver, alert routes and the
//! history of groups and actions. Thin: the engine (`capstan-alerts`)
//! stores, dedupes, routes and acts; this maps HTTP onto it.
//!
//! The receiver is public in the route table and authenticates itself the
//! ways Alertmanager's `http_config` can send: `Authorization: Bearer
//! <API token>` or basic auth with the API token as the password (any
//! username). The token needs the `operator` role (globally or in a
//! project). Every refusal is a 4xx with the JSON error and is audited
//! (actor `alertmanager`); overload is 503 with `Retry-After`, never 429,
//! which Alertmanager would drop.

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::{ApiRole, Caller};
use super::error::{ApiError, ErrorBody, StorageClass, storage_error};
use super::json::Body;
use super::limits::RateKey;
use super::listen::PeerAddr;
use crate::alerts::AlertsError;
use crate::alerts::engine::RouteView;
use crate::alerts::model::Webhook;
use crate::alerts::routes::Route;
use crate::alerts::store::Ingested;
use crate::alerts::store::history::{ActionRecord, GroupFilter, GroupSummary};

impl From<AlertsError> for ApiError {
    fn from(e: AlertsError) -> Self {
        let message = e.to_string();
        match e {
            AlertsError::Invalid(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
            }
            AlertsError::Forbidden(_) => ApiError::forbidden(message),
            AlertsError::NotFound(_) => ApiError::not_found(message),
            AlertsError::Conflict(_) => ApiError::conflict(message),
            AlertsError::Overloaded { retry_after, .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
                    .retry_after(retry_after)
            }
            AlertsError::Store(s) => match s {
                crate::store::StoreError::NotFound(_) => ApiError::not_found(message),
                crate::store::StoreError::Conflict(_) => ApiError::conflict(message),
                other => storage_error(message, StorageClass::of_store(&other)),
            },
        }
    }
}

/// Receives an Alertmanager webhook (payload version 4). The group is
/// stored (one transaction) before the answer; alerts already seen (same
/// group key, fingerprint, status and start: an HA peer's copy or a
/// resend) are not handled again.
#[utoipa::path(post, path = "/v1/alerts/alertmanager/{receiver}", tag = "alerts",
    params(("receiver" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$", description = "A name for the sending receiver; routes may select on it")),
    request_body(content = Webhook, content_type = "application/json"),
    security(()),
    responses(
        (status = 200, body = Ingested, description = "Stored; `state` is `pending` (to be handled) or `duplicate` (nothing new)"),
        (status = 400, body = ErrorBody, description = "Not an Alertmanager v4 body"),
        (status = 401, body = ErrorBody, description = "No valid API token (bearer, or basic auth password)"),
        (status = 403, body = ErrorBody, description = "The token lacks the operator role"),
        (status = 413, body = ErrorBody, description = "The body is over `[alerts] max_body_bytes`"),
        (status = 503, body = ErrorBody, description = "Overloaded or the database is busy (`Retry-After`); Alertmanager retries"),
    ))]
pub async fn receive(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<PeerAddr>>>,
    Path(receiver): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let path = format!("/v1/alerts/alertmanager/{receiver}");
    let refuse = |e: ApiError, actor: &str, result: &str| {
        state.alerts.refused(result);
        let detail = serde_json::json!({ "receiver": receiver, "reason": e.message });
        super::audit::delivery(&state, actor, &path, false, e.status, detail);
        e.into_response()
    };
    let caller = presented(&headers).and_then(|secret| state.auth.tokens.authenticate(&secret));
    let Some(caller) = caller else {
        let ip = peer.map(|Extension(ConnectInfo(p))| p.0.ip());
        if let Err(retry) = state.auth.limiter.check(RateKey::Anonymous(ip)) {
            // Too many failed attempts from this address: 503, never 429.
            let e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "too many failed authentications; slow down",
            )
            .retry_after(retry);
            return refuse(e, "anonymous", "unauthorized");
        }
        let e = ApiError::unauthorized(
            "this receiver needs an API token: `Authorization: Bearer <token>` or basic auth with the token as password",
        );
        let mut r = refuse(e, "anonymous", "unauthorized");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="capstan", Basic realm="capstan""#),
        );
        return r;
    };
    let actor = caller.actor();
    if caller.authority().best_role() < Some(ApiRole::Operator) {
        let e = ApiError::forbidden(format!(
            "token `{}` needs the `operator` role (globally or in a project) to deliver alerts",
            caller.name
        ));
        return refuse(e, &actor, "unauthorized");
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let status = e.status();
            let (code, message) = if status == StatusCode::PAYLOAD_TOO_LARGE {
                (
                    "payload_too_large",
                    format!(
                        "the alert group is over {} bytes ([alerts] max_body_bytes); lower the webhook's max_alerts",
                        state.alerts.max_body_bytes()
                    ),
                )
            } else {
                ("bad_request", e.body_text())
            };
            return refuse(ApiError::new(status, code, message), &actor, "invalid");
        }
    };
    match state.alerts.receive(&receiver, &body).await {
        Ok(stored) => {
            let detail = serde_json::json!({ "receiver": receiver, "group": stored.id,
                "alerts": stored.alerts, "new_alerts": stored.new_alerts, "state": stored.state });
            super::audit::delivery(&state, &actor, &path, true, StatusCode::OK, detail);
            (StatusCode::OK, Json(stored)).into_response()
        }
        Err(e) => {
            let e = ApiError::from(e);
            let detail = serde_json::json!({ "receiver": receiver, "reason": e.message });
            super::audit::delivery(&state, &actor, &path, false, e.status, detail);
            e.into_response()
        }
    }
}

/// The token in `Authorization`: bearer, or the password of basic auth.
fn presented(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text
            .split_once(':')
            .map(|(_, password)| password.to_string());
    }
    None
}

/// The routes the caller may see.
#[derive(Serialize, ToSchema)]
pub struct RouteList {
    /// In the order they are tried.
    pub routes: Vec<RouteView>,
}

/// Lists alert routes (config and API) of the caller's projects, in the order they are tried.
#[utoipa::path(get, path = "/v1/alerts/routes", tag = "alerts", responses((status = 200, body = RouteList)))]
pub async fn routes(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<RouteList>, ApiError> {
    Ok(Json(RouteList {
        routes: state.alerts.routes_for(&caller.authority())?,
    }))
}

/// One route.
#[utoipa::path(get, path = "/v1/alerts/routes/{name}", tag = "alerts", params(("name" = String, Path)),
    responses((status = 200, body = RouteView), (status = 404, body = ErrorBody)))]
pub async fn route(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<RouteView>, ApiError> {
    state
        .alerts
        .routes_for(&caller.authority())?
        .into_iter()
        .find(|r| r.route.name == name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no alert route named `{name}`")))
}

/// Stores a route (operator of its project); its handlers must be alert-handler plugins of that project.
#[utoipa::path(put, path = "/v1/alerts/routes/{name}", tag = "alerts", params(("name" = String, Path)), request_body = Route,
    responses((status = 200, body = RouteView), (status = 201, body = RouteView), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_route(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(mut route): Body<Route>,
) -> Result<(StatusCode, Json<RouteView>), ApiError> {
    if !route.name.is_empty() && route.name != name {
        return Err(ApiError::bad_request(format!(
            "the body names route `{}`, the path `{name}`",
            route.name
        )));
    }
    route.name = name;
    let new = state
        .alerts
        .put_route(route.clone(), &caller.authority())
        .await
        .map_err(|e| match e {
            AlertsError::Invalid(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_route", m)
            }
            other => other.into(),
        })?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(RouteView {
            route,
            source: "api".into(),
        }),
    ))
}

/// Deletes a route stored through the API (admin of its project).
#[utoipa::path(delete, path = "/v1/alerts/routes/{name}", tag = "alerts", params(("name" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_route(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .alerts
        .delete_route(&name, &caller.authority())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Filters of `GET /v1/alerts/groups`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GroupQuery {
    /// `pending`, `duplicate`, `processed`, `muted`, `unrouted` or `failed`.
    pub state: Option<String>,
    /// Receiver path segment.
    pub receiver: Option<String>,
    /// Groups with an alert of this name.
    pub alertname: Option<String>,
    /// Groups with an alert of this fingerprint.
    pub fingerprint: Option<String>,
    /// Received at or after (Unix ms).
    #[param(minimum = 0)]
    pub since_ms: Option<i64>,
    /// At most this many, newest first (default 50, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// The group listing.
#[derive(Serialize, ToSchema)]
pub struct GroupList {
    /// Newest first.
    pub groups: Vec<GroupSummary>,
}

/// Lists received groups (global roles: all; project roles: the groups routed to their projects).
#[utoipa::path(get, path = "/v1/alerts/groups", tag = "alerts", params(GroupQuery),
    responses((status = 200, body = GroupList), (status = 400, body = ErrorBody)))]
pub async fn groups(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<GroupQuery>, QueryRejection>,
) -> Result<Json<GroupList>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if q.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
        return Err(ApiError::bad_request("limit must be 1 to 1000"));
    }
    if q.since_ms.is_some_and(|s| s < 0) {
        return Err(ApiError::bad_request("since_ms must be 0 or more"));
    }
    let filter = GroupFilter {
        state: q.state,
        receiver: q.receiver,
        alertname: q.alertname,
        fingerprint: q.fingerprint,
        projects: None,
        since_ms: q.since_ms,
        limit: i64::from(q.limit.unwrap_or(50)),
    };
    Ok(Json(GroupList {
        groups: state.alerts.groups(filter, &caller.authority())?,
    }))
}

/// One alert of a group, and whether this delivery brought it first.
#[derive(Serialize, ToSchema)]
pub struct AlertView {
    /// The alert as received.
    #[serde(flatten)]
    pub alert: crate::alerts::model::Alert,
    /// `false`: seen before (same group key, fingerprint, status, start), not handled again.
    pub new: bool,
}

/// A group with its alerts and actions.
#[derive(Serialize, ToSchema)]
pub struct GroupView {
    /// The group.
    #[serde(flatten)]
    pub group: GroupSummary,
    /// Group labels.
    #[schema(value_type = Object)]
    pub group_labels: std::collections::BTreeMap<String, String>,
    /// Its alerts.
    pub alert_list: Vec<AlertView>,
    /// What the handlers did, with outcomes.
    pub actions: Vec<ActionRecord>,
}

/// One group: its alerts and the actions taken.
#[utoipa::path(get, path = "/v1/alerts/groups/{id}", tag = "alerts", params(("id" = String, Path)),
    responses((status = 200, body = GroupView), (status = 404, body = ErrorBody)))]
pub async fn group(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<GroupView>, ApiError> {
    let crate::alerts::engine::GroupDetail {
        summary: group,
        hook,
        new,
        actions,
    } = state.alerts.group(&id, &caller.authority())?;
    let mut new: std::collections::HashSet<(String, String, String)> = new.into_iter().collect();
    let alert_list = hook
        .alerts
        .into_iter()
        .map(|a| {
            let is_new =
                new.remove(&(a.fingerprint.clone(), a.status.clone(), a.starts_at.clone()));
            AlertView {
                alert: a,
                new: is_new,
            }
        })
        .collect();
    Ok(Json(GroupView {
        group,
        group_labels: hook.group_labels,
        alert_list,
        actions,
    }))
}
