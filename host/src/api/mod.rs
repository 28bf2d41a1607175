//! The HTTP API: routes, JSON shapes, the error type and the OpenAPI document.
//! This is the only module that knows HTTP.

pub mod auth;
mod dto;
pub mod error;
mod ops;
mod plugins;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use crate::registry::Registry;

pub use error::ApiError;

/// Limits at the HTTP edge.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Largest request body for uploads, bytes.
    pub max_upload_bytes: usize,
    /// Largest request body for everything else, bytes.
    pub max_body_bytes: usize,
    /// Longest a request may take before 408, for non-invoke routes.
    pub request_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_upload_bytes: 64 << 20,
            max_body_bytes: 2 << 20,
            request_timeout: Duration::from_secs(60),
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
}

/// The OpenAPI document, generated from the handlers and types.
#[derive(OpenApi)]
#[openapi(
    info(title = "Capstan", description = "Automation server that runs sandboxed WebAssembly plugins"),
    paths(
        plugins::list, plugins::show, plugins::upload, plugins::delete, plugins::versions,
        plugins::delete_version, plugins::activate, plugins::rollback, plugins::invoke,
        plugins::invocations, ops::healthz, ops::readyz, ops::metrics,
    ),
    tags((name = "plugins", description = "Plugin versions and invocation"), (name = "ops", description = "Health and metrics"))
)]
pub struct ApiDoc;

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
            axum::routing::delete(plugins::delete_version),
        )
        .route("/plugins/{name}/active", put(plugins::activate))
        .route("/plugins/{name}/rollback", post(plugins::rollback))
        .route("/plugins/{name}/invoke", post(plugins::invoke))
        .route("/plugins/{name}/invocations", get(plugins::invocations));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .fallback(ops::not_found)
        .layer(body_limit)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
