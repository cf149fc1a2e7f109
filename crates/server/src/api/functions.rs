//! `/api/v1/projects/{project}/functions`: applying creates immutable, content-hashed versions.
//! Workflows (`kind: pipeline`) are versioned the same way and share the name space, but are
//! listed and read under `/workflows` (`workflows.rs`), through the same helpers here.

use super::caller::Caller;
use super::json::JsonBody;
use super::problem::Problem;
use super::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use runplane_domain::workflow::PIPELINE_KIND;
use runplane_domain::{Document, FunctionVersion, Invalid};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_functions, apply_function))
        .routes(routes!(get_function, delete_function))
        .routes(routes!(list_versions))
        .routes(routes!(get_version))
}

/// Functions proper, or workflows: which collection a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    Function,
    Workflow,
}

impl Class {
    fn of(kind: &str) -> Class {
        if kind == PIPELINE_KIND {
            Class::Workflow
        } else {
            Class::Function
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Class::Function => "function",
            Class::Workflow => "workflow",
        }
    }

    fn collection(self) -> &'static str {
        match self {
            Class::Function => "functions",
            Class::Workflow => "workflows",
        }
    }

    fn not_found(self, project: &str, name: &str) -> Problem {
        Problem::not_found(format!(
            "{} {name} in project {project} not found",
            self.noun()
        ))
    }

    /// A version found under the other collection is a 404 that says where it is.
    fn check(self, version: FunctionVersion, project: &str) -> Result<FunctionVersion, Problem> {
        let class = Class::of(&version.kind);
        if class == self {
            return Ok(version);
        }
        Err(Problem::not_found(format!(
            "{} in project {project} is a {}, not a {}: see /projects/{project}/{}/{}",
            version.metadata.name,
            class.noun(),
            self.noun(),
            class.collection(),
            version.metadata.name
        )))
    }
}

pub(super) async fn list(
    state: &AppState,
    project: &str,
    class: Class,
) -> Result<Vec<FunctionVersion>, Problem> {
    let all = state.controller.store().list_functions(project).await?;
    Ok(all
        .into_iter()
        .filter(|version| Class::of(&version.kind) == class)
        .collect())
}

pub(super) async fn apply(
    state: &AppState,
    project: &str,
    document: Document,
    caller: &str,
    class: Class,
) -> Result<(StatusCode, Json<FunctionVersion>), Problem> {
    if class == Class::Workflow && document.kind != PIPELINE_KIND {
        return Err(Invalid::field(
            "kind",
            format!(
                "a workflow has kind {PIPELINE_KIND}, not {:?}",
                document.kind
            ),
        )
        .into());
    }
    let put = state
        .controller
        .catalog()
        .apply_function(project, document, caller)
        .await?;
    let status = if put.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(put.value)))
}

pub(super) async fn get(
    state: &AppState,
    project: &str,
    name: &str,
    version: Option<&str>,
    class: Class,
) -> Result<FunctionVersion, Problem> {
    let found = state
        .controller
        .catalog()
        .resolve_function(project, name, version)
        .await?;
    class.check(found, project)
}

pub(super) async fn delete(
    state: &AppState,
    project: &str,
    name: &str,
    class: Class,
) -> Result<StatusCode, Problem> {
    match state
        .controller
        .store()
        .get_function(project, name, None)
        .await?
    {
        Some(found) => {
            class.check(found, project)?;
        }
        None => return Err(class.not_found(project, name)),
    }
    if state
        .controller
        .store()
        .delete_function(project, name)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(class.not_found(project, name))
    }
}

pub(super) async fn versions(
    state: &AppState,
    project: &str,
    name: &str,
    class: Class,
) -> Result<Vec<FunctionVersion>, Problem> {
    let versions = state
        .controller
        .store()
        .list_function_versions(project, name)
        .await?;
    match versions.first() {
        None => Err(class.not_found(project, name)),
        Some(latest) => {
            class.check(latest.clone(), project)?;
            Ok(versions)
        }
    }
}

/// The latest version of every function.
#[utoipa::path(get, path = "/api/v1/projects/{project}/functions", responses((status = 200, body = Vec<FunctionVersion>)))]
async fn list_functions(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> Result<Json<Vec<FunctionVersion>>, Problem> {
    caller.authorize(&project)?;
    Ok(Json(list(&state, &project, Class::Function).await?))
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
    apply(&state, &project, document, &caller.name, Class::Function).await
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
        get(&state, &project, &name, None, Class::Function).await?,
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
    delete(&state, &project, &name, Class::Function).await
}

/// Every version of a function, newest first.
#[utoipa::path(get, path = "/api/v1/projects/{project}/functions/{name}/versions", responses((status = 200, body = Vec<FunctionVersion>), (status = 404, body = Problem)))]
async fn list_versions(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<Vec<FunctionVersion>>, Problem> {
    caller.authorize(&project)?;
    Ok(Json(
        versions(&state, &project, &name, Class::Function).await?,
    ))
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
        get(&state, &project, &name, Some(&version), Class::Function).await?,
    ))
}
