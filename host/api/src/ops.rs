//! Health, readiness, metrics and the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use utoipa::OpenApi;

use super::error::ApiError;
use super::{ApiDoc, AppState};
use crate::manifest::Role;
use crate::runtime::{Call, Output};

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the registry has loaded every stored plugin, and the server
/// is not draining for shutdown.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, body = String), (status = 503, body = String, description = "`loading plugins` or `draining`")))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.registry.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if state.registry.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading plugins")
    }
}

/// Prometheus metrics: the server's own, then each metrics-source plugin's
/// families (collected now, named by [`crate::metrics::plugin_family_name`]).
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", description = "OpenMetrics text: the server's families, then each metrics source's")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut families = Vec::new();
    for name in state.registry.names() {
        let is_source = state
            .registry
            .get_slot(&name)
            .ok()
            .and_then(|s| s.active())
            .is_some_and(|p| p.manifest.role == Role::MetricsSource);
        if !is_source {
            continue;
        }
        match state.registry.invoke(&name, Call::Collect).await {
            Ok((Output::Metrics(f), _, _)) => families.push((name, f)),
            Ok(_) => {}
            Err(e) => tracing::warn!(plugin = %name, "metrics collection failed: {e}"),
        }
    }
    let body = state.registry.metrics().render(&families);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

/// The OpenAPI document of this API.
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Any route that does not exist.
pub async fn not_found(uri: http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}
