//! `/api/v1/projects/{project}/functions`: applying creates immutable, content-hashed versions.

use super::caller::Caller;
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
        .routes(routes!(list_functions, apply_function))
        .routes(routes!(get_function, delete_function))
        .routes(routes!(list_versions))
        .routes(routes!(get_version))
}

/// The latest version of every function.
#[utoipa::path(get, path = "/api/v1/projects/{project}/functions", responses((status = 200, body = Vec<FunctionVersion>)))]
async fn list_functions(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> Result<Json<Vec<FunctionVersion>>, Problem> {
    caller.authorize(&project)?;
    Ok(Json(
        state.controller.store().list_functions(&project).await?,
    ))
}

/// Applies a function document. 201 with a new version; 200 with the existing version when
/// one with the same content hash exists.
#[utoipa::path(post, path = "/api/v1/projects/{project}/functions", request_body = Document,
    responses((status = 201, body = FunctionVersion), (status = 200, body = FunctionVersion), (status = 422, body = Problem)))]
async fn apply_function(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    JsonBody(document): JsonBody<Document>,
) -> Result<(StatusCode, Json<FunctionVersion>), Problem> {
    caller.authorize(&project)?;
    let put = state
        .controller
        .catalog()
        .apply_function(&project, document, &caller.name)
        .await?;
    let status = if put.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(put.value)))
}

/// The latest version of a function.
#[utoipa::path(get, path = "/api/v1/projects/{project}/functions/{name}", responses((status = 200, body = FunctionVersion), (status = 404, body = Problem)))]
async fn get_function(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<FunctionVersion>, Problem> {
    caller.authorize(&project)?;
    Ok(Json(
        state
            .controller
            .catalog()
            .resolve_function(&project, &name, None)
            .await?,
    ))
}

/// Deletes every version of a function. Runs keep their snapshots.
#[utoipa::path(delete, path = "/api/v1/projects/{project}/functions/{name}", responses((status = 204), (status = 404, body = Problem)))]
async fn delete_function(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    caller.authorize(&project)?;
    if state
        .controller
        .store()
        .delete_function(&project, &name)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!(
            "function {name} in project {project} not found"
        )))
    }
}

/// Every version of a function, newest first.
#[utoipa::path(get, path = "/api/v1/projects/{project}/functions/{name}/versions", responses((status = 200, body = Vec<FunctionVersion>), (status = 404, body = Problem)))]
async fn list_versions(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<Vec<FunctionVersion>>, Problem> {
    caller.authorize(&project)?;
    let versions = state
        .controller
        .store()
        .list_function_versions(&project, &name)
        .await?;
    if versions.is_empty() {
        return Err(Problem::not_found(format!(
            "function {name} in project {project} not found"
        )));
    }
    Ok(Json(versions))
}

/// One version of a function.
#[utoipa::path(get, path = "/api/v1/projects/{project}/functions/{name}/versions/{version}", responses((status = 200, body = FunctionVersion), (status = 404, body = Problem)))]
async fn get_version(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name, version)): Path<(String, String, String)>,
) -> Result<Json<FunctionVersion>, Problem> {
    caller.authorize(&project)?;
    Ok(Json(
        state
            .controller
            .catalog()
            .resolve_function(&project, &name, Some(&version))
            .await?,
    ))
}
