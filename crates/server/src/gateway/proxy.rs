//! Forwarding one request to a replica and streaming its answer back.
//!
//! Neither body is buffered: the client's request body is handed to the upstream client as it
//! is, and the replica's response body is handed back to the server as it is, so memory use
//! does not grow with body sizes and a chunk the replica flushes reaches the client at once.

use super::body::{Guarded, Outgoing, Returned};
use super::error::GatewayError;
use super::headers::{self, Forwarded};
use super::pool::{Pick, ReplicaKey};
use super::Inner;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use http::header::{self, HeaderValue};
use http::{Uri, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) type Client = hyper_util::client::legacy::Client<HttpConnector, Outgoing>;

/// Idle keep-alive connections to replicas are closed after this long; replicas are local or
/// near, so re-connecting is cheap, and a replica that went away must not be held on to.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn client(connect_timeout: Duration) -> Client {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector)
}

/// Where a request under `/services/` goes, from its raw (still percent-encoded) URI.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target<'a> {
    pub project: &'a str,
    pub name: &'a str,
    /// `/services/{project}/{name}`, as the client wrote it.
    pub prefix: &'a str,
    /// The path below the prefix (at least `/`) and the query, for the replica.
    pub path_and_query: String,
}

pub(crate) fn target(uri: &Uri) -> Option<Target<'_>> {
    let path = uri.path();
    let below = path.strip_prefix("/services/")?;
    let mut segments = below.splitn(3, '/');
    let project = segments.next().filter(|s| !s.is_empty())?;
    let name = segments.next().filter(|s| !s.is_empty())?;
    let rest = segments.next().unwrap_or("");
    let prefix_len = "/services/".len() + project.len() + 1 + name.len();
    let mut path_and_query = String::with_capacity(1 + rest.len());
    path_and_query.push('/');
    path_and_query.push_str(rest);
    if let Some(query) = uri.query() {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    Some(Target {
        project,
        name,
        prefix: &path[..prefix_len],
        path_and_query,
    })
}

/// Sends the request to the least loaded ready replica of its service; a replica that refuses
/// the connection is skipped (the request never left), any later failure answers 502.
pub(crate) async fn forward(inner: &Inner, request: Request) -> Result<Response, GatewayError> {
    let (parts, body) = request.into_parts();
    let target = target(&parts.uri)
        .ok_or_else(|| GatewayError::BadRequest(format!("{} is no service path", parts.uri)))?;
    let client_addr = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);

    let mut prepared = parts.headers;
    if !prepared.contains_key(header::HOST) {
        // HTTP/2 clients name the host in the URI instead.
        if let Some(authority) = parts.uri.authority() {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                prepared.insert(header::HOST, host);
            }
        }
    }

    let returned: Returned = Arc::new(Mutex::new(Some(body)));
    let deadline = tokio::time::Instant::now() + inner.options.response_timeout;
    let mut tried: Vec<ReplicaKey> = Vec::new();
    let mut last_refusal = String::new();
    loop {
        let (key, addr, in_flight) = match inner.pool.pick(target.project, target.name, &tried) {
            Pick::UnknownService => {
                return Err(GatewayError::UnknownService {
                    project: target.project.to_string(),
                    name: target.name.to_string(),
                })
            }
            Pick::NoneReady => {
                return Err(GatewayError::NoReadyReplica {
                    project: target.project.to_string(),
                    name: target.name.to_string(),
                })
            }
            Pick::Exhausted => {
                return Err(GatewayError::Unreachable {
                    project: target.project.to_string(),
                    name: target.name.to_string(),
                    last: last_refusal,
                })
            }
            Pick::Picked { key, addr, guard } => (key, addr, guard),
        };
        let Some(body) = take(&returned) else {
            return Err(GatewayError::Upstream(
                "the request body was already sent".to_string(),
            ));
        };

        let uri: Uri = format!("http://{addr}{}", target.path_and_query)
            .parse()
            .map_err(|error: http::uri::InvalidUri| GatewayError::BadRequest(error.to_string()))?;
        let mut headers = prepared.clone();
        headers::prepare_request(
            &mut headers,
            &Forwarded {
                client: client_addr,
                prefix: target.prefix,
                replica: addr,
            },
        );
        let mut upstream = http::Request::new(Outgoing::new(body, returned.clone()));
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = uri;
        *upstream.version_mut() = Version::HTTP_11;
        *upstream.headers_mut() = headers;

        let sent = tokio::time::timeout_at(deadline, inner.client.request(upstream)).await;
        match sent {
            Err(_) => return Err(GatewayError::Timeout(inner.options.response_timeout)),
            Ok(Ok(response)) => {
                tracing::debug!(run_id = %key.run_id, replica = key.replica, status = %response.status(), "proxied");
                let (mut head, body) = response.into_parts();
                headers::remove_hop_by_hop(&mut head.headers);
                // The server speaks its own protocol version with the client.
                head.version = Version::default();
                return Ok(Response::from_parts(
                    head,
                    Body::new(Guarded::new(body, in_flight)),
                ));
            }
            // Only a refused or timed-out connection is retried: the request never left, and
            // its body came back whole.
            Ok(Err(error)) if error.is_connect() && has_body(&returned) => {
                last_refusal = chain(&error);
                tracing::debug!(run_id = %key.run_id, replica = key.replica, %addr, error = %last_refusal, "replica refused the connection; trying another");
                tried.push(key);
                drop(in_flight);
            }
            Ok(Err(error)) => {
                let error = chain(&error);
                tracing::debug!(run_id = %key.run_id, replica = key.replica, %addr, %error, "replica failed");
                return Err(GatewayError::Upstream(error));
            }
        }
    }
}

fn take(returned: &Returned) -> Option<Body> {
    returned
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take()
}

fn has_body(returned: &Returned) -> bool {
    returned
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .is_some()
}

/// An error with its causes, since the client's own message is only the outermost one.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_the_prefix_from_the_rest() {
        let uri: Uri = "/services/p/n/a/b%2Fc?x=1&y=2".parse().unwrap();
        let found = target(&uri).unwrap();
        assert_eq!(found.project, "p");
        assert_eq!(found.name, "n");
        assert_eq!(found.prefix, "/services/p/n");
        assert_eq!(found.path_and_query, "/a/b%2Fc?x=1&y=2");

        let bare: Uri = "/services/p/n".parse().unwrap();
        assert_eq!(target(&bare).unwrap().path_and_query, "/");
        let slash: Uri = "/services/p/n/?q".parse().unwrap();
        assert_eq!(target(&slash).unwrap().path_and_query, "/?q");
        let short: Uri = "/services/p".parse().unwrap();
        assert!(target(&short).is_none());
    }
}
