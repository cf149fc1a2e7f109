//! Why a request could not be proxied, and the problem+json each answers.

use crate::api::problem::Problem;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no service {name} is running in project {project}")]
    UnknownService { project: String, name: String },
    #[error("service {name} in project {project} has no ready replica")]
    NoReadyReplica { project: String, name: String },
    #[error("no replica of service {name} in project {project} accepted a connection: {last}")]
    Unreachable {
        project: String,
        name: String,
        last: String,
    },
    #[error("the replica failed while handling the request: {0}")]
    Upstream(String),
    #[error("the replica sent no response within {0:?}")]
    Timeout(std::time::Duration),
    #[error("cannot build the request to the replica: {0}")]
    BadRequest(String),
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let detail = self.to_string();
        let problem = match &self {
            GatewayError::UnknownService { .. } => Problem::not_found(detail),
            GatewayError::NoReadyReplica { .. } => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "no-ready-replica", detail)
            }
            GatewayError::Unreachable { .. } => {
                Problem::new(StatusCode::BAD_GATEWAY, "replica-unreachable", detail)
            }
            GatewayError::Upstream(_) => {
                Problem::new(StatusCode::BAD_GATEWAY, "replica-failed", detail)
            }
            GatewayError::Timeout(_) => {
                Problem::new(StatusCode::GATEWAY_TIMEOUT, "replica-timeout", detail)
            }
            GatewayError::BadRequest(_) => {
                Problem::new(StatusCode::BAD_REQUEST, "bad-request", detail)
            }
        };
        let mut response = problem.into_response();
        if matches!(self, GatewayError::NoReadyReplica { .. }) {
            // Replicas come and go within seconds (start-up, a redeploy): worth a quick retry.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
