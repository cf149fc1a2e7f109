//! Talking to the API server: transient failures retried with backoff, and every error told
//! in words a run's reason can carry.

use kube::Error as KubeError;
use std::future::Future;
use std::time::Duration;

/// How many times a call is tried when the API server fails in a way that may pass.
const TRIES: u32 = 5;

/// Whether `error` may pass on its own: the server's 5xx and 429, and connection failures.
pub(crate) fn is_transient(error: &KubeError) -> bool {
    match error {
        KubeError::Api(status) => status.code >= 500 || status.code == 429,
        KubeError::HyperError(_) | KubeError::Service(_) | KubeError::ReadEvents(_) => true,
        _ => false,
    }
}

pub(crate) fn is_not_found(error: &KubeError) -> bool {
    matches!(error, KubeError::Api(status) if status.code == 404)
}

pub(crate) fn is_conflict(error: &KubeError) -> bool {
    matches!(error, KubeError::Api(status) if status.code == 409)
}

/// Calls `call` until it succeeds, fails for good, or [`TRIES`] transient failures in a row,
/// doubling the wait from `base` between tries.
pub(crate) async fn retry<T, F, Fut>(
    base: Duration,
    what: &str,
    mut call: F,
) -> Result<T, KubeError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, KubeError>>,
{
    let mut delay = base;
    let mut tried = 1;
    loop {
        match call().await {
            Err(error) if is_transient(&error) && tried < TRIES => {
                tracing::warn!(%what, tried, "transient Kubernetes API error, retrying: {error}");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
                tried += 1;
            }
            other => return other,
        }
    }
}

/// An API error as a run's reason: what runplane was doing, then why it failed.
pub(crate) fn describe(namespace: &str, what: &str, error: &KubeError) -> String {
    match error {
        KubeError::Api(status) if status.code == 403 => format!(
            "cannot {what}: runplane is forbidden to do so in namespace {namespace:?} (check its Role and RoleBinding): {}",
            status.message
        ),
        KubeError::Api(status) if status.code == 404 && status.reason == "NotFound" => {
            format!("cannot {what}: {}", status.message)
        }
        KubeError::Api(status) if status.code == 422 || status.code == 400 => format!(
            "cannot {what}: the API server refused it as invalid: {}",
            status.message
        ),
        KubeError::Api(status) => format!(
            "cannot {what}: the API server answered {} {}: {}",
            status.code, status.reason, status.message
        ),
        KubeError::HyperError(_) | KubeError::Service(_) => format!(
            "cannot {what}: the Kubernetes API server cannot be reached ({error})"
        ),
        other => format!("cannot {what}: {other}"),
    }
}
