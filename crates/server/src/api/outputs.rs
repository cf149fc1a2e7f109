//! `PUT /api/v1/outputs/{run}/{attempt}`: where the pods of the kubernetes framework upload a
//! finished job's outputs (results, errors, metrics, artifacts). Authenticated by the
//! run-scoped token the pod was given (`Authorization: Bearer`), not by a user: the token
//! only opens this one attempt's outputs.

use super::problem::Problem;
use super::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use runplane_frameworks::uploads::OutputsError;
use runplane_frameworks::ExecutionId;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Where uploads go; they may be larger than other requests.
pub const PATH_PREFIX: &str = "/api/v1/outputs/";
/// The runner keeps up to 64 MiB of outputs, which the uploader sends base64-encoded in JSON.
pub const MAX_UPLOAD_BYTES: usize = 96 * 1024 * 1024;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload_outputs))
        // Innermost, so it wins over the API's general limit.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD_BYTES))
}

/// Stores an attempt's uploaded outputs, collected when the framework sees its pod end.
#[utoipa::path(put, path = "/api/v1/outputs/{run}/{attempt}",
    request_body(content = String, content_type = "application/json",
        description = "the uploader's document: {\"files\": [{\"path\", \"mode\", \"contents\" (base64)}]}"),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 400, body = Problem)))]
async fn upload_outputs(
    State(state): State<AppState>,
    Path((run, attempt)): Path<(String, u32)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, Problem> {
    let Some(uploads) = state.controller.outputs_uploads() else {
        return Err(Problem::not_found(
            "this server does not run the kubernetes framework",
        ));
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "an outputs upload needs the run's token (Authorization: Bearer)",
            )
        })?;
    let execution = ExecutionId {
        run_id: run,
        attempt,
    };
    match uploads.accept_outputs(&execution, token, &body) {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(OutputsError::Forbidden) => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the token does not belong to this run attempt",
        )),
        Err(OutputsError::Invalid(why)) => Err(Problem::bad_request("body", why)),
        Err(OutputsError::Io(error)) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("cannot store the outputs: {error}"),
        )),
    }
}
