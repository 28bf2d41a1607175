//! `/v1/provisions`: instances of provisioner plugins, their plans (verdict
//! and diff per object), applies of a reviewed plan, destroy and drift.
//! Approvals of plans and destroys on clusters that need them are decided
//! through `/v1/approvals` (kinds `provision-plan`, `provision-destroy`).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody, StorageClass, storage_error};
use super::json::Body;
use crate::provisioning::ProvisionError;
use crate::provisioning::engine::NewInstance;
use crate::provisioning::model::{Instance, Plan};
use crate::provisioning::store::{ApplyOptions, Job};

impl From<ProvisionError> for ApiError {
    fn from(e: ProvisionError) -> Self {
        let message = e.to_string();
        match e {
            ProvisionError::Invalid(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_provision",
                message,
            ),
            ProvisionError::Forbidden(_) => ApiError::forbidden(message),
            ProvisionError::OutsideGrant { details, .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "outside_grant", message).with_details(details)
            }
            ProvisionError::NotFound(_) => ApiError::not_found(message),
            ProvisionError::Conflict { details, .. } => {
                ApiError::conflict(message).with_details(details)
            }
            ProvisionError::Failed(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "cluster_error", message)
            }
            ProvisionError::Store(s) => match s {
                crate::store::StoreError::NotFound(_) => ApiError::not_found(message),
                crate::store::StoreError::Conflict(_) => ApiError::conflict(message),
                other => storage_error(message, StorageClass::of_store(&other)),
            },
        }
    }
}

/// An instance and its latest apply or destroy.
#[derive(Serialize, ToSchema)]
pub struct InstanceView {
    /// The instance.
    #[serde(flatten)]
    pub instance: Instance,
    /// Its latest job.
    pub last_job: Option<Job>,
}

/// The instance listing.
#[derive(Serialize, ToSchema)]
pub struct InstanceList {
    /// Instances of the caller's projects.
    pub provisions: Vec<Instance>,
}

/// A plan and the job applying it.
#[derive(Serialize, ToSchema)]
pub struct PlanView {
    /// The plan.
    #[serde(flatten)]
    pub plan: Plan,
    /// The apply of this plan, if asked for.
    pub job: Option<Job>,
}

/// Body of `POST .../apply`.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// Take over fields other field managers own (the grant must allow force).
    #[serde(default)]
    pub force: bool,
    /// Delete and re-create objects whose change touches an immutable field.
    #[serde(default)]
    pub recreate: bool,
    /// How long to wait for the apply to finish before answering 202 (ms, at most 50 000; default 30 000).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 50000)]
    pub wait_ms: Option<u64>,
}

/// Body of `POST .../destroy`.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct DestroyRequest {
    /// How long to wait before answering 202 (ms, at most 50 000; default 30 000).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 50000)]
    pub wait_ms: Option<u64>,
}

/// A drift check's outcome.
#[derive(Serialize, ToSchema)]
pub struct DriftView {
    /// `in-sync`, `drifted` or `failed`.
    pub drift: String,
    /// The objects that differ, or why it failed.
    pub detail: String,
}

fn wait(ms: Option<u64>) -> Result<Duration, ApiError> {
    match ms {
        Some(ms) if ms > 50_000 => Err(ApiError::bad_request("wait_ms must be at most 50000")),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(Duration::from_secs(30)),
    }
}

fn job_status(job: &Job) -> StatusCode {
    if job.finished() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    }
}

/// Creates an instance, or stores its new spec as the next revision.
#[utoipa::path(post, path = "/v1/provisions", tag = "provisioning", request_body = NewInstance,
    responses((status = 201, body = InstanceView), (status = 200, body = InstanceView),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(body): Body<NewInstance>,
) -> Result<(StatusCode, Json<InstanceView>), ApiError> {
    let who = caller.authority();
    let (instance, created) = state.provisioning.put(body, &who).await?;
    let (instance, last_job) = state.provisioning.instance(&instance.name, &who)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(InstanceView { instance, last_job })))
}

