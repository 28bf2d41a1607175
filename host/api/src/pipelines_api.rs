//! `/v1/pipelines`, `/v1/runs`: deploy pipelines stored as YAML revisions,
//! runs started by hand, their state, log and cancellation. Approval gates
//! are decided through `/v1/approvals` (kind `pipeline-step`).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody, StorageClass, storage_error};
use super::json::Body;
use crate::pipelines::engine::EngineError;
use crate::pipelines::store::{LogLine, Pin, PipelineRow, RunRow};

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::Invalid(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_pipeline",
                message,
            ),
            EngineError::Forbidden(_) => ApiError::forbidden(message),
            EngineError::NotFound(_) => ApiError::not_found(message),
            EngineError::Conflict(_) => ApiError::conflict(message),
            EngineError::Store(s) => match s {
                crate::store::StoreError::NotFound(_) => ApiError::not_found(message),
                crate::store::StoreError::Conflict(_) => ApiError::conflict(message),
                other => storage_error(message, StorageClass::of_store(&other)),
            },
        }
    }
}

/// A stored pipeline.
#[derive(Serialize, ToSchema)]
pub struct PipelineView {
    /// Its current revision.
    #[serde(flatten)]
    pub pipeline: PipelineRow,
    /// The YAML of that revision.
    pub yaml: String,
    /// Whether this request stored a new revision (on `PUT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    /// What will not work as stored, e.g. a push trigger whose webhook
    /// secret is missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The pipeline listing.
#[derive(Serialize, ToSchema)]
pub struct PipelineList {
    /// Pipelines of the projects the caller has a role in.
    pub pipelines: Vec<PipelineRow>,
    /// Files of the watched pipelines directory that did not load, with
    /// why (shown to global roles only).
    pub errors: BTreeMap<String, String>,
}

/// A run: the journaled state and what it pinned.
#[derive(Serialize, ToSchema)]
pub struct RunView {
    /// The run as the engine keeps it: status, phase, every step's state,
    /// attempts, outputs, approvals, locks.
    #[schema(value_type = Object)]
    pub run: serde_json::Value,
    /// The pipeline revision it runs.
    pub revision: i64,
    /// Plugin versions pinned at start, by plugin name.
    pub pins: BTreeMap<String, Pin>,
    /// Unix ms.
    pub created_ms: i64,
    /// Unix ms.
    pub updated_ms: i64,
}

impl From<RunRow> for RunView {
    fn from(r: RunRow) -> Self {
        RunView {
            run: serde_json::to_value(&r.run).unwrap_or_default(),
            revision: r.revision,
            pins: r.pins,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
        }
    }
}

/// The run listing.
#[derive(Serialize, ToSchema)]
pub struct RunList {
    /// Newest first.
    pub runs: Vec<RunView>,
}

/// Body of `POST /v1/pipelines/{name}/runs`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// Values of the pipeline's parameters; the others take their defaults.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: BTreeMap<String, serde_json::Value>,
}

/// Body of `POST /v1/runs/{id}/cancel`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRun {
    /// Roll back the completed steps (newest first) before `finally`.
    #[serde(default)]
    pub rollback: bool,
}

/// Body of `POST /v1/runs/{id}/rerun`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunRun {
    /// The step to run again from; the steps it does not depend on keep
    /// their outputs.
    pub from: String,
}

/// Filter of `GET /v1/runs`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunQuery {
    /// Only runs of this pipeline.
    pub pipeline: Option<String>,
    /// At most this many (default 50, at most 500).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// Where to resume a log.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Only lines after this id.
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// Stream new lines as server-sent events until the run finishes.
    pub follow: Option<bool>,
    /// `text`: the whole log as a `text/plain` download, one line each:
    /// `<RFC 3339 time> <step> <source>: <message>`.
    #[param(inline)]
    pub format: Option<LogFormat>,
}

/// How `GET /v1/runs/{id}/log` answers.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines as JSON (the default).
    Json,
    /// The whole log as plain text, as a download.
    Text,
}

/// One server-sent event of `GET /v1/runs/{id}/log?follow=true` (the
/// schema of a `text/event-stream` answer describes each event).
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only: the events are built by axum's `Event`
pub struct LogEvent {
    /// `line` (one log line), then `end` once the run is finished, or
    /// `error` if the log could not be read (the stream ends after it).
    event: LogEventKind,
    /// For `line`: the line's id; reconnect with `after` set to the last one.
    id: Option<String>,
    /// For `line`: the log line as JSON (a `LogLine`); for `end`: the run's
    /// status; for `error`: why the stream stopped.
    data: String,
}

