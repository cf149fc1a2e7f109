//! The opaque page cursor of [`crate::RunQuery`]: the id of the last run of a page.
//!
//! It is base64url-encoded with a version prefix so that clients treat it as opaque (and do not
//! start building ids into it), and so that garbage is recognized as such rather than silently
//! used as a bound. Every implementation may share it: it encodes nothing store-specific.

use crate::{StoreError, StoreResult};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const PREFIX: &str = "run:";

/// The cursor for the page that follows the run `last_id`.
pub(crate) fn encode(last_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PREFIX}{last_id}"))
}

/// The run id a cursor continues after, or `InvalidCursor`.
pub(crate) fn decode(cursor: &str) -> StoreResult<String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::InvalidCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| StoreError::InvalidCursor)?;
    match text.strip_prefix(PREFIX) {
        Some(id) if !id.is_empty() => Ok(id.to_string()),
        _ => Err(StoreError::InvalidCursor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let id = "0190a6c4-1b2c-7d3e-8f40-123456789abc";
        assert_eq!(decode(&encode(id)).unwrap(), id);
        for bad in ["", "!!!", "abcd", &URL_SAFE_NO_PAD.encode("run:"), id] {
            assert!(
                matches!(decode(bad), Err(StoreError::InvalidCursor)),
                "{bad}"
            );
        }
    }
}
