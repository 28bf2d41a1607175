//! `/v1/projects`, `/v1/ceilings`, `/v1/approvals`: who owns plugins, what
//! may be granted to them, and the approval of versions that go beyond.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::json::Body;
use crate::registry::RegistryError;
use crate::trust::approvals::{Approval, ApprovalState};
use crate::trust::ceilings::{Ceiling, ScopedCeiling};
use crate::trust::projects::{Project, TrustError};

impl From<TrustError> for ApiError {
    fn from(e: TrustError) -> Self {
        RegistryError::from(e).into()
    }
}

/// The project listing.
#[derive(Serialize, ToSchema)]
pub struct ProjectList {
    /// Projects the caller has a role in (all of them for global roles).
    pub projects: Vec<Project>,
}

/// Body of `POST /v1/projects`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// A DNS label: 1-63 of `a-z`, `0-9`, `-`.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
}

/// Lists projects.
#[utoipa::path(get, path = "/v1/projects", tag = "trust",
    responses((status = 200, body = ProjectList), (status = 401, body = ErrorBody)))]
pub async fn list_projects(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ProjectList>, ApiError> {
    let who = caller.authority();
    let mut projects = state.registry.gate().projects().list()?;
    projects.retain(|p| who.can_view(&p.name));
    Ok(Json(ProjectList { projects }))
}

/// Creates a project (global admin).
#[utoipa::path(post, path = "/v1/projects", tag = "trust", request_body = CreateProject,
    responses((status = 201, body = Project), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_project(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(body): Body<CreateProject>,
) -> Result<(StatusCode, Json<Project>), ApiError> {
    let project =
        state
            .registry
            .gate()
            .projects()
            .create(&body.name, &body.description, &caller.actor())?;
    state
        .registry
        .audit_change(
            &caller.authority(),
            "project.create",
            &body.name,
            serde_json::json!({ "name": body.name, "description": body.description }),
        )
        .await;
    Ok((StatusCode::CREATED, Json(project)))
}

/// Deletes a project that owns no plugin (global admin).
#[utoipa::path(delete, path = "/v1/projects/{name}", tag = "trust",
    params(("name" = String, Path, description = "Project name")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn delete_project(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.registry.gate().projects().delete(&name)?;
    state
        .registry
        .audit_change(
            &caller.authority(),
            "project.delete",
            &name,
            serde_json::json!({ "name": name }),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The ceiling listing.
#[derive(Serialize, ToSchema)]
pub struct CeilingList {
    /// Ceilings of the caller's projects and of `*`.
    pub ceilings: Vec<ScopedCeiling>,
}

/// Lists grant ceilings.
#[utoipa::path(get, path = "/v1/ceilings", tag = "trust",
    responses((status = 200, body = CeilingList), (status = 401, body = ErrorBody)))]
pub async fn list_ceilings(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<CeilingList>, ApiError> {
    let who = caller.authority();
    let mut ceilings = state.registry.gate().projects().ceilings()?;
    ceilings.retain(|c| c.project == "*" || who.can_view(&c.project));
    Ok(Json(CeilingList { ceilings }))
}

/// Sets the ceiling of a project (`*`: every project) (global admin).
#[utoipa::path(put, path = "/v1/ceilings/{project}", tag = "trust", request_body = Ceiling,
    params(("project" = String, Path, description = "Project name, or `*`")),
    responses((status = 200, body = ScopedCeiling), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_project_ceiling(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    Body(ceiling): Body<Ceiling>,
) -> Result<Json<ScopedCeiling>, ApiError> {
    put(&state, &caller, project, None, ceiling).await
}

/// Sets the ceiling of one plugin of a project (global admin).
#[utoipa::path(put, path = "/v1/ceilings/{project}/{plugin}", tag = "trust", request_body = Ceiling,
    params(("project" = String, Path, description = "Project name, or `*`"), ("plugin" = String, Path)),
    responses((status = 200, body = ScopedCeiling), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_plugin_ceiling(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, plugin)): Path<(String, String)>,
    Body(ceiling): Body<Ceiling>,
) -> Result<Json<ScopedCeiling>, ApiError> {
    put(&state, &caller, project, Some(plugin), ceiling).await
}

async fn put(
    state: &AppState,
    caller: &Caller,
    project: String,
    plugin: Option<String>,
    ceiling: Ceiling,
) -> Result<Json<ScopedCeiling>, ApiError> {
    let scoped = ScopedCeiling {
        project,
        plugin,
        ceiling,
    };
    let old = state
        .registry
        .gate()
        .projects()
        .put_ceiling(&scoped, "api", &caller.actor())
        .map_err(|e| match e {
            TrustError::Invalid(m) => ApiError::bad_request(m),
            other => other.into(),
        })?;
    state
        .registry
        .audit_change(
            &caller.authority(),
            "ceiling.set",
            &target(&scoped.project, scoped.plugin.as_deref()),
            serde_json::json!({ "from": old, "to": scoped.ceiling }),
        )
        .await;
    Ok(Json(scoped))
}

fn target(project: &str, plugin: Option<&str>) -> String {
    match plugin {
        Some(p) => format!("ceiling {project}/{p}"),
        None => format!("ceiling {project}"),
    }
}

/// Removes the ceiling of a project (global admin).
#[utoipa::path(delete, path = "/v1/ceilings/{project}", tag = "trust",
    params(("project" = String, Path, description = "Project name, or `*`")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_project_ceiling(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete(&state, &caller, &project, "").await
}

/// Removes the ceiling of one plugin (global admin).
#[utoipa::path(delete, path = "/v1/ceilings/{project}/{plugin}", tag = "trust",
    params(("project" = String, Path), ("plugin" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_plugin_ceiling(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, plugin)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    delete(&state, &caller, &project, &plugin).await
}

async fn delete(
    state: &AppState,
    caller: &Caller,
    project: &str,
    plugin: &str,
) -> Result<StatusCode, ApiError> {
    let old = state
        .registry
        .gate()
        .projects()
        .delete_ceiling(project, plugin)?;
    let plugin = (!plugin.is_empty()).then_some(plugin);
    state
        .registry
        .audit_change(
            &caller.authority(),
            "ceiling.delete",
            &target(project, plugin),
            serde_json::json!({ "from": old }),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Filter of `GET /v1/approvals`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApprovalQuery {
    /// Only approvals in this state (`pending`, `approved`, `rejected`).
    pub state: Option<ApprovalState>,
}

/// The approval listing.
#[derive(Serialize, ToSchema)]
pub struct ApprovalList {
    /// Approvals of the caller's projects, newest first.
    pub approvals: Vec<Approval>,
}

/// Lists approvals.
#[utoipa::path(get, path = "/v1/approvals", tag = "trust", params(ApprovalQuery),
    responses((status = 200, body = ApprovalList), (status = 400, body = ErrorBody)))]
pub async fn list_approvals(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<ApprovalQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ApprovalList>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let who = caller.authority();
    let mut approvals = state
        .registry
        .gate()
        .approvals()
        .list(None, q.state)
        .map_err(RegistryError::from)?;
    approvals.retain(|a| who.can_view(&a.project));
    Ok(Json(ApprovalList { approvals }))
}

/// Shows one approval, with the grant diff of a held plugin version.
#[utoipa::path(get, path = "/v1/approvals/{id}", tag = "trust",
    params(("id" = String, Path)),
    responses((status = 200, body = Approval), (status = 404, body = ErrorBody)))]
pub async fn show_approval(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Approval>, ApiError> {
    let a = state
        .registry
        .gate()
        .approvals()
        .get(&id)
        .map_err(RegistryError::from)?;
    if !caller.authority().can_view(&a.project) {
        return Err(ApiError::not_found(format!("no approval {id}")));
    }
    Ok(Json(a))
}

/// Body of an approval decision.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// Why (kept with the decision).
    #[serde(default)]
    pub comment: String,
}

/// Approves: an admin who did not request it. A held plugin version that
/// was uploaded to be active becomes active.
#[utoipa::path(post, path = "/v1/approvals/{id}/approve", tag = "trust", request_body = Option<Decision>,
    params(("id" = String, Path)),
    responses((status = 200, body = Approval), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn approve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Approval>, ApiError> {
    decide(&state, &caller, &id, true, body).await
}

/// Rejects: the version stays stored but cannot be activated.
#[utoipa::path(post, path = "/v1/approvals/{id}/reject", tag = "trust", request_body = Option<Decision>,
    params(("id" = String, Path)),
    responses((status = 200, body = Approval), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn reject(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Approval>, ApiError> {
    decide(&state, &caller, &id, false, body).await
}

async fn decide(
    state: &AppState,
    caller: &Caller,
    id: &str,
    approve: bool,
    body: axum::body::Bytes,
) -> Result<Json<Approval>, ApiError> {
    // The body is optional: no body is no comment.
    let comment = if body.iter().all(u8::is_ascii_whitespace) {
        String::new()
    } else {
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
        Body::<Decision>::from_value(value, |e| format!("expected {{\"comment\": \"...\"}}: {e}"))?
            .0
            .comment
    };
    let who = caller.authority();
    let a = state
        .registry
        .gate()
        .approvals()
        .get(id)
        .map_err(RegistryError::from)?;
    if !who.can_view(&a.project) {
        return Err(ApiError::not_found(format!("no approval {id}")));
    }
    Ok(Json(
        state
            .registry
            .decide_approval(id, &who, approve, &comment)
            .await?,
    ))
}