/// The kinds of [`LogEvent`].
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum LogEventKind {
    Line,
    End,
    Error,
}

/// Most lines in a text download.
const MAX_TEXT_LINES: usize = 200_000;

/// A run's log lines.
#[derive(Serialize, ToSchema)]
pub struct RunLog {
    /// Oldest first, at most 1000 per call.
    pub lines: Vec<LogLine>,
}

/// Stores a pipeline (YAML) as its next revision; the path names it.
#[utoipa::path(put, path = "/v1/pipelines/{name}", tag = "pipelines",
    params(("name" = String, Path, description = "Pipeline name, as in the document")),
    request_body(content = String, content_type = "application/yaml"),
    responses((status = 200, body = PipelineView), (status = 201, body = PipelineView),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<PipelineView>), ApiError> {
    let yaml = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the pipeline must be UTF-8 YAML"))?;
    let file = format!("pipelines/{name}");
    let (row, changed) = state
        .pipelines
        .put_pipeline(yaml, &file, Some(&name), "api", &caller.authority())
        .await?;
    let status = if changed && row.revision == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let warnings = state.pipelines.warnings(&row.name)?;
    Ok((
        status,
        Json(PipelineView {
            pipeline: row,
            yaml: yaml.to_string(),
            changed: Some(changed),
            warnings,
        }),
    ))
}

