//! The HTTP API: routes, JSON shapes, the error type and the OpenAPI document.
//! This is the only crate that knows HTTP.
//!
//! Depends on `capstan-pipelines`, `capstan-registry`, `capstan-runtime` and `capstan-store`;
//! only the `capstan` crate (server assembly) depends on it.

pub(crate) use capstan_alerts as alerts;
pub(crate) use capstan_pipelines as pipelines;
pub(crate) use capstan_provisioning as provisioning;
pub(crate) use capstan_registry::{registry, trust};
pub(crate) use capstan_runtime::{capabilities, manifest, runtime};
pub(crate) use capstan_store as store;

mod alerts_api;
mod audit;
pub mod auth;
mod dto;
pub mod error;
mod hooks;
mod json;
pub mod limits;
pub mod listen;
mod notify_api;
mod openapi;
mod ops;
mod pipelines_api;
mod plugins;
mod projects;
mod provisions_api;
mod secrets;
pub mod tls;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{delete, get, post, put};
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use crate::registry::Registry;

pub use error::ApiError;
use openapi::CommonResponses;

/// Limits at the HTTP edge.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Largest request body for uploads, bytes.
    pub max_upload_bytes: usize,
    /// Largest request body for everything else, bytes.
    pub max_body_bytes: usize,
    /// Longest a request (its body included) may take before 408; not
    /// applied to invocations and uploads. Zero disables it.
    pub request_timeout: Duration,
    /// Requests per second per token, on average (0: unlimited). Admin
    /// tokens are exempt.
    pub rate_limit_per_sec: u32,
    /// Requests a token may burst above the rate.
    pub rate_limit_burst: u32,
    /// Requests handled at once; more get 503 with `Retry-After` (0: unlimited).
    pub max_in_flight_requests: usize,
    /// Connections open at once; at the limit the listener stops accepting
    /// (0: unlimited).
    pub max_connections: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_upload_bytes: 64 << 20,
            max_body_bytes: 2 << 20,
            request_timeout: Duration::from_secs(60),
            rate_limit_per_sec: 50,
            rate_limit_burst: 100,
            max_in_flight_requests: 256,
            max_connections: 1024,
        }
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The plugin registry (and through it, the runtime and the store).
    pub registry: Arc<Registry>,
    /// Edge limits.
    pub limits: ApiLimits,
    /// Tokens, rate limits and who may call what.
    pub auth: Arc<auth::Auth>,
    /// The pipelines engine.
    pub pipelines: Arc<pipelines::engine::Engine>,
    /// Notification channels and their deliveries.
    pub notify: Arc<capstan_notify::Notifier>,
    /// The metrics engine (metrics-source plugins).
    pub sources: Arc<capstan_registry::sources::Sources>,
    /// The alerts engine.
    pub alerts: Arc<alerts::Engine>,
    /// The provisioning engine.
    pub provisioning: Arc<provisioning::Engine>,
}

