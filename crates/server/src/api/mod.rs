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

/// The document served at /openapi.json.
fn openapi_json(openapi: &utoipa::openapi::OpenApi) -> String {
    let mut document = serde_json::to_value(openapi).unwrap_or_default();
    describe_every_response(&mut document);
    serde_json::to_string_pretty(&document).unwrap_or_default()
}

/// OpenAPI 3.1 requires a `description` on every response; utoipa 6 leaves an empty one out,
/// so the responses declared without one get `""` back (first, where utoipa 5 wrote it).
fn describe_every_response(document: &mut serde_json::Value) {
    let Some(paths) = document["paths"].as_object_mut() else {
        return;
    };
    // A path item holds operations, and may hold other fields (`parameters`, `summary`): only
    // objects with `responses` are looked at, and nothing is indexed that may not be there.
    let responses = paths
        .values_mut()
        .filter_map(serde_json::Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|operation| operation.get_mut("responses"))
        .filter_map(serde_json::Value::as_object_mut)
        .flat_map(|responses| responses.values_mut())
        .filter_map(serde_json::Value::as_object_mut);
    for fields in responses {
        if !fields.contains_key("description") && !fields.contains_key("$ref") {
            fields.shift_insert(0, "description".into(), "".into());
        }
    }
}

pub fn router(controller: Controller) -> Router {
    let (router, openapi) = documented_routes().split_for_parts();
    let openapi_json = openapi_json(&openapi);
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
    /// Fields of a path item that are not operations are left alone, without a panic.
    #[test]
    fn only_operations_responses_get_a_description() {
        let mut document = serde_json::json!({"paths": {"/x": {
            "parameters": [{"name": "p"}],
            "summary": "s",
            "get": {"responses": {"200": {}, "404": {"$ref": "#/r"}}},
        }}});
        super::describe_every_response(&mut document);
        assert_eq!(
            document["paths"]["/x"],
            serde_json::json!({
                "parameters": [{"name": "p"}],
                "summary": "s",
                "get": {"responses": {"200": {"description": ""}, "404": {"$ref": "#/r"}}},
            })
        );
    }

    /// The OpenAPI document builds and lists the API; `OPENAPI_DUMP=<file>` writes it out
    /// (to compare documents across dependency upgrades).
    #[test]
    fn the_openapi_document_lists_the_api() {
        let (_, openapi) = super::documented_routes().split_for_parts();
        let json = super::openapi_json(&openapi);
        if let Some(path) = std::env::var_os("OPENAPI_DUMP") {
            std::fs::write(path, &json).expect("writes the dump");
        }
        let document: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert!(document["paths"]["/api/v1/events"]["get"].is_object());
        assert!(document["paths"]["/api/v1/projects"].is_object());
        assert_eq!(
            document["paths"]["/api/v1/projects"]["get"]["responses"]["200"]["description"], "",
            "OpenAPI 3.1 requires a response description"
        );
    }
}