/// Lists the pipelines of the caller's projects.
#[utoipa::path(get, path = "/v1/pipelines", tag = "pipelines",
    responses((status = 200, body = PipelineList)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<PipelineList>, ApiError> {
    let who = caller.authority();
    let mut pipelines = state.pipelines.db().list().map_err(EngineError::from)?;
    pipelines.retain(|p| who.can_view(&p.project));
    let errors = if who.global.is_some() {
        state.pipelines.directory_errors()
    } else {
        BTreeMap::new()
    };
    Ok(Json(PipelineList { pipelines, errors }))
}

/// One pipeline: its current revision and YAML.
#[utoipa::path(get, path = "/v1/pipelines/{name}", tag = "pipelines",
    params(("name" = String, Path)),
    responses((status = 200, body = PipelineView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<PipelineView>, ApiError> {
    let (pipeline, yaml) = state.pipelines.pipeline(&name, &caller.authority())?;
    let warnings = state.pipelines.warnings(&name)?;
    Ok(Json(PipelineView {
        pipeline,
        yaml,
        changed: None,
        warnings,
    }))
}

/// Deletes a pipeline (admin of its project); runs in flight finish.
#[utoipa::path(delete, path = "/v1/pipelines/{name}", tag = "pipelines",
    params(("name" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .pipelines
        .delete_pipeline(&name, &caller.authority())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts a run by hand (operator of the pipeline's project).
#[utoipa::path(post, path = "/v1/pipelines/{name}/runs", tag = "pipelines", request_body = StartRun,
    params(("name" = String, Path)),
    responses((status = 201, body = RunView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(body): Body<StartRun>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let row = state
        .pipelines
        .start_run_as(&name, body.params, &caller.authority())
        .await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

/// Lists runs of the caller's projects, newest first.
#[utoipa::path(get, path = "/v1/runs", tag = "pipelines", params(RunQuery),
    responses((status = 200, body = RunList), (status = 400, body = ErrorBody)))]
pub async fn runs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<RunQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RunList>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if q.limit.is_some_and(|l| !(1..=500).contains(&l)) {
        return Err(ApiError::bad_request("limit must be 1 to 500"));
    }
    let who = caller.authority();
    let limit = i64::from(q.limit.unwrap_or(50));
    let rows = state
        .pipelines
        .db()
        .runs(q.pipeline.as_deref(), limit)
        .map_err(EngineError::from)?;
    let runs = rows
        .into_iter()
        .filter(|r| who.can_view(&r.run.project))
        .map(RunView::from)
        .collect();
    Ok(Json(RunList { runs }))
}

/// One run.
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "pipelines", params(("id" = String, Path)),
    responses((status = 200, body = RunView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    Ok(Json(state.pipelines.run(&id, &caller.authority())?.into()))
}

/// A run's log: the engine's events and each attempt's result, per step.
#[utoipa::path(get, path = "/v1/runs/{id}/log", tag = "pipelines", params(("id" = String, Path), LogQuery),
    responses((status = 200, description = "The lines (JSON); with `format=text` the whole log as a plain-text download; with `follow=true` a stream of server-sent events: `line` (a log line as JSON) and a final `end` (the run's status)",
            content((RunLog = "application/json"), (String = "text/plain"), (LogEvent = "text/event-stream"))),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn log(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    q: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    state.pipelines.run(&id, &caller.authority())?;
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::bad_request(format!(
            "after must be a line id, 0 or more (got {after})"
        )));
    }
    if q.follow == Some(true) {
        return Ok(follow(state, id, after).into_response());
    }
    if matches!(q.format, Some(LogFormat::Text)) {
        return download(&state, &id, after);
    }
    let lines = state
        .pipelines
        .db()
        .logs(&id, after, 1000)
        .map_err(EngineError::from)?;
    Ok(Json(RunLog { lines }).into_response())
}

/// The whole log (after `after`) as a plain-text attachment.
fn download(
    state: &AppState,
    id: &str,
    mut after: i64,
) -> Result<axum::response::Response, ApiError> {
    let mut text = String::new();
    let mut count = 0;
    loop {
        let lines = state
            .pipelines
            .db()
            .logs(id, after, 1000)
            .map_err(EngineError::from)?;
        let Some(last) = lines.last() else { break };
        after = last.id;
        for l in &lines {
            text.push_str(&l.to_text());
            text.push('\n');
        }
        count += lines.len();
        if count >= MAX_TEXT_LINES {
            text.push_str(&format!(
                "(cut at {MAX_TEXT_LINES} lines; ask again with after={after})\n"
            ));
            break;
        }
    }
    let disposition = format!("attachment; filename=\"run-{id}.log\"");
    Ok((
        [
            (
                http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (http::header::CONTENT_DISPOSITION, disposition),
        ],
        text,
    )
        .into_response())
}

/// Server-sent events: one `line` event per log line (its id as the event
/// id, so a client reconnects with `after`), then one `end` event with the
/// run's status once it is finished.
fn follow(state: AppState, id: String, after: i64) -> impl IntoResponse {
    use axum::response::sse::{Event, KeepAlive, Sse};
    type Item = Result<Event, std::convert::Infallible>;
    let stream = futures::stream::unfold(Some(after), move |cursor| {
        let (state, id) = (state.clone(), id.clone());
        async move {
            let mut after = cursor?;
            loop {
                let db = state.pipelines.db().clone();
                let rid = id.clone();
                let read = tokio::task::spawn_blocking(move || {
                    Ok::<_, crate::store::StoreError>((db.logs(&rid, after, 200)?, db.run(&rid)?))
                })
                .await;
                let Ok(Ok((lines, row))) = read else {
                    let e: Vec<Item> = vec![Ok(Event::default()
                        .event("error")
                        .data("the log could not be read"))];
                    return Some((e, None));
                };
                if let Some(last) = lines.last() {
                    after = last.id;
                    let events: Vec<Item> = lines
                        .iter()
                        .map(|l| {
                            Ok(Event::default()
                                .event("line")
                                .id(l.id.to_string())
                                .json_data(l)
                                .unwrap_or_default())
                        })
                        .collect();
                    return Some((events, Some(after)));
                }
                if let Some(row) = row.filter(|r| r.run.status.is_terminal()) {
                    let end: Vec<Item> = vec![Ok(Event::default()
                        .event("end")
                        .data(row.run.status.name()))];
                    return Some((end, None));
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    });
    let flat = futures::StreamExt::flat_map(stream, futures::stream::iter);
    Sse::new(flat).keep_alive(KeepAlive::default())
}

/// Runs a finished run again from one step (operator of its project).
#[utoipa::path(post, path = "/v1/runs/{id}/rerun", tag = "pipelines", request_body = RerunRun,
    params(("id" = String, Path)),
    responses((status = 201, body = RunView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn rerun(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(body): Body<RerunRun>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let run = state
        .pipelines
        .rerun(&id, &body.from, &caller.authority())
        .await?;
    let row = state.pipelines.run(&run.id, &caller.authority())?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

/// Cancels a run (operator of its project); with `rollback`, completed
/// steps are rolled back first. `finally` steps run either way.
#[utoipa::path(post, path = "/v1/runs/{id}/cancel", tag = "pipelines", request_body = CancelRun,
    params(("id" = String, Path)),
    responses((status = 202), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(body): Body<CancelRun>,
) -> Result<StatusCode, ApiError> {
    state
        .pipelines
        .cancel(&id, body.rollback, &caller.authority())
        .await?;
    Ok(StatusCode::ACCEPTED)
}
