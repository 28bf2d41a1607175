//! `/v1/plugins`: upload, list, show, delete, activate, roll back, invoke.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::dto;
use super::error::{ApiError, ErrorBody};
use crate::manifest::{Manifest, Role};
use crate::registry::{Installed, LoadFailure, Source};
use crate::runtime::{Accounting, Call, Outcome, Output};
use crate::store::{HistoryEntry, VersionRecord};

/// A plugin in the listing.
#[derive(Serialize, ToSchema)]
pub struct PluginSummary {
    /// Name.
    pub name: String,
    /// Owning project.
    pub project: String,
    /// Role of the active version.
    pub role: Option<Role>,
    /// Active version, if one is loaded.
    pub active_version: Option<String>,
    /// Description of the active version.
    pub description: String,
    /// The last failed load, if any since the active version was loaded.
    pub last_error: Option<LoadFailure>,
}

/// The plugin listing.
#[derive(Serialize, ToSchema)]
pub struct PluginList {
    /// Plugins, by name.
    pub plugins: Vec<PluginSummary>,
    /// Plugins-directory entries that could not be loaded, by manifest path.
    pub directory_errors: BTreeMap<String, String>,
}

/// One plugin in detail.
#[derive(Serialize, ToSchema)]
pub struct PluginDetail {
    /// Summary.
    #[serde(flatten)]
    pub summary: PluginSummary,
    /// Manifest of the active version.
    pub manifest: Option<Manifest>,
    /// Digest of the active version.
    pub digest: Option<String>,
    /// Every stored version.
    pub versions: Vec<VersionRecord>,
    /// What happened to the plugin, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Approvals of its versions (held ones first), newest first.
    pub approvals: Vec<crate::trust::approvals::Approval>,
}

fn summary(state: &AppState, name: &str) -> PluginSummary {
    let slot = state.registry.get_slot(name).ok();
    let active = slot.as_ref().and_then(|s| s.active());
    PluginSummary {
        name: name.to_string(),
        project: state.registry.gate().owner(name),
        role: active.as_ref().map(|p| p.manifest.role),
        active_version: active.as_ref().map(|p| p.manifest.version.clone()),
        description: active
            .as_ref()
            .map(|p| p.manifest.description.clone())
            .unwrap_or_default(),
        last_error: slot.and_then(|s| s.last_error()),
    }
}

/// Lists plugins.
#[utoipa::path(get, path = "/v1/plugins", tag = "plugins",
    responses((status = 200, body = PluginList)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<PluginList> {
    let who = caller.authority();
    let gate = state.registry.gate();
    let plugins = state
        .registry
        .names()
        .iter()
        .filter(|n| who.can_view(&gate.owner(n)))
        .map(|n| summary(&state, n))
        .collect();
    Json(PluginList {
        plugins,
        directory_errors: state.registry.directory_errors(),
    })
}

/// Shows a plugin with its versions and history.
#[utoipa::path(get, path = "/v1/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, body = PluginDetail), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PluginDetail>, ApiError> {
    let store = state.registry.store();
    let versions = store
        .versions(&name)
        .map_err(crate::registry::RegistryError::from)?;
    if versions.is_empty() && state.registry.get_slot(&name).is_err() {
        return Err(ApiError::not_found(format!("no plugin named {name}")));
    }
    let active = state.registry.get_slot(&name).ok().and_then(|s| s.active());
    Ok(Json(PluginDetail {
        summary: summary(&state, &name),
        manifest: active.as_ref().map(|p| (*p.manifest).clone()),
        digest: active.as_ref().map(|p| p.digest.to_string()),
        versions,
        history: store
            .history(&name)
            .map_err(crate::registry::RegistryError::from)?,
        approvals: approvals_of(&state, &name)?,
    }))
}

