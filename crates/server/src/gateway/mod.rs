//! PLACEHOLDER until the gateway branch lands: the API the controller calls.
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Clone, Default)]
pub struct Gateway;

#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
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

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub replica: u32,
    pub addr: SocketAddr,
}

impl Gateway {
    pub fn new(_options: GatewayOptions) -> Self {
        Gateway
    }
    pub fn set_endpoints(&self, _p: &str, _n: &str, _r: &str, _e: Vec<Endpoint>) {}
    pub fn remove_run(&self, _r: &str) {}
    pub async fn drain(&self, _r: &str, _i: u32, _t: Duration) -> bool {
        true
    }
    pub fn in_flight(&self, _r: &str, _i: u32) -> usize {
        0
    }
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
    }
}
