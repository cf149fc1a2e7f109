//! The REST API under `/api/v1` (`docs/api.md`), with its OpenAPI document generated from the
//! handlers (`/openapi.json`). Handlers are thin: they authorize the [`caller::Caller`], call
//! the catalog or the controller, and map errors to problem+json.

mod artifacts;
pub mod caller;
mod events;
mod functions;
mod health;
pub mod json;
mod logs;
mod outputs;
pub mod problem;
mod projects;
mod runs;
mod schemas;
mod secrets;
mod services;
mod tasks;
mod triggers;
mod version;
mod workflows;

use crate::controller::Controller;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::Router;
use problem::Problem;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// Largest request body: a packed source folder (16 MiB) in base64 plus its document.
pub const MAX_BODY_BYTES: usize = 24 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub controller: Controller,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "runplane", description = "The runplane control plane API."),
    components(schemas(Problem, runplane_domain::FieldError))
)]
struct ApiDoc;

/// Answers 413 at once when `Content-Length` announces a body over the limit, before reading
/// it. (Bodies without a length are cut by `DefaultBodyLimit` while they are read.)
async fn refuse_oversize_bodies(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let announced = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    let limit = if request.uri().path().starts_with(outputs::PATH_PREFIX) {
        outputs::MAX_UPLOAD_BYTES
    } else {
        MAX_BODY_BYTES
    };
    if announced.is_some_and(|length| length > limit as u64) {
        return Problem::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("the request body is larger than this server accepts ({limit} bytes)"),
        )
        .into_response();
    }
    next.run(request).await
}

/// Every documented route, with the OpenAPI document they make.
fn documented_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(projects::routes())
        .merge(functions::routes())
        .merge(workflows::routes())
        .merge(triggers::routes())
        .merge(tasks::routes())
        .merge(services::routes())
        .merge(secrets::routes())
        .merge(artifacts::routes())
        .merge(runs::routes())
        .merge(schemas::routes())
        .merge(logs::routes())
        .merge(events::routes())
        .merge(health::routes())
        .merge(version::routes())
        .merge(outputs::routes())
}

pub fn router(controller: Controller) -> Router {
    let (router, openapi) = documented_routes().split_for_parts();
    let openapi_json = openapi.to_pretty_json().unwrap_or_default();
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    openapi_json,
                )
            }),
        )
        .fallback(|| async { Problem::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(refuse_oversize_bodies))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(AppState { controller })
}

#[cfg(test)]
mod tests {
    /// The OpenAPI document builds and lists the API; `OPENAPI_DUMP=<file>` writes it out
    /// (to compare documents across dependency upgrades).
    #[test]
    fn the_openapi_document_lists_the_api() {
        let (_, openapi) = super::documented_routes().split_for_parts();
        let json = openapi.to_pretty_json().expect("serializes");
        if let Some(path) = std::env::var_os("OPENAPI_DUMP") {
            std::fs::write(path, &json).expect("writes the dump");
        }
        let document: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert!(document["paths"]["/api/v1/events"]["get"].is_object());
        assert!(document["paths"]["/api/v1/projects"].is_object());
    }
}