fn approvals_of(
    state: &AppState,
    name: &str,
) -> Result<Vec<crate::trust::approvals::Approval>, ApiError> {
    let prefix = format!("{name}@");
    let mut all = state
        .registry
        .gate()
        .approvals()
        .list(Some(crate::registry::trust_kind()), None)
        .map_err(crate::registry::RegistryError::from)?;
    all.retain(|a| a.subject.starts_with(&prefix));
    all.sort_by_key(|a| a.state != crate::trust::approvals::ApprovalState::Pending);
    Ok(all)
}

/// Query of an upload.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// Make the new version active (default true).
    #[serde(default = "yes")]
    pub activate: bool,
}

fn yes() -> bool {
    true
}

/// The parts of an upload.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The manifest, TOML text.
    manifest: String,
    /// The Wasm component.
    #[schema(value_type = String, format = Binary)]
    component: Vec<u8>,
}

/// Uploads a new version: multipart with a `manifest` (TOML) and a `component` (Wasm) part.
#[utoipa::path(post, path = "/v1/plugins", tag = "plugins",
    params(UploadQuery),
    request_body(content_type = "multipart/form-data", content = UploadForm, description = "parts `manifest` (TOML text) and `component` (Wasm component bytes)"),
    responses(
        (status = 201, body = Installed, description = "Stored (and activated unless activate=false)"),
        (status = 200, body = Installed, description = "Exactly this version was already stored"),
        (status = 202, body = Installed, description = "Stored and compiled, but held for approval: its grants go beyond the project's ceiling or widen the active version's (`held` says why and names the approval)"),
        (status = 403, body = ErrorBody),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(StatusCode, Json<Installed>), ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut multipart = multipart.map_err(|e| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request",
            format!("expected a multipart/form-data body: {}", e.body_text()),
        )
    })?;
    upload_parts(state, caller, q, &mut multipart).await
}

async fn upload_parts(
    state: AppState,
    caller: Caller,
    q: UploadQuery,
    multipart: &mut Multipart,
) -> Result<(StatusCode, Json<Installed>), ApiError> {
    let (mut manifest, mut component) = (None, None);
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(format!("malformed multipart body: {e}")))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let data = field
            .bytes()
            .await
            .map_err(|e| ApiError::bad_request(format!("reading part `{name}`: {e}")))?;
        match name.as_str() {
            "manifest" => {
                manifest = Some(
                    String::from_utf8(data.to_vec())
                        .map_err(|_| ApiError::bad_request("part `manifest` is not UTF-8"))?,
                )
            }
            "component" => component = Some(data.to_vec()),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unexpected part `{other}`; expected `manifest` and `component`"
                )));
            }
        }
    }
    let manifest = manifest.ok_or_else(|| ApiError::bad_request("missing part `manifest`"))?;
    let component = component.ok_or_else(|| ApiError::bad_request("missing part `component`"))?;
    let installed = state
        .registry
        .install_as(
            &manifest,
            component,
            Source::Api,
            q.activate,
            &caller.authority(),
        )
        .await?;
    let status = if installed.held.is_some() {
        StatusCode::ACCEPTED
    } else if installed.changed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(installed)))
}

/// Deletes a plugin and all its versions.
#[utoipa::path(delete, path = "/v1/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.registry.delete_as(&name, &caller.authority()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists a plugin's stored versions.
#[utoipa::path(get, path = "/v1/plugins/{name}/versions", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, body = [VersionRecord]), (status = 404, body = ErrorBody)))]
pub async fn versions(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<VersionRecord>>, ApiError> {
    let versions = state
        .registry
        .store()
        .versions(&name)
        .map_err(crate::registry::RegistryError::from)?;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("no plugin named {name}")));
    }
    Ok(Json(versions))
}

/// Deletes a version that is not active.
#[utoipa::path(delete, path = "/v1/plugins/{name}/versions/{version}", tag = "plugins",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_version(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .registry
        .delete_version_as(&name, &version, &caller.authority())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `PUT /v1/plugins/{name}/active`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    /// The stored version to make active.
    pub version: String,
}

