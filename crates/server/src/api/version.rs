//! `GET /api/v1/version`: which server answers, and which API it speaks. The compatibility
//! policy of `/api/v1` is in `docs/api.md`.

use super::AppState;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

/// The API's version: the path prefix. Within it, changes are additive only.
pub const API_VERSION: &str = "v1";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(version))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Version {
    /// The server's release (semantic versioning), e.g. `0.2.0`.
    pub server: String,
    /// The REST API's version, the prefix of its paths (`v1` for `/api/v1`).
    pub api: String,
}

/// The server's release and the version of the API it serves.
#[utoipa::path(get, path = "/api/v1/version", responses((status = 200, body = Version)))]
async fn version() -> Json<Version> {
    Json(Version {
        server: env!("CARGO_PKG_VERSION").to_string(),
        api: API_VERSION.to_string(),
    })
}
