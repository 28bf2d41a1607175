//! `/v1/tokens`: create, list and revoke API tokens (admin only).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::{ApiRole, Caller, NewToken, TokenInfo};
use super::error::{ApiError, ErrorBody};

/// Body of `POST /v1/tokens`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Name, 1-64 of `[A-Za-z0-9._-]`, unique among active tokens.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// Global role: `viewer`, `operator` or `admin`. Without it and
    /// without `projects`, the token is a global `viewer`.
    #[serde(default)]
    pub role: Option<ApiRole>,
    /// Roles in single projects, e.g. `{"team-a": "operator"}`.
    #[serde(default)]
    pub projects: BTreeMap<String, ApiRole>,
}

/// The token listing.
#[derive(Serialize, ToSchema)]
pub struct TokenList {
    /// Tokens, oldest first, revoked ones included; never secrets or hashes.
    pub tokens: Vec<TokenInfo>,
}

/// Creates a token and returns its secret, once.
#[utoipa::path(post, path = "/v1/tokens", tag = "auth", request_body = CreateToken,
    responses(
        (status = 201, body = NewToken, description = "Created; `token` is shown only this once"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    super::json::Body(mut body): super::json::Body<CreateToken>,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    if body.role.is_none() && body.projects.is_empty() {
        body.role = Some(ApiRole::Viewer);
    }
    let token = state.auth.tokens.create(
        &body.name,
        body.role,
        body.projects.clone(),
        &caller.actor(),
    )?;
    state
        .registry
        .audit_change(
            &caller.authority(),
            "token.create",
            &body.name,
            serde_json::json!({ "name": body.name, "role": body.role, "projects": body.projects }),
        )
        .await;
    tracing::info!(token = %body.name, role = ?body.role, projects = ?body.projects, by = %caller.name, "API token created");
    Ok((StatusCode::CREATED, Json(token)))
}

/// Lists tokens: names, roles, when created and revoked.
#[utoipa::path(get, path = "/v1/tokens", tag = "auth",
    responses((status = 200, body = TokenList)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<TokenList>, ApiError> {
    Ok(Json(TokenList {
        tokens: state.auth.tokens.list()?,
    }))
}

/// Revokes the active token `name` (effective immediately). The last admin
/// token cannot be revoked.
#[utoipa::path(delete, path = "/v1/tokens/{name}", tag = "auth",
    params(("name" = String, Path, description = "Token name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.auth.tokens.revoke(&name)?;
    state
        .registry
        .audit_change(
            &caller.authority(),
            "token.revoke",
            &name,
            serde_json::json!({ "name": name }),
        )
        .await;
    tracing::info!(token = %name, by = %caller.name, "API token revoked");
    Ok(StatusCode::NO_CONTENT)
}
