//! `/api/v1/projects/{project}/secrets`: write-only values. A secret's value goes in once
//! (POST) and never comes back out of the API, not even encrypted: every answer is metadata.

use super::caller::Caller;
use super::json::JsonBody;
use super::problem::Problem;
use super::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use runplane_domain::SecretMeta;
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_secrets, put_secret))
        .routes(routes!(get_secret, delete_secret))
}

/// A secret to create, or whose value to replace.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRequest {
    /// A DNS-1123 name.
    pub name: String,
    /// UTF-8, 1 byte to 64 KiB.
    pub value: String,
}

// Never derive Debug on the request: a stray `{:?}` in a log line must not print a value.

/// Creates a secret or replaces its value; answers its metadata only.
#[utoipa::path(post, path = "/api/v1/projects/{project}/secrets", request_body = SecretRequest,
    responses((status = 201, body = SecretMeta), (status = 422, body = Problem)))]
async fn put_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    JsonBody(request): JsonBody<SecretRequest>,
) -> Result<(StatusCode, Json<SecretMeta>), Problem> {
    caller.authorize(&project)?;
    let meta = state
        .controller
        .put_secret(&project, &request.name, &request.value, &caller.name)
        .await?;
    Ok((StatusCode::CREATED, Json(meta)))
}

/// The project's secrets: names and metadata, never values.
#[utoipa::path(get, path = "/api/v1/projects/{project}/secrets", responses((status = 200, body = Vec<SecretMeta>)))]
async fn list_secrets(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> Result<Json<Vec<SecretMeta>>, Problem> {
    caller.authorize(&project)?;
    Ok(Json(state.controller.store().list_secrets(&project).await?))
}

/// One secret's metadata.
#[utoipa::path(get, path = "/api/v1/projects/{project}/secrets/{name}", responses((status = 200, body = SecretMeta), (status = 404, body = Problem)))]
async fn get_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<SecretMeta>, Problem> {
    caller.authorize(&project)?;
    state
        .controller
        .store()
        .get_secret(&project, &name)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("secret {name} in project {project} not found")))
}

/// Deletes a secret. Runs submitted with it and not yet started end in ERROR
/// (`secret_missing`).
#[utoipa::path(delete, path = "/api/v1/projects/{project}/secrets/{name}", responses((status = 204), (status = 404, body = Problem)))]
async fn delete_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    caller.authorize(&project)?;
    if state.controller.delete_secret(&project, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!(
            "secret {name} in project {project} not found"
        )))
    }
}
