//! Content hashes of specs: SHA-256 over a canonical JSON form (object keys sorted at every
//! depth, no whitespace), so that the same spec always hashes the same whatever the key order
//! in the submitted document.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Hex SHA-256 of the canonical form of `value`.
pub fn content_hash(value: &Value) -> String {
    let mut hasher = Sha256::new();
    write_canonical(value, &mut hasher);
    hex::encode(hasher.finalize())
}

fn write_canonical(value: &Value, hasher: &mut Sha256) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            hasher.update(b"{");
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    hasher.update(b",");
                }
                write_canonical(&Value::String(key.clone()), hasher);
                hasher.update(b":");
                write_canonical(&map[key], hasher);
            }
            hasher.update(b"}");
        }
        Value::Array(items) => {
            hasher.update(b"[");
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    hasher.update(b",");
                }
                write_canonical(item, hasher);
            }
            hasher.update(b"]");
        }
        scalar => {
            // Scalars have one serialisation in serde_json; strings are escaped the same way.
            let text = serde_json::to_string(scalar).unwrap_or_default();
            hasher.update(text.as_bytes());
        }
    }
}

/// The short form of a content hash used as a version id (64 bits of the hash).
pub fn version_id(hash: &str) -> String {
    hash.chars().take(16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_change_the_hash() {
        let a = json!({"a": 1, "b": {"x": [1, 2], "y": "s"}});
        let b: Value = serde_json::from_str(r#"{"b": {"y": "s", "x": [1, 2]}, "a": 1}"#).unwrap();
        assert_eq!(content_hash(&a), content_hash(&b));
    }

    #[test]
    fn any_change_changes_the_hash() {
        let a = json!({"a": 1, "b": [1, 2]});
        for other in [
            json!({"a": 2, "b": [1, 2]}),
            json!({"a": 1, "b": [2, 1]}),
            json!({"a": "1", "b": [1, 2]}),
        ] {
            assert_ne!(content_hash(&a), content_hash(&other));
        }
    }
}
