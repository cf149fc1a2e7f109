//! What one URL's requests look like, prepared once.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::Full;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{url:?} is not a URL: {reason}")]
    Url { url: String, reason: String },
    #[error("only http:// URLs are supported, not {0:?}")]
    Scheme(String),
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("{0:?} is not an HTTP method")]
    Method(String),
    #[error("{0:?} is not a header (use `Name: value`)")]
    Header(String),
}

/// Everything needed to connect to a URL and to build its request again and again.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    method: Method,
    path_and_query: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Target {
    pub async fn new(
        url: &str,
        method: &str,
        headers: &[String],
        body: Option<&str>,
    ) -> Result<Target, TargetError> {
        let uri: Uri = url
            .parse()
            .map_err(|error: http::uri::InvalidUri| TargetError::Url {
                url: url.to_string(),
                reason: error.to_string(),
            })?;
        if uri.scheme_str() != Some("http") {
            return Err(TargetError::Scheme(url.to_string()));
        }
        let authority = uri.authority().ok_or_else(|| TargetError::Url {
            url: url.to_string(),
            reason: "no host".to_string(),
        })?;
        let host = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        let addr = tokio::net::lookup_host(&host)
            .await
            .and_then(|mut addrs| {
                addrs
                    .next()
                    .ok_or_else(|| std::io::Error::other("no address"))
            })
            .map_err(|source| TargetError::Resolve {
                host: host.clone(),
                source,
            })?;
        let path_and_query: Uri = uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .parse()
            .map_err(|error: http::uri::InvalidUri| TargetError::Url {
                url: url.to_string(),
                reason: error.to_string(),
            })?;
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| TargetError::Method(method.to_string()))?;

        let mut header_map = HeaderMap::new();
        let host_value =
            HeaderValue::from_str(authority.as_str()).map_err(|_| TargetError::Url {
                url: url.to_string(),
                reason: "bad host".to_string(),
            })?;
        header_map.insert(HOST, host_value);
        for line in headers {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| TargetError::Header(line.clone()))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| TargetError::Header(line.clone()))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| TargetError::Header(line.clone()))?;
            header_map.append(name, value);
        }
        let body = Bytes::from(body.unwrap_or("").to_string());
        if !body.is_empty() && !header_map.contains_key(CONTENT_TYPE) {
            header_map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if !body.is_empty() || method == Method::POST || method == Method::PUT {
            header_map.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        Ok(Target {
            url: url.to_string(),
            addr,
            method,
            path_and_query,
            headers: header_map,
            body,
        })
    }

    pub fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.path_and_query.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}
