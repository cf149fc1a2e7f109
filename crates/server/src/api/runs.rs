//! `/api/v1/projects/{project}/runs`: submit, list, watch, stop, resume, rerun, delete.

use super::caller::Caller;
use super::json::JsonBody;
use super::problem::Problem;
use super::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use runplane_domain::{Run, RunRequest, RunState};
use runplane_store::RunQuery;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa_axum::{router::OpenApiRouter, routes};

/// The longest a `?wait=` request holds the connection.
const MAX_WAIT_SECONDS: u64 = 300;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_runs, create_run))
        .routes(routes!(get_run, delete_run))
        .routes(routes!(stop_run))
        .routes(routes!(resume_run))
        .routes(routes!(rerun_run))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListRunsParams {
    /// Only runs of this function (name).
    function: Option<String>,
    /// Only the step runs of this workflow run (id).
    step_of: Option<String>,
    /// Comma-separated states, e.g. `RUNNING,PENDING`.
    state: Option<String>,
    /// Comma-separated `key=value` labels, all of which must match.
    label: Option<String>,
    /// RFC 3339 time.
    created_after: Option<DateTime<Utc>>,
    /// RFC 3339 time.
    created_before: Option<DateTime<Utc>>,
    /// Page size (default 100, at most 1000).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunList {
    pub items: Vec<Run>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Runs of the project, newest first, filtered and paginated.
#[utoipa::path(get, path = "/api/v1/projects/{project}/runs", params(ListRunsParams),
    responses((status = 200, body = RunList), (status = 400, body = Problem)))]
async fn list_runs(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    params: Result<Query<ListRunsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RunList>, Problem> {
    caller.authorize(&project)?;
    let Query(params) =
        params.map_err(|rejection| Problem::bad_request("query", rejection.body_text()))?;
    let mut states = vec![];
    for text in params
        .state
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        states.push(
            text.parse::<RunState>()
                .map_err(|error| Problem::bad_request("state", error.to_string()))?,
        );
    }
    let mut labels = vec![];
    for pair in params
        .label
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| Problem::bad_request("label", format!("{pair:?} is not key=value")))?;
        labels.push((key.to_string(), value.to_string()));
    }
    let query = RunQuery {
        project,
        function: params.function,
        step_of: params.step_of,
        states,
        labels,
        created_after: params.created_after,
        created_before: params.created_before,
        limit: params.limit.unwrap_or(0),
        cursor: params.cursor,
    };
    let page = state.controller.store().list_runs(&query).await?;
    Ok(Json(RunList {
        items: page.runs,
        next_cursor: page.next_cursor,
    }))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(value) => {
            let key = value
                .to_str()
                .map_err(|_| Problem::bad_request("Idempotency-Key", "must be visible ASCII"))?;
            if key.is_empty() || key.len() > 255 {
                return Err(Problem::bad_request(
                    "Idempotency-Key",
                    "must be 1 to 255 characters",
                ));
            }
            Ok(Some(key.to_string()))
        }
    }
}

/// Starts a run. With an `Idempotency-Key` header, retrying the same request returns the run
/// the first request created (200) instead of creating another.
#[utoipa::path(post, path = "/api/v1/projects/{project}/runs", request_body = RunRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "makes retries safe")),
    responses((status = 201, body = Run), (status = 200, body = Run, description = "replay of an earlier request"), (status = 422, body = Problem)))]
async fn create_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<RunRequest>,
) -> Result<(StatusCode, Json<Run>), Problem> {
    caller.authorize(&project)?;
    let key = idempotency_key(&headers)?;
    let put = state
        .controller
        .submit_run(&project, request, &caller.name, key)
        .await?;
    let status = if put.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(put.value)))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct GetRunParams {
    /// Hold the request up to this many seconds (max 300) until the run has ended.
    wait: Option<u64>,
    /// With `wait`: `ended` (default) or `running` — also answer once the run is RUNNING
    /// (a service whose replicas are all ready).
    until: Option<WaitUntil>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitUntil {
    #[default]
    Ended,
    Running,
}

/// One run; with `?wait=N`, answered when it ends or after N seconds.
#[utoipa::path(get, path = "/api/v1/projects/{project}/runs/{id}", params(GetRunParams),
    responses((status = 200, body = Run), (status = 404, body = Problem)))]
async fn get_run(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
    params: Result<Query<GetRunParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Run>, Problem> {
    caller.authorize(&project)?;
    let Query(params) =
        params.map_err(|rejection| Problem::bad_request("query", rejection.body_text()))?;
    let run = match params.wait {
        None | Some(0) => state.controller.get_run(&project, &id).await?,
        Some(seconds) => {
            let timeout = Duration::from_secs(seconds.min(MAX_WAIT_SECONDS));
            let until_running = matches!(params.until, Some(WaitUntil::Running));
            state
                .controller
                .wait_for_run(&project, &id, timeout, move |run_state| {
                    run_state.is_terminal() || (until_running && run_state == RunState::Running)
                })
                .await?
        }
    };
    Ok(Json(run))
}

/// Deletes a run: stops it if it runs, purges its logs and results, keeps a DELETED tombstone.
#[utoipa::path(delete, path = "/api/v1/projects/{project}/runs/{id}", responses((status = 200, body = Run), (status = 404, body = Problem)))]
async fn delete_run(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
) -> Result<Json<Run>, Problem> {
    caller.authorize(&project)?;
    Ok(Json(state.controller.delete_run(&project, &id).await?))
}

/// Stops a run (its whole process tree). 409 when it has already ended.
#[utoipa::path(post, path = "/api/v1/projects/{project}/runs/{id}/stop", responses((status = 200, body = Run), (status = 409, body = Problem)))]
async fn stop_run(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
) -> Result<Json<Run>, Problem> {
    caller.authorize(&project)?;
    Ok(Json(
        state
            .controller
            .stop_run(&project, &id, runplane_domain::reason::USER)
            .await?,
    ))
}

/// Resumes a STOPPED run as a new attempt.
#[utoipa::path(post, path = "/api/v1/projects/{project}/runs/{id}/resume", responses((status = 200, body = Run), (status = 409, body = Problem)))]
async fn resume_run(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
) -> Result<Json<Run>, Problem> {
    caller.authorize(&project)?;
    Ok(Json(state.controller.resume_run(&project, &id).await?))
}

/// What a rerun may ask for.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunOptions {
    /// Workflow runs that ended ERROR or STOPPED: reuse the results of every node that
    /// succeeded and run only the others.
    #[serde(default)]
    pub from_failure: bool,
}

/// Starts a new run with the same self-contained spec (`status.rerun_of` links them).
/// With `{"from_failure": true}`, a workflow run's succeeded nodes are reused.
#[utoipa::path(post, path = "/api/v1/projects/{project}/runs/{id}/rerun",
    params(("Idempotency-Key" = Option<String>, Header, description = "makes retries safe")),
    request_body(content = Option<RerunOptions>),
    responses((status = 201, body = Run), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
async fn rerun_run(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<RerunOptions>>,
) -> Result<(StatusCode, Json<Run>), Problem> {
    caller.authorize(&project)?;
    let key = idempotency_key(&headers)?;
    let from_failure = body.is_some_and(|Json(options)| options.from_failure);
    let put = if from_failure {
        state
            .controller
            .rerun_from_failure(&project, &id, &caller.name, key)
            .await?
    } else {
        state
            .controller
            .rerun(&project, &id, &caller.name, key)
            .await?
    };
    let status = if put.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(put.value)))
}
