//! `/api/v1/projects/{project}/artifacts`: artifact versions (latest of each name, by run,
//! every version of a name), their consumers, downloads and deletion.

use super::caller::Caller;
use super::problem::Problem;
use super::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use runplane_domain::{Artifact, ArtifactType};
use serde::{Deserialize, Serialize};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_artifacts))
        .routes(routes!(get_artifact, delete_artifact))
        .routes(routes!(list_versions))
        .routes(routes!(get_version))
        .routes(routes!(download))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ArtifactList {
    pub items: Vec<Artifact>,
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only the versions this run produced.
    pub produced_by: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct DownloadQuery {
    /// One file of a dir artifact, by its relative path.
    pub path: Option<String>,
}

fn storage(error: crate::artifacts::ArtifactStoreError) -> Problem {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "artifact-store",
        error.to_string(),
    )
}

async fn with_consumers(state: &AppState, mut artifact: Artifact) -> Result<Artifact, Problem> {
    artifact.status.consumers = state
        .controller
        .store()
        .artifact_consumers(&artifact.status.key)
        .await?;
    Ok(artifact)
}

async fn find(
    state: &AppState,
    project: &str,
    name: &str,
    version: Option<&str>,
) -> Result<Artifact, Problem> {
    let found = state
        .controller
        .store()
        .get_artifact(project, name, version)
        .await?;
    let label = match version {
        Some(version) => format!("{name}:{version}"),
        None => name.to_string(),
    };
    let artifact = found.ok_or_else(|| {
        Problem::not_found(format!("artifact {label} in project {project} not found"))
    })?;
    with_consumers(state, artifact).await
}

/// The newest version of each artifact, or every version a run produced.
#[utoipa::path(get, path = "/api/v1/projects/{project}/artifacts", params(ListQuery),
    responses((status = 200, body = ArtifactList)))]
async fn list_artifacts(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Json<ArtifactList>, Problem> {
    caller.authorize(&project)?;
    let items = state
        .controller
        .store()
        .list_artifacts(&project, query.produced_by.as_deref())
        .await?;
    Ok(Json(ArtifactList { items }))
}

/// The newest version of an artifact, with its consumers.
#[utoipa::path(get, path = "/api/v1/projects/{project}/artifacts/{name}",
    responses((status = 200, body = Artifact), (status = 404, body = Problem)))]
async fn get_artifact(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<Artifact>, Problem> {
    caller.authorize(&project)?;
    Ok(Json(find(&state, &project, &name, None).await?))
}

/// Every version of an artifact, newest first.
#[utoipa::path(get, path = "/api/v1/projects/{project}/artifacts/{name}/versions",
    responses((status = 200, body = ArtifactList)))]
async fn list_versions(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<ArtifactList>, Problem> {
    caller.authorize(&project)?;
    let items = state
        .controller
        .store()
        .artifact_versions(&project, &name)
        .await?;
    Ok(Json(ArtifactList { items }))
}

/// One version, with its consumers.
#[utoipa::path(get, path = "/api/v1/projects/{project}/artifacts/{name}/versions/{version}",
    responses((status = 200, body = Artifact), (status = 404, body = Problem)))]
async fn get_version(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name, version)): Path<(String, String, String)>,
) -> Result<Json<Artifact>, Problem> {
    caller.authorize(&project)?;
    Ok(Json(find(&state, &project, &name, Some(&version)).await?))
}

/// A file artifact's bytes; a dir artifact as a tar archive, or one of its files (`?path=`).
#[utoipa::path(get, path = "/api/v1/projects/{project}/artifacts/{name}/versions/{version}/download",
    params(DownloadQuery),
    responses((status = 200, content_type = "application/octet-stream"), (status = 404, body = Problem)))]
async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name, version)): Path<(String, String, String)>,
    Query(query): Query<DownloadQuery>,
) -> Result<Response, Problem> {
    caller.authorize(&project)?;
    let artifact = find(&state, &project, &name, Some(&version)).await?;
    let objects = state.controller.artifacts();
    let single = match (&query.path, artifact.spec.r#type, &artifact.spec.file) {
        (Some(path), _, _) => Some(path.clone()),
        (None, ArtifactType::File, Some(file)) => Some(file.clone()),
        _ => None,
    };
    match single {
        Some(relative) => {
            if relative
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..")
            {
                return Err(Problem::bad_request(
                    "path",
                    format!("{relative:?} is not a relative path"),
                ));
            }
            let files = objects.list(&artifact).await.map_err(storage)?;
            if !files.iter().any(|(path, _)| *path == relative) {
                return Err(Problem::not_found(format!(
                    "artifact {name}:{version} has no file {relative}"
                )));
            }
            let bytes = objects.read(&artifact, &relative).await.map_err(storage)?;
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
        }
        None => {
            let archive = objects.tar(&artifact).await.map_err(storage)?;
            Ok(([(header::CONTENT_TYPE, "application/x-tar")], archive).into_response())
        }
    }
}

/// Deletes every version of an artifact and its files (runs keep their lineage records).
#[utoipa::path(delete, path = "/api/v1/projects/{project}/artifacts/{name}",
    responses((status = 204), (status = 404, body = Problem)))]
async fn delete_artifact(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    caller.authorize(&project)?;
    let deleted = state
        .controller
        .store()
        .delete_artifact(&project, &name)
        .await?;
    if deleted.is_empty() {
        return Err(Problem::not_found(format!(
            "artifact {name} in project {project} not found"
        )));
    }
    for version in &deleted {
        if let Err(error) = state.controller.artifacts().remove(version).await {
            tracing::warn!(artifact = %version.status.key, %error, "cannot remove the files of a deleted artifact");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}
