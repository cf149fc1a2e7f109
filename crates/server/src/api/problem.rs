//! Errors as RFC 9457 `application/problem+json`, with one entry per invalid field.

use crate::catalog::CatalogError;
use crate::controller::ControllerError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use runplane_domain::{FieldError, Invalid};
use runplane_store::StoreError;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank` when the status says it all).
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Every invalid field, by path into the request document.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("https://runplane.dev/problems/{kind}"),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: vec![],
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn bad_request(field: &str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Problem::from_invalid(StatusCode::BAD_REQUEST, Invalid::field(field, detail))
    }

    pub fn from_invalid(status: StatusCode, invalid: Invalid) -> Self {
        Problem {
            errors: invalid.0.clone(),
            ..Problem::new(status, "invalid", invalid.to_string())
        }
    }

    fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            error.to_string(),
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

impl From<Invalid> for Problem {
    fn from(invalid: Invalid) -> Self {
        Problem::from_invalid(StatusCode::UNPROCESSABLE_ENTITY, invalid)
    }
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(what) => Problem::not_found(format!("{what} not found")),
            StoreError::Conflict { .. }
            | StoreError::IllegalTransition(_)
            | StoreError::TaskLimitReached { .. } => {
                Problem::new(StatusCode::CONFLICT, "conflict", error.to_string())
            }
            StoreError::IdempotencyMismatch { .. } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                error.to_string(),
            ),
            StoreError::InvalidCursor => {
                Problem::bad_request("cursor", "not a cursor this server returned")
            }
            StoreError::Database(_) => Problem::internal(error),
        }
    }
}

impl From<CatalogError> for Problem {
    fn from(error: CatalogError) -> Self {
        match error {
            CatalogError::Invalid(invalid) => invalid.into(),
            CatalogError::NotFound(what) => Problem::not_found(format!("{what} not found")),
            CatalogError::Store(error) => error.into(),
            CatalogError::Unavailable(detail) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
            }
        }
    }
}

impl From<ControllerError> for Problem {
    fn from(error: ControllerError) -> Self {
        match error {
            ControllerError::Invalid(invalid) => invalid.into(),
            ControllerError::NotFound(what) => Problem::not_found(format!("{what} not found")),
            ControllerError::Conflict(detail) => {
                Problem::new(StatusCode::CONFLICT, "conflict", detail)
            }
            ControllerError::Store(error) => error.into(),
            ControllerError::Logs(error) => Problem::internal(error),
            ControllerError::Secret(error) => Problem::internal(error),
            ControllerError::Unauthorized(detail) => {
                Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
            }
            ControllerError::Unavailable(detail) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
            }
        }
    }
}