/// The active version after a change.
#[derive(Serialize, ToSchema)]
pub struct ActiveVersion {
    /// Plugin name.
    pub name: String,
    /// Now-active version.
    pub active_version: String,
}

/// Makes a stored version the active one.
#[utoipa::path(put, path = "/v1/plugins/{name}/active", tag = "plugins",
    params(("name" = String, Path)), request_body = ActivateRequest,
    responses((status = 200, body = ActiveVersion), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The version needs an approval it does not have (`approval_required`)"), (status = 422, body = ErrorBody)))]
pub async fn activate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    super::json::Body(body): super::json::Body<ActivateRequest>,
) -> Result<Json<ActiveVersion>, ApiError> {
    state
        .registry
        .activate_as(&name, &body.version, &caller.authority())
        .await?;
    Ok(Json(ActiveVersion {
        name,
        active_version: body.version,
    }))
}

/// Returns to the previously active version.
#[utoipa::path(post, path = "/v1/plugins/{name}/rollback", tag = "plugins",
    params(("name" = String, Path)),
    responses((status = 200, body = ActiveVersion), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn rollback(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<ActiveVersion>, ApiError> {
    let version = state
        .registry
        .rollback_as(&name, &caller.authority())
        .await?;
    Ok(Json(ActiveVersion {
        name,
        active_version: version,
    }))
}

/// What an invocation cost.
#[derive(Serialize, ToSchema)]
pub struct InvocationInfo {
    /// Invocation id (also in the server's logs).
    pub id: String,
    /// Plugin version that ran.
    pub version: String,
    /// Function called.
    pub call: String,
    /// Wall-clock milliseconds, instantiation included.
    pub duration_ms: f64,
    /// Fuel consumed (if the plugin has a fuel limit).
    pub fuel_used: Option<u64>,
    /// Peak linear memory in bytes.
    pub peak_memory_bytes: usize,
    /// `ok` or the error kind.
    pub outcome: String,
}

fn info(a: &Accounting, fuel_limited: bool) -> InvocationInfo {
    InvocationInfo {
        id: a.invocation.clone(),
        version: a.version.to_string(),
        call: a.call.to_string(),
        duration_ms: a.duration.as_secs_f64() * 1e3,
        fuel_used: fuel_limited.then_some(a.fuel_used),
        peak_memory_bytes: a.peak_memory,
        outcome: match a.outcome {
            Outcome::Ok => "ok".into(),
            Outcome::Error(k) => k.into(),
        },
    }
}

/// The answer of an invocation.
#[derive(Serialize, ToSchema)]
pub struct InvokeResponse {
    /// Plugin name.
    pub plugin: String,
    /// What it cost.
    pub invocation: InvocationInfo,
    /// The role's typed result: a plan or report (provisioner), a step
    /// result (deploy-step), metric families (metrics-source) or actions
    /// (alert-handler).
    #[schema(schema_with = role_result)]
    pub result: serde_json::Value,
}

fn role_result() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::Ref;
    use utoipa::openapi::schema::{AnyOfBuilder, ArrayBuilder, Schema};
    Schema::AnyOf(
        AnyOfBuilder::new()
            .item(Ref::from_schema_name("Plan"))
            .item(Ref::from_schema_name("Report"))
            .item(Ref::from_schema_name("StepResult"))
            .item(ArrayBuilder::new().items(Ref::from_schema_name("MetricFamily")))
            .item(ArrayBuilder::new().items(Ref::from_schema_name("Action")))
            .build(),
    )
}

/// Calls the plugin's role function. The body depends on the role:
/// provisioner `{"action":"plan|apply|destroy","spec":{..},"dry_run":false}`;
/// deploy-step `{"action":"run|rollback","context":{..},"params":{..}}`;
/// metrics-source: empty or `{}`; alert-handler: an Alertmanager webhook body.
#[utoipa::path(post, path = "/v1/plugins/{name}/invoke", tag = "plugins",
    params(("name" = String, Path)),
    request_body(content = Object, description = "Role-specific JSON, see the description"),
    responses(
        (status = 200, body = InvokeResponse),
        (status = 400, body = ErrorBody, description = "Malformed body or a call the role does not have"),
        (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "The plugin rejected the input"),
        (status = 500, body = ErrorBody, description = "The plugin trapped or hit a limit"),
        (status = 503, body = ErrorBody, description = "Overloaded; see Retry-After"),
        (status = 504, body = ErrorBody, description = "The plugin exceeded its deadline")))]