/// Lists the instances of the caller's projects.
#[utoipa::path(get, path = "/v1/provisions", tag = "provisioning",
    responses((status = 200, body = InstanceList)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<InstanceList>, ApiError> {
    let provisions = state.provisioning.list(&caller.authority())?;
    Ok(Json(InstanceList { provisions }))
}

/// One instance: spec, state, drift and latest job.
#[utoipa::path(get, path = "/v1/provisions/{name}", tag = "provisioning",
    params(("name" = String, Path)),
    responses((status = 200, body = InstanceView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<InstanceView>, ApiError> {
    let (instance, last_job) = state.provisioning.instance(&name, &caller.authority())?;
    Ok(Json(InstanceView { instance, last_job }))
}

/// Plans the instance's current spec: verdict, diff and live resourceVersion per object.
#[utoipa::path(post, path = "/v1/provisions/{name}/plans", tag = "provisioning",
    params(("name" = String, Path)),
    responses((status = 201, body = PlanView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn plan(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<PlanView>), ApiError> {
    let plan = state.provisioning.plan(&name, &caller.authority()).await?;
    Ok((StatusCode::CREATED, Json(PlanView { plan, job: None })))
}

/// One plan and its apply.
#[utoipa::path(get, path = "/v1/provisions/{name}/plans/{id}", tag = "provisioning",
    params(("name" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = PlanView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show_plan(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<PlanView>, ApiError> {
    let (plan, job) = state
        .provisioning
        .plan_of(&name, &id, &caller.authority())?;
    Ok(Json(PlanView { plan, job }))
}

/// Applies exactly a reviewed plan. 409 if it is stale, conflicts with
/// other field managers (without `force`) or changes an immutable field
/// (without `recreate`); 202 while it awaits approval or runs.
#[utoipa::path(post, path = "/v1/provisions/{name}/plans/{id}/apply", tag = "provisioning",
    params(("name" = String, Path), ("id" = String, Path)), request_body = ApplyRequest,
    responses((status = 200, body = Job), (status = 202, body = Job), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 502, body = ErrorBody)))]
pub async fn apply(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, id)): Path<(String, String)>,
    Body(body): Body<ApplyRequest>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let wait = wait(body.wait_ms)?;
    let options = ApplyOptions {
        force: body.force,
        recreate: body.recreate,
    };
    let job = state
        .provisioning
        .apply(&name, &id, options, &caller.authority(), wait)
        .await?;
    let conflict = job.state == "failed"
        && matches!(
            job.result["error"].as_str(),
            Some("stale" | "field-manager-conflict" | "immutable-field" | "plan-outdated")
        );
    if conflict {
        let message = job.result["message"]
            .as_str()
            .unwrap_or("apply refused")
            .to_string();
        return Err(ApiError::conflict(message)
            .with_details(serde_json::to_value(&job).unwrap_or_default()));
    }
    Ok((job_status(&job), Json(job)))
}

/// Destroys the instance's objects in reverse wave order; 202 while
/// objects (a Namespace) are still terminating, with what they wait on, or
/// while the destroy awaits an approval (clusters that need one; the
/// approval's id in `result.approval`).
#[utoipa::path(post, path = "/v1/provisions/{name}/destroy", tag = "provisioning",
    params(("name" = String, Path)), request_body = DestroyRequest,
    responses((status = 200, body = Job), (status = 202, body = Job), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn destroy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(body): Body<DestroyRequest>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let wait = wait(body.wait_ms)?;
    let job = state
        .provisioning
        .destroy(&name, &caller.authority(), wait)
        .await?;
    let status = if job.state == "done" {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(job)))
}

/// Re-plans the instance now and records whether it drifted.
#[utoipa::path(post, path = "/v1/provisions/{name}/drift", tag = "provisioning",
    params(("name" = String, Path)),
    responses((status = 200, body = DriftView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn drift(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<DriftView>, ApiError> {
    let c = state
        .provisioning
        .drift_now(&name, &caller.authority())
        .await?;
    Ok(Json(DriftView {
        drift: c.drift,
        detail: c.detail,
    }))
}