/// The OpenAPI document, generated from the handlers and types.
#[derive(OpenApi)]
#[openapi(
    info(title = "Capstan", description = "Automation server that runs sandboxed WebAssembly plugins"),
    paths(
        plugins::list, plugins::show, plugins::upload, plugins::delete, plugins::versions,
        plugins::delete_version, plugins::activate, plugins::rollback, plugins::invoke,
        plugins::invocations, ops::healthz, ops::readyz, ops::metrics,
        tokens::create, tokens::list, tokens::revoke,
        secrets::put, secrets::list, secrets::delete, audit::query,
        projects::list_projects, projects::create_project, projects::delete_project,
        projects::list_ceilings, projects::put_project_ceiling, projects::put_plugin_ceiling,
        projects::delete_project_ceiling, projects::delete_plugin_ceiling,
        projects::list_approvals, projects::show_approval, projects::approve, projects::reject,
        pipelines_api::put, pipelines_api::list, pipelines_api::show, pipelines_api::delete, pipelines_api::start,
        pipelines_api::runs, pipelines_api::run, pipelines_api::log, pipelines_api::cancel,
        pipelines_api::rerun,
        provisions_api::put, provisions_api::list, provisions_api::show, provisions_api::plan,
        provisions_api::show_plan, provisions_api::apply, provisions_api::destroy, provisions_api::drift,
        hooks::receive,
        notify_api::list_channels, notify_api::show_channel, notify_api::put_channel,
        notify_api::delete_channel, notify_api::test_channel, notify_api::send,
        notify_api::deliveries, notify_api::delivery,
        alerts_api::receive, alerts_api::routes, alerts_api::route, alerts_api::put_route,
        alerts_api::delete_route, alerts_api::groups, alerts_api::group,
    ),
    components(schemas(dto::Plan, dto::Report, dto::StepResult, dto::MetricFamily, dto::Action)),
    modifiers(&BearerAuth, &CommonResponses),
    tags((name = "plugins", description = "Plugin versions and invocation"), (name = "ops", description = "Health and metrics"),
        (name = "auth", description = "API tokens (admin)"), (name = "secrets", description = "Secrets plugins may be granted (admin)"),
        (name = "audit", description = "The audit log (viewer)"),
        (name = "trust", description = "Projects, grant ceilings and approvals"),
        (name = "pipelines", description = "Deploy pipelines and their runs"),
        (name = "notify", description = "Notification channels, test-send and delivery receipts"),
        (name = "alerts", description = "Alertmanager webhooks, alert routes and what handlers did"),
        (name = "provisioning", description = "Provisioned instances: plans, applies, destroy and drift"))
)]
pub struct ApiDoc;

/// Documents bearer authentication: every operation needs a token except
/// the probes (and `/metrics` when `metrics_public` is set, the default) and
/// the webhooks, which carry the provider's signature instead.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "An API token: `Authorization: Bearer cap_...`. A token has a global role, roles in single projects, or both: viewer (read), operator (also upload, invoke, activate, roll back), admin (everything in its scope; globally also tokens, secrets, projects, ceilings and approvals).",
                        ))
                        .build(),
                ),
            );
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
        for path in ["/healthz", "/readyz", "/metrics"] {
            if let Some(op) = openapi
                .paths
                .paths
                .get_mut(path)
                .and_then(|p| p.get.as_mut())
            {
                // An empty requirement: no authentication needed.
                op.security = Some(vec![SecurityRequirement::default()]);
            }
        }
    }
}

