//! Health, readiness, metrics and the OpenAPI document.

use axum::Json;
use axum::extract::State;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;
use super::error::ApiError;

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

/// Prometheus metrics: the server's own, each metrics source's last good
/// families (or, for scrape-mode sources, collected now within
/// `X-Prometheus-Scrape-Timeout-Seconds`), and each source's
/// `capstan_source_success`, `capstan_source_duration_seconds` and
/// `capstan_source_last_success_timestamp_seconds`. The scrape's
/// `X-Prometheus-Scrape-Timeout-Seconds` header (as Prometheus sends it) is
/// read when it holds a positive number and ignored otherwise, so it is not
/// a documented parameter.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", description = "OpenMetrics text: the server's families, then each metrics source's")))]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let timeout = headers
        .get("x-prometheus-scrape-timeout-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)));
    let body = state.sources.render(timeout).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

/// The OpenAPI document of this API (built once).
pub async fn openapi() -> Json<serde_json::Value> {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    Json(DOC.get_or_init(crate::openapi::document).clone())
}

/// Any route that does not exist.
pub async fn not_found(uri: http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}
