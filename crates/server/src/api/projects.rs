//! `/api/v1/projects`.

use super::caller::Caller;
use super::json::JsonBody;
use super::problem::Problem;
use super::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use runplane_domain::names::validate_name;
use runplane_domain::Project;
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_projects, create_project))
        .routes(routes!(get_project))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    pub name: String,
}

/// Every project.
#[utoipa::path(get, path = "/api/v1/projects", responses((status = 200, body = Vec<Project>)))]
async fn list_projects(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Vec<Project>>, Problem> {
    Ok(Json(state.controller.store().list_projects().await?))
}

/// Creates a project (idempotent). Projects are also created on first use.
#[utoipa::path(post, path = "/api/v1/projects", request_body = NewProject,
    responses((status = 201, body = Project), (status = 422, body = Problem)))]
async fn create_project(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<NewProject>,
) -> Result<(StatusCode, Json<Project>), Problem> {
    validate_name("name", &body.name)?;
    caller.authorize(&body.name)?;
    let project = state
        .controller
        .store()
        .ensure_project(&body.name, &caller.name)
        .await?;
    Ok((StatusCode::CREATED, Json(project)))
}

/// One project.
#[utoipa::path(get, path = "/api/v1/projects/{project}", responses((status = 200, body = Project), (status = 404, body = Problem)))]
async fn get_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> Result<Json<Project>, Problem> {
    caller.authorize(&project)?;
    state
        .controller
        .store()
        .get_project(&project)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("project {project} not found")))
}
