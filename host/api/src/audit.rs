//! `/v1/audit`: the audit log (capability uses and mutating API calls).

use axum::Json;
use axum::extract::{Query, State};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use crate::capabilities::AuditRecord;
use crate::capabilities::audit::AuditQuery;

/// Audit records, newest first.
#[derive(Serialize, ToSchema)]
pub struct AuditList {
    /// Records.
    pub records: Vec<AuditRecord>,
}

/// Newest audit records matching the filter. API calls have capability
/// `api`, actor `token:<name>` (or `anonymous`), the path as target, the
/// method as verb and the status code as outcome.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody)))]
pub async fn query(
    State(state): State<AppState>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditList>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if q.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
        return Err(ApiError::bad_request("limit must be 1 to 1000"));
    }
    let records = state
        .registry
        .runtime()
        .env()
        .audit
        .query(&q)
        .await
        .map_err(|e| ApiError::internal(format!("reading the audit log: {e}")))?;
    Ok(Json(AuditList { records }))
}

/// Audits one webhook delivery (push or Alertmanager), accepted or refused,
/// through the batched writer as the auth guard does for refusals.
pub(crate) fn delivery(
    state: &AppState,
    actor: &str,
    path: &str,
    allowed: bool,
    status: http::StatusCode,
    detail: serde_json::Value,
) {
    state.registry.runtime().env().audit.record(AuditRecord {
        id: 0,
        at_ms: 0,
        actor: actor.into(),
        plugin: None,
        version: None,
        invocation: None,
        capability: "api".into(),
        target: path.into(),
        verb: "POST".into(),
        allowed,
        outcome: status.as_u16().to_string(),
        detail,
    });
}
