//! `/api/v1/projects/{project}/tasks`.

use super::caller::Caller;
use super::json::JsonBody;
use super::problem::Problem;
use super::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use runplane_domain::{Document, Task};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tasks, apply_task))
        .routes(routes!(get_task, delete_task))
}

/// Every task of the project.
#[utoipa::path(get, path = "/api/v1/projects/{project}/tasks", responses((status = 200, body = Vec<Task>)))]
async fn list_tasks(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> Result<Json<Vec<Task>>, Problem> {
    caller.authorize(&project)?;
    Ok(Json(state.controller.store().list_tasks(&project).await?))
}

/// Applies a task document (`kind: <runtime>+<action>`), replacing a task of the same name.
#[utoipa::path(post, path = "/api/v1/projects/{project}/tasks", request_body = Document,
    responses((status = 200, body = Task), (status = 422, body = Problem)))]
async fn apply_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    JsonBody(document): JsonBody<Document>,
) -> Result<Json<Task>, Problem> {
    caller.authorize(&project)?;
    let task = state
        .controller
        .catalog()
        .apply_task(&project, document, &caller.name)
        .await?;
    Ok(Json(task))
}

/// One task.
#[utoipa::path(get, path = "/api/v1/projects/{project}/tasks/{name}", responses((status = 200, body = Task), (status = 404, body = Problem)))]
async fn get_task(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<Task>, Problem> {
    caller.authorize(&project)?;
    state
        .controller
        .store()
        .get_task(&project, &name)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("task {name} in project {project} not found")))
}

/// Deletes a task.
#[utoipa::path(delete, path = "/api/v1/projects/{project}/tasks/{name}", responses((status = 204), (status = 404, body = Problem)))]
async fn delete_task(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    caller.authorize(&project)?;
    if state
        .controller
        .store()
        .delete_task(&project, &name)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!(
            "task {name} in project {project} not found"
        )))
    }
}
