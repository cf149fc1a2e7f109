//! `/api/v1/projects/{project}/services`: the stable names of service runs, with the state of
//! the run that backs each and its replicas. Requests to a service go through the gateway at
//! `/services/{project}/{name}/...`.

use super::caller::Caller;
use super::problem::Problem;
use super::AppState;
use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use runplane_domain::{service_url, ReplicaStatus, RunState, ServiceRecord};
use serde::Serialize;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_services))
        .routes(routes!(get_service, delete_service))
}

/// A service as the API shows it: its record plus what its run reports.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceView {
    pub project: String,
    pub name: String,
    /// The gateway path of the service on this server.
    pub url: String,
    /// The run that holds the name.
    pub run_id: String,
    /// That run's state (RUNNING: every replica ready).
    #[schema(value_type = String)]
    pub state: RunState,
    /// The function version the run serves.
    pub function_version: String,
    /// Replicas asked for and ready now.
    pub desired: u32,
    pub ready: u32,
    /// Restarts of crashed replicas, over all replicas.
    pub restarts: u32,
    pub replicas: Vec<ReplicaStatus>,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

async fn view(state: &AppState, record: ServiceRecord) -> Result<ServiceView, Problem> {
    let run = state
        .controller
        .store()
        .get_run(&record.project, &record.run_id)
        .await?;
    let (run_state, version, service) = match run {
        Some(run) => (
            run.status.state,
            run.spec.function_version.clone(),
            run.status.service,
        ),
        None => (RunState::Deleted, String::new(), None),
    };
    let service = service.unwrap_or_else(|| runplane_domain::ServiceStatus {
        name: record.name.clone(),
        url: service_url(&record.project, &record.name),
        desired: 0,
        replicas: Vec::new(),
    });
    // Replicas of a run that no longer runs are history, not capacity.
    let live = matches!(run_state, RunState::Pending | RunState::Running);
    Ok(ServiceView {
        url: service_url(&record.project, &record.name),
        project: record.project,
        name: record.name,
        run_id: record.run_id,
        state: run_state,
        function_version: version,
        desired: if live { service.desired } else { 0 },
        ready: if live { service.ready() as u32 } else { 0 },
        restarts: service.restarts(),
        replicas: if live { service.replicas } else { Vec::new() },
        created: record.created,
        updated: record.updated,
    })
}

/// Every service of the project.
#[utoipa::path(get, path = "/api/v1/projects/{project}/services", responses((status = 200, body = Vec<ServiceView>)))]
async fn list_services(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> Result<Json<Vec<ServiceView>>, Problem> {
    caller.authorize(&project)?;
    let records = state.controller.store().list_services(&project).await?;
    let mut views = Vec::with_capacity(records.len());
    for record in records {
        views.push(view(&state, record).await?);
    }
    Ok(Json(views))
}

/// One service.
#[utoipa::path(get, path = "/api/v1/projects/{project}/services/{name}", responses((status = 200, body = ServiceView), (status = 404, body = Problem)))]
async fn get_service(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<ServiceView>, Problem> {
    caller.authorize(&project)?;
    let record = state
        .controller
        .store()
        .get_service(&project, &name)
        .await?
        .ok_or_else(|| {
            Problem::not_found(format!("service {name} in project {project} not found"))
        })?;
    Ok(Json(view(&state, record).await?))
}

/// Deletes a service: stops every run serving it and removes the name (the runs stay).
#[utoipa::path(delete, path = "/api/v1/projects/{project}/services/{name}", responses((status = 204), (status = 404, body = Problem)))]
async fn delete_service(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> Result<axum::http::StatusCode, Problem> {
    caller.authorize(&project)?;
    state.controller.delete_service(&project, &name).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}
