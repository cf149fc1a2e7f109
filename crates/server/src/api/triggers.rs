//! `/api/v1/projects/{project}/triggers`: scheduler, lifecycle and webhook triggers, their
//! fires, pause/resume, and the webhook endpoint.

use super::caller::Caller;
use super::json::JsonBody;
use super::problem::Problem;
use super::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use runplane_domain::trigger::{Fire, Trigger};
use runplane_domain::Document;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_triggers, apply_trigger))
        .routes(routes!(get_trigger, delete_trigger))
        .routes(routes!(pause_trigger))
        .routes(routes!(resume_trigger))
        .routes(routes!(list_fires))
        .routes(routes!(webhook))
}

/// The project's triggers.
#[utoipa::path(get, path = "/api/v1/projects/{project}/triggers", responses((status = 200, body = Vec<Trigger>)))]
async fn list_triggers(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> Result<Json<Vec<Trigger>>, Problem> {
    caller.authorize(&project)?;
    Ok(Json(
        state
            .controller
            .store()
            .list_triggers(Some(&project))
            .await?,
    ))
}

/// Applies a trigger document (`kind: scheduler | lifecycle | webhook`): 201 when new, 200
/// when replaced. A new webhook trigger's token is in `status.token`, in this answer only.
#[utoipa::path(post, path = "/api/v1/projects/{project}/triggers", request_body = Document,
    responses((status = 201, body = Trigger), (status = 200, body = Trigger), (status = 422, body = Problem)))]
async fn apply_trigger(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    JsonBody(document): JsonBody<Document>,
) -> Result<(StatusCode, Json<Trigger>), Problem> {
    caller.authorize(&project)?;
    let (trigger, created) = state
        .controller
        .apply_trigger(&project, document, &caller.name)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(trigger)))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/triggers/{name}", responses((status = 200, body = Trigger), (status = 404, body = Problem)))]
async fn get_trigger(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<Trigger>, Problem> {
    caller.authorize(&project)?;
    state
        .controller
        .store()
        .get_trigger(&project, &name)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("trigger {name} in project {project} not found")))
}

/// Deletes a trigger and its fire records; the runs it created stay.
#[utoipa::path(delete, path = "/api/v1/projects/{project}/triggers/{name}", responses((status = 204), (status = 404, body = Problem)))]
async fn delete_trigger(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    caller.authorize(&project)?;
    state.controller.delete_trigger(&project, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/triggers/{name}/pause", responses((status = 200, body = Trigger), (status = 404, body = Problem)))]
async fn pause_trigger(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<Trigger>, Problem> {
    caller.authorize(&project)?;
    Ok(Json(
        state
            .controller
            .pause_trigger(&project, &name, true)
            .await?,
    ))
}

/// Resumes a paused trigger; a scheduler fires from its next tick on.
#[utoipa::path(post, path = "/api/v1/projects/{project}/triggers/{name}/resume", responses((status = 200, body = Trigger), (status = 404, body = Problem)))]
async fn resume_trigger(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<Trigger>, Problem> {
    caller.authorize(&project)?;
    Ok(Json(
        state
            .controller
            .pause_trigger(&project, &name, false)
            .await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct FiresParams {
    /// At most this many, newest first (default 100, at most 1000).
    limit: Option<u32>,
}

/// A trigger's fires, newest first: the run each created or the error it met.
#[utoipa::path(get, path = "/api/v1/projects/{project}/triggers/{name}/fires", params(FiresParams),
    responses((status = 200, body = Vec<Fire>), (status = 404, body = Problem)))]
async fn list_fires(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
    Query(params): Query<FiresParams>,
) -> Result<Json<Vec<Fire>>, Problem> {
    caller.authorize(&project)?;
    if state
        .controller
        .store()
        .get_trigger(&project, &name)
        .await?
        .is_none()
    {
        return Err(Problem::not_found(format!(
            "trigger {name} in project {project} not found"
        )));
    }
    Ok(Json(
        state
            .controller
            .store()
            .list_fires(&project, &name, params.limit.unwrap_or(0))
            .await?,
    ))
}

/// Fires a webhook trigger. Needs `Authorization: Bearer <token>`; the body (JSON, else
/// text) is `webhook.body` to the template, the headers `webhook.headers`. An
/// `Idempotency-Key` makes a redelivery fire nothing more. 202 with the fire.
#[utoipa::path(post, path = "/api/v1/projects/{project}/triggers/{name}/webhook",
    request_body(content = Object, description = "any JSON (or text)"),
    responses((status = 202, body = Fire), (status = 401, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn webhook(
    State(state): State<AppState>,
    Path((project, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Fire>), Problem> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let body = serde_json::from_slice::<Value>(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let visible: Map<String, Value> = headers
        .iter()
        .filter(|(name, _)| *name != "authorization")
        .filter_map(|(name, value)| {
            value
                .to_str()
                .ok()
                .map(|v| (name.as_str().to_string(), Value::String(v.to_string())))
        })
        .collect();
    let delivery = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let fire = state
        .controller
        .fire_webhook(&project, &name, token, body, visible, delivery)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(fire)))
}
