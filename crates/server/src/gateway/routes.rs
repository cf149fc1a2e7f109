//! The axum routes of the gateway.

use super::Gateway;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use tracing::Instrument;

pub(crate) fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/services/{project}/{name}", any(proxy))
        // A catch-all does not match an empty rest, so the bare trailing slash needs its own.
        .route("/services/{project}/{name}/", any(proxy))
        .route("/services/{project}/{name}/{*rest}", any(proxy))
        .with_state(gateway)
}

/// The handler takes the raw request rather than `Path`: the rest of the path must reach the
/// replica as the client encoded it (`%2F` stays `%2F`).
async fn proxy(State(gateway): State<Gateway>, request: Request) -> Response {
    let span = tracing::debug_span!("gateway", method = %request.method(), uri = %request.uri());
    match super::proxy::forward(&gateway.inner, request)
        .instrument(span)
        .await
    {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%error, "gateway error");
            error.into_response()
        }
    }
}