pub async fn invoke(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<InvokeResponse>, ApiError> {
    let slot = state.registry.get_slot(&name)?;
    let plugin = slot
        .active()
        .ok_or_else(|| ApiError::not_found(format!("plugin {name} has no loaded version")))?;
    let call = parse_call(plugin.manifest.role, &name, &body)?;
    let (output, account, ran) = state.registry.invoke(&name, call).await?;
    let result = match output {
        Output::Plan(p) => serde_json::to_value(dto::Plan::from(p)),
        Output::Report(r) => serde_json::to_value(dto::Report::from(r)),
        Output::Step(s) => serde_json::to_value(dto::StepResult::from(s)),
        Output::Metrics(f) => serde_json::to_value(
            f.into_iter()
                .map(dto::MetricFamily::from)
                .collect::<Vec<_>>(),
        ),
        Output::Actions(a) => {
            serde_json::to_value(a.into_iter().map(dto::Action::from).collect::<Vec<_>>())
        }
    }
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "host_error",
            e.to_string(),
        )
    })?;
    Ok(Json(InvokeResponse {
        plugin: name,
        invocation: info(&account, ran.manifest.limits.fuel.is_some()),
        result,
    }))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], role: Role) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid body for a {role} plugin: {e}")))
}

fn parse_call(role: Role, plugin: &str, body: &[u8]) -> Result<Call, ApiError> {
    let text = |v: serde_json::Value| v.to_string();
    Ok(match role {
        Role::Provisioner => {
            let r: dto::ProvisionRequest = parse(body, role)?;
            let spec = text(r.spec);
            match r.action.as_str() {
                "plan" => Call::Plan { spec },
                "apply" => Call::Apply {
                    spec,
                    dry_run: r.dry_run,
                },
                "destroy" => Call::Destroy {
                    spec,
                    dry_run: r.dry_run,
                },
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown action `{other}`; a provisioner has plan, apply and destroy"
                    )));
                }
            }
        }
        Role::DeployStep => {
            let r: dto::StepRequest = parse(body, role)?;
            let ctx = r
                .context
                .into_wit(&format!("adhoc-{}", rand::random::<u32>()), plugin);
            let params = text(r.params);
            match r.action.as_str() {
                "run" => Call::Run { ctx, params },
                "rollback" => Call::Rollback { ctx, params },
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown action `{other}`; a deploy step has run and rollback"
                    )));
                }
            }
        }
        Role::MetricsSource => {
            let _: serde_json::Map<String, serde_json::Value> = parse(body, role)?;
            Call::Collect
        }
        Role::AlertHandler => {
            let group: dto::AlertGroup = parse(body, role)?;
            Call::Handle {
                group: group.into(),
            }
        }
    })
}

/// Recent invocations of a plugin, newest last.
#[utoipa::path(get, path = "/v1/plugins/{name}/invocations", tag = "plugins",
    params(("name" = String, Path)),
    responses((status = 200, body = [InvocationInfo]), (status = 404, body = ErrorBody)))]
pub async fn invocations(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<InvocationInfo>>, ApiError> {
    let slot = state.registry.get_slot(&name)?;
    let fuel = slot
        .active()
        .is_some_and(|p| p.manifest.limits.fuel.is_some());
    Ok(Json(slot.recent().iter().map(|a| info(a, fuel)).collect()))
}
