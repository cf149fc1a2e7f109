//! The service gateway (`docs/api.md`, "The service gateway": services are reachable at
//! `/services/{project}/{name}/...`): a streaming HTTP reverse proxy to the ready replicas of
//! a service.
//!
//! The controller tells the gateway which endpoints each run backing a service has
//! ([`Gateway::set_endpoints`], [`Gateway::remove_run`]) and takes replicas out before stopping
//! them ([`Gateway::drain`]); the server mounts [`Gateway::router`]. A service may be backed by
//! several runs at once (a rolling redeploy): its pool is the union of their endpoints that are
//! not draining. Each request goes to the endpoint with the fewest requests in flight, ties
//! broken round-robin.
//!
//! Bodies stream both ways without buffering. Errors are problem+json: 404 for a service no run
//! backs, 503 (with `Retry-After: 1`) when none of its replicas is ready, 502 when no replica
//! accepts a connection or the replica fails while handling the request, 504 when it sends no
//! response headers in time. A refused connection is the only failure retried on another
//! replica (the request never left); an error after the response started streaming ends the
//! body with an error.
//!
//! Mount it outside the API's body-size limits: uploads to services may be of any size.

mod body;
mod error;
mod headers;
mod pool;
mod proxy;
mod routes;

pub use error::GatewayError;

use pool::Pool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long the gateway waits for replicas.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Establishing a TCP connection to a replica (then the next replica is tried).
    pub connect_timeout: Duration,
    /// From sending a request until the replica's response headers arrive (504 after). The
    /// body may then stream for as long as it takes.
    pub response_timeout: Duration,
    /// The default wait of a drain before a replica is stopped anyway; the gateway itself does
    /// not use it: callers pass it to [`Gateway::drain`].
    pub drain_timeout: Duration,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// One ready replica of a run: where it serves HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub replica: u32,
    pub addr: SocketAddr,
}

/// The service gateway. Cheap to clone: clones share the routing table and the connection
/// pool to replicas.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub options: GatewayOptions,
    pub pool: Pool,
    pub client: proxy::Client,
}

impl Gateway {
    pub fn new(options: GatewayOptions) -> Self {
        let client = proxy::client(options.connect_timeout);
        Gateway {
            inner: Arc::new(Inner {
                options,
                pool: Pool::default(),
                client,
            }),
        }
    }

    /// The options the gateway was made with (callers read `drain_timeout` from here).
    pub fn options(&self) -> &GatewayOptions {
        &self.inner.options
    }

    /// The ready endpoints of one run backing service (`project`, `name`), replacing what was
    /// known for that run. Endpoints not listed any more leave the rotation (requests in flight
    /// on them finish). An empty list keeps the service known (503 rather than 404). If the
    /// run was filed under another service, it moves.
    pub fn set_endpoints(&self, project: &str, name: &str, run_id: &str, endpoints: Vec<Endpoint>) {
        self.inner
            .pool
            .set_endpoints(project, name, run_id, endpoints);
    }

    /// Forgets every endpoint of the run (stopped, ended, deleted), and its drained replicas.
    /// Requests in flight on them finish. A service left with no run is unknown (404).
    pub fn remove_run(&self, run_id: &str) {
        self.inner.pool.remove_run(run_id);
    }

    /// Takes one replica out of rotation (sticky: a later `set_endpoints` that still lists it
    /// does not bring it back; only `remove_run` forgets it) and waits until no request is in
    /// flight on it, or `timeout`. Returns true when drained. A request counts until its
    /// response body was sent or the client went away.
    pub async fn drain(&self, run_id: &str, replica: u32, timeout: Duration) -> bool {
        self.inner.pool.drain(run_id, replica, timeout).await
    }

    /// Requests in flight on one replica (for tests and status), whether or not it is still
    /// in rotation.
    pub fn in_flight(&self, run_id: &str, replica: u32) -> usize {
        self.inner.pool.in_flight(run_id, replica)
    }

    /// The axum routes: `/services/{project}/{name}` and `/services/{project}/{name}/{*rest}`,
    /// any method. Serve them with `into_make_service_with_connect_info::<SocketAddr>()` for
    /// `X-Forwarded-For` to name the client.
    pub fn router(&self) -> axum::Router {
        routes::router(self.clone())
    }
}
