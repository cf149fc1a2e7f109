//! `/api/v1/schemas`: the JSON Schema of every spec kind users write — a function kind
//! (`python`) from its runtime, a task kind (`python+job`) from `TaskSpec`.

use super::problem::Problem;
use super::AppState;
use axum::extract::{Path, State};
use axum::Json;
use runplane_domain::entity::split_task_kind;
use runplane_domain::TaskSpec;
use serde_json::Value;
use utoipa::PartialSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_kinds))
        .routes(routes!(get_schema))
}

/// Every kind that has a schema: function kinds, then task kinds.
#[utoipa::path(get, path = "/api/v1/schemas", responses((status = 200, body = Vec<String>)))]
async fn list_kinds(State(state): State<AppState>) -> Json<Vec<String>> {
    let runtimes = state.controller.catalog().runtimes();
    let mut kinds: Vec<String> = runtimes.kinds().into_iter().map(str::to_string).collect();
    for kind in runtimes.kinds() {
        if let Some(runtime) = runtimes.get(kind) {
            kinds.extend(
                runtime
                    .actions()
                    .iter()
                    .map(|action| format!("{kind}+{action}")),
            );
        }
    }
    Json(kinds)
}

/// The JSON Schema of a kind's `spec`.
#[utoipa::path(get, path = "/api/v1/schemas/{kind}", responses((status = 200, description = "a JSON Schema"), (status = 404, body = Problem)))]
async fn get_schema(
    State(state): State<AppState>,
    Path(kind): Path<String>,
) -> Result<Json<Value>, Problem> {
    let runtimes = state.controller.catalog().runtimes();
    if let Some(runtime) = runtimes.get(&kind) {
        return Ok(Json(runtime.spec_schema()));
    }
    let task_kind = split_task_kind(&kind)
        .and_then(|(runtime, action)| runtimes.get(runtime).map(|r| r.actions().contains(&action)));
    if task_kind == Some(true) {
        let schema = serde_json::to_value(TaskSpec::schema())
            .map_err(|error| Problem::not_found(format!("no schema for {kind}: {error}")))?;
        return Ok(Json(schema));
    }
    Err(Problem::not_found(format!(
        "no kind {kind:?} (see /api/v1/schemas for the kinds there are)"
    )))
}
