//! `/api/v1/projects/{project}/workflows`: workflows (`kind: pipeline`), versioned by content
//! like functions, with which they share the name space (`functions.rs` does the work).

use super::caller::Caller;
use super::functions::{self, Class};
use super::json::JsonBody;
use super::problem::Problem;
use super::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use runplane_domain::{Document, FunctionVersion};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_workflows, apply_workflow))
        .routes(routes!(get_workflow, delete_workflow))
        .routes(routes!(list_workflow_versions))
        .routes(routes!(get_workflow_version))
}

/// The latest version of every workflow.
#[utoipa::path(get, path = "/api/v1/projects/{project}/workflows", responses((status = 200, body = Vec<FunctionVersion>)))]
async fn list_workflows(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> Result<Json<Vec<FunctionVersion>>, Problem> {
    caller.authorize(&project)?;
    Ok(Json(
        functions::list(&state, &project, Class::Workflow).await?,
    ))
}

/// Applies a workflow document (`kind: pipeline`): 201 with a new version, 200 with the
/// existing one of the same content.
#[utoipa::path(post, path = "/api/v1/projects/{project}/workflows", request_body = Document,
    responses((status = 201, body = FunctionVersion), (status = 200, body = FunctionVersion), (status = 422, body = Problem)))]
async fn apply_workflow(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    JsonBody(document): JsonBody<Document>,
) -> Result<(StatusCode, Json<FunctionVersion>), Problem> {
    caller.authorize(&project)?;
    functions::apply(&state, &project, document, &caller.name, Class::Workflow).await
}

/// The latest version of a workflow.
#[utoipa::path(get, path = "/api/v1/projects/{project}/workflows/{name}", responses((status = 200, body = FunctionVersion), (status = 404, body = Problem)))]
async fn get_workflow(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<FunctionVersion>, Problem> {
    caller.authorize(&project)?;
    Ok(Json(
        functions::get(&state, &project, &name, None, Class::Workflow).await?,
    ))
}

/// Deletes every version of a workflow. Its runs keep their snapshots.
#[utoipa::path(delete, path = "/api/v1/projects/{project}/workflows/{name}", responses((status = 204), (status = 404, body = Problem)))]
async fn delete_workflow(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    caller.authorize(&project)?;
    functions::delete(&state, &project, &name, Class::Workflow).await
}

/// Every version of a workflow, newest first.
#[utoipa::path(get, path = "/api/v1/projects/{project}/workflows/{name}/versions", responses((status = 200, body = Vec<FunctionVersion>), (status = 404, body = Problem)))]
async fn list_workflow_versions(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<Vec<FunctionVersion>>, Problem> {
    caller.authorize(&project)?;
    Ok(Json(
        functions::versions(&state, &project, &name, Class::Workflow).await?,
    ))
}

/// One version of a workflow.
#[utoipa::path(get, path = "/api/v1/projects/{project}/workflows/{name}/versions/{version}", responses((status = 200, body = FunctionVersion), (status = 404, body = Problem)))]
async fn get_workflow_version(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name, version)): Path<(String, String, String)>,
) -> Result<Json<FunctionVersion>, Problem> {
    caller.authorize(&project)?;
    Ok(Json(
        functions::get(&state, &project, &name, Some(&version), Class::Workflow).await?,
    ))
}
