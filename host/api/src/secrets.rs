//! `/v1/secrets`: store, list (names only) and delete the named secrets
//! plugins may be granted (admin only). Values go in and never come out.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use crate::capabilities::secrets::SecretBox;

/// Body of `PUT /v1/secrets/{name}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSecret {
    /// The value (at most 64 KiB). Encrypted at rest, never returned.
    pub value: String,
}

impl std::fmt::Debug for PutSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PutSecret { value: [REDACTED] }")
    }
}

/// The secret listing.
#[derive(Serialize, ToSchema)]
pub struct SecretList {
    /// Secret names, sorted. Values are never listed.
    pub secrets: Vec<String>,
}

/// Stores or replaces a secret.
#[utoipa::path(put, path = "/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$", description = "Secret name, 1-128 of [A-Za-z0-9._-]")),
    request_body = PutSecret,
    responses((status = 204, description = "Stored"), (status = 400, body = ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    // The rejection text of a body that does not parse could quote the value.
    const SHAPE: &str = "expected a JSON body {\"value\": \"<string>\"}";
    let Json(body) = body.map_err(|e| ApiError::new(e.status(), "bad_request", SHAPE))?;
    let super::json::Body(body) =
        super::json::Body::<PutSecret>::from_value(body, |_| SHAPE.to_string())?;
    let env = state.registry.runtime().env();
    env.secrets.put(&env.store, &name, &body.value)?;
    state
        .registry
        .audit_change(
            &caller.authority(),
            "secret.put",
            &name,
            serde_json::json!({ "name": name, "bytes": body.value.len() }),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists secret names (never values).
#[utoipa::path(get, path = "/v1/secrets", tag = "secrets",
    responses((status = 200, body = SecretList)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<SecretList>, ApiError> {
    let env = state.registry.runtime().env();
    Ok(Json(SecretList {
        secrets: SecretBox::names(&env.store)?,
    }))
}

/// Deletes a secret.
#[utoipa::path(delete, path = "/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "Secret name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let env = state.registry.runtime().env();
    SecretBox::delete(&env.store, &name)?;
    state
        .registry
        .audit_change(
            &caller.authority(),
            "secret.delete",
            &name,
            serde_json::json!({ "name": name }),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}