/// Every route, with body limits and request tracing.
pub fn router(state: AppState) -> Router {
    let upload_limit = DefaultBodyLimit::max(state.limits.max_upload_bytes);
    let body_limit = DefaultBodyLimit::max(state.limits.max_body_bytes);
    let v1 = Router::new()
        .route(
            "/plugins",
            get(plugins::list).post(plugins::upload).layer(upload_limit),
        )
        .route(
            "/plugins/{name}",
            get(plugins::show).delete(plugins::delete),
        )
        .route("/plugins/{name}/versions", get(plugins::versions))
        .route(
            "/plugins/{name}/versions/{version}",
            delete(plugins::delete_version),
        )
        .route("/plugins/{name}/active", put(plugins::activate))
        .route("/plugins/{name}/rollback", post(plugins::rollback))
        .route("/plugins/{name}/invoke", post(plugins::invoke))
        .route("/plugins/{name}/invocations", get(plugins::invocations))
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{name}", delete(tokens::revoke))
        .route("/secrets", get(secrets::list))
        .route("/secrets/{name}", put(secrets::put).delete(secrets::delete))
        .route("/audit", get(audit::query))
        .route(
            "/projects",
            get(projects::list_projects).post(projects::create_project),
        )
        .route("/projects/{name}", delete(projects::delete_project))
        .route("/ceilings", get(projects::list_ceilings))
        .route(
            "/ceilings/{project}",
            put(projects::put_project_ceiling).delete(projects::delete_project_ceiling),
        )
        .route(
            "/ceilings/{project}/{plugin}",
            put(projects::put_plugin_ceiling).delete(projects::delete_plugin_ceiling),
        )
        .route("/approvals", get(projects::list_approvals))
        .route("/approvals/{id}", get(projects::show_approval))
        .route("/approvals/{id}/approve", post(projects::approve))
        .route("/approvals/{id}/reject", post(projects::reject))
        .route("/pipelines", get(pipelines_api::list))
        .route(
            "/pipelines/{name}",
            get(pipelines_api::show)
                .put(pipelines_api::put)
                .delete(pipelines_api::delete),
        )
        .route("/pipelines/{name}/runs", post(pipelines_api::start))
        .route("/runs", get(pipelines_api::runs))
        .route("/runs/{id}", get(pipelines_api::run))
        .route("/runs/{id}/log", get(pipelines_api::log))
        .route("/runs/{id}/cancel", post(pipelines_api::cancel))
        .route("/runs/{id}/rerun", post(pipelines_api::rerun))
        .route("/notify/channels", get(notify_api::list_channels))
        .route(
            "/notify/channels/{name}",
            get(notify_api::show_channel)
                .put(notify_api::put_channel)
                .delete(notify_api::delete_channel),
        )
        .route(
            "/notify/channels/{name}/test",
            post(notify_api::test_channel),
        )
        .route("/notify/channels/{name}/send", post(notify_api::send))
        .route("/notify/deliveries", get(notify_api::deliveries))
        .route("/notify/deliveries/{id}", get(notify_api::delivery))
        .route(
            "/provisions",
            get(provisions_api::list).post(provisions_api::put),
        )
        .route("/provisions/{name}", get(provisions_api::show))
        .route("/provisions/{name}/plans", post(provisions_api::plan))
        .route(
            "/provisions/{name}/plans/{id}",
            get(provisions_api::show_plan),
        )
        .route(
            "/provisions/{name}/plans/{id}/apply",
            post(provisions_api::apply),
        )
        .route("/provisions/{name}/destroy", post(provisions_api::destroy))
        .route("/provisions/{name}/drift", post(provisions_api::drift))
        .route(
            "/hooks/{provider}/{pipeline}",
            post(hooks::receive).layer(DefaultBodyLimit::max(hooks::MAX_HOOK_BYTES)),
        );
    let v1 = v1
        .route(
            "/alerts/alertmanager/{receiver}",
            post(alerts_api::receive).layer(DefaultBodyLimit::max(state.alerts.max_body_bytes())),
        )
        .route("/alerts/routes", get(alerts_api::routes))
        .route(
            "/alerts/routes/{name}",
            get(alerts_api::route)
                .put(alerts_api::put_route)
                .delete(alerts_api::delete_route),
        )
        .route("/alerts/groups", get(alerts_api::groups))
        .route("/alerts/groups/{id}", get(alerts_api::group));
    let in_flight = limits::InFlight::new(state.limits.max_in_flight_requests);
    // Outermost first: tracing, the in-flight cap, authentication and
    // authorisation (auth::guard), then the request timeout, in front of
    // every route.
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .fallback(ops::not_found)
        .layer(body_limit)
        // Inside the guard, so a mutating call that times out is audited (408).
        .layer(from_fn_with_state(
            state.limits.request_timeout,
            limits::request_timeout,
        ))
        .layer(from_fn_with_state(state.clone(), auth::guard))
        .layer(from_fn_with_state(in_flight, limits::in_flight))
        .layer(TraceLayer::new_for_http().on_failure(log_failure))
        .with_state(state)
}

/// 5xx answers in the log: 503 and 507 (not ready while draining, overload,
/// a busy or full database) are expected conditions with their own reason
/// in the body, so a warning; anything else is an error.
fn log_failure(class: ServerErrorsFailureClass, latency: Duration, _: &tracing::Span) {
    use http::StatusCode;
    let ms = latency.as_millis();
    match class {
        ServerErrorsFailureClass::StatusCode(
            s @ (StatusCode::SERVICE_UNAVAILABLE | StatusCode::INSUFFICIENT_STORAGE),
        ) => tracing::warn!(status = s.as_u16(), latency_ms = ms, "request answered {s}"),
        ServerErrorsFailureClass::StatusCode(s) => {
            tracing::error!(
                status = s.as_u16(),
                latency_ms = ms,
                "request failed with {s}"
            )
        }
        ServerErrorsFailureClass::Error(e) => {
            tracing::error!(latency_ms = ms, "request failed: {e}")
        }
    }
}
