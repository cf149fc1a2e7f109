//! Header rewriting between the client and a replica (RFC 9110 §7.6.1 hop-by-hop headers, and
//! the de-facto `X-Forwarded-*` headers).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::{IpAddr, SocketAddr};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, never the message: each hop sets its own.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes the hop-by-hop headers: the fixed set, any `Proxy-*`, `Upgrade`, and every header
/// the `Connection` header names.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

/// What the replica is told about the original request.
pub(crate) struct Forwarded<'a> {
    pub client: Option<SocketAddr>,
    /// The `/services/{project}/{name}` part of the original path.
    pub prefix: &'a str,
    pub replica: SocketAddr,
}

/// Rewrites request headers for the replica: hop-by-hop removed, `Host` set to the replica's,
/// `X-Forwarded-*` set (`X-Forwarded-For` appended to, so that the chain of proxies is kept).
pub(crate) fn prepare_request(headers: &mut HeaderMap, forwarded: &Forwarded<'_>) {
    remove_hop_by_hop(headers);
    let original_host = headers.remove(header::HOST);

    if let Some(client) = forwarded.client {
        let ip = client_ip(client);
        let chain: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|value| !value.is_empty())
            .collect();
        let joined = if chain.is_empty() {
            ip.to_string()
        } else {
            format!("{}, {ip}", chain.join(", "))
        };
        if let Ok(value) = HeaderValue::from_str(&joined) {
            headers.insert(X_FORWARDED_FOR, value);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    match original_host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
    if let Ok(prefix) = HeaderValue::from_str(forwarded.prefix) {
        headers.insert(X_FORWARDED_PREFIX, prefix);
    }
    if let Ok(host) = HeaderValue::from_str(&forwarded.replica.to_string()) {
        headers.insert(header::HOST, host);
    }
}

/// The client's address as people write it: an IPv4 client reached over an IPv6 socket shows
/// as plain IPv4.
fn client_ip(client: SocketAddr) -> IpAddr {
    match client.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_lists_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("proxy-authorization", "basic x"),
            ("proxy-whatever", "1"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("content-type", "text/plain"),
            ("x-kept", "1"),
        ]);
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-kept"]);
    }

    #[test]
    fn forwarded_headers_are_set_and_the_chain_appended() {
        let mut headers = map(&[
            ("host", "gateway.example:7420"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let forwarded = Forwarded {
            client: Some("[::ffff:192.0.2.7]:5555".parse().unwrap()),
            prefix: "/services/p/n",
            replica: "127.0.0.1:9000".parse().unwrap(),
        };
        prepare_request(&mut headers, &forwarded);
        assert_eq!(headers["host"], "127.0.0.1:9000");
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "gateway.example:7420");
        assert_eq!(headers["x-forwarded-prefix"], "/services/p/n");
    }

    #[test]
    fn without_a_client_address_the_chain_is_left_alone() {
        let mut headers = map(&[("x-forwarded-for", "10.0.0.1")]);
        let forwarded = Forwarded {
            client: None,
            prefix: "/services/p/n",
            replica: "127.0.0.1:9000".parse().unwrap(),
        };
        prepare_request(&mut headers, &forwarded);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1");
        assert!(headers.get("x-forwarded-host").is_none());
    }
}
