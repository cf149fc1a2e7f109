//! JSON request bodies whose errors name the field: a body that does not parse, has an unknown
//! field or a value of the wrong type is answered with problem+json pointing at the path.

use super::problem::Problem;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use bytes::Bytes;
use runplane_domain::Invalid;
use serde::de::DeserializeOwned;

/// Like `axum::Json`, with problem+json rejections that carry the field path.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        if !content_type.starts_with("application/json") {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                format!(
                    "expected a JSON body (Content-Type: application/json), got {content_type}"
                ),
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                let status = rejection.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    Problem::new(
                        status,
                        "too-large",
                        "the request body is larger than this server accepts",
                    )
                } else {
                    Problem::new(status, "bad-body", rejection.body_text())
                }
            })?;
        from_slice_with_path(&bytes)
            .map(JsonBody)
            .map_err(|invalid| Problem::from_invalid(StatusCode::BAD_REQUEST, invalid))
    }
}

fn path_of(path: &serde_path_to_error::Path) -> String {
    let text = path.to_string();
    if text == "." {
        String::new()
    } else {
        text
    }
}

pub fn from_slice_with_path<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Invalid> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let field = path_of(error.path());
        Invalid::field(field, error.inner().to_string())
    })
}

/// Deserializes a value already parsed as JSON, naming the failing field.
pub fn from_value_with_path<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, Invalid> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let field = path_of(error.path());
        Invalid::field(field, error.inner().to_string())
    })
}
