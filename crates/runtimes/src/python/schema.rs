//! The JSON Schema of a `python` function's spec, served at `/api/v1/schemas/python` for
//! editors and generators. Validation itself is `spec.rs` (it gives better messages); a test
//! keeps the two naming the same fields.

use serde_json::{json, Value};

pub(super) fn spec_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "python function spec",
        "type": "object",
        "additionalProperties": false,
        "required": ["source", "handler"],
        "dependentRequired": {
            "init_parameters": ["init_function"],
            "lock": ["requirements"],
            "built_from": ["image"]
        },
        "properties": {
            "source": {
                "description": "The function's code: inline `code` (the module `main`), or an `archive` (base64 of a gzip'd tar) that `runplane apply` makes from `path`.",
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "code": { "type": "string" },
                    "archive": { "type": "string", "contentEncoding": "base64" },
                    "digest": { "type": "string", "pattern": "^sha256:[0-9a-f]{64}$", "description": "Computed by the server from the archive's files." }
                },
                "oneOf": [ { "required": ["code"] }, { "required": ["archive"] } ]
            },
            "handler": {
                "description": "`function` (in the inline module) or `module:function` / `package.module:function`.",
                "type": "string",
                "minLength": 1
            },
            "requirements": {
                "description": "Python dependencies: PEP 508 requirement specifiers (`requests>=2`, `six==1.17.0`), no pip options. The server resolves them into `lock` once; runs use an environment built from the lock.",
                "type": "array",
                "items": { "type": "string", "minLength": 1, "pattern": "^\\s*[A-Za-z0-9][^\\n\\r]*$" },
                "maxItems": 200
            },
            "lock": {
                "description": "The resolved `requirements`, recorded by the server (accepted so that a stored spec can be re-applied; not part of the version's hash).",
                "type": "object",
                "additionalProperties": false,
                "required": ["text", "hash"],
                "properties": {
                    "text": { "type": "string", "description": "`uv pip compile` output: pinned requirements." },
                    "hash": { "type": "string", "pattern": "^[0-9a-f]{64}$", "description": "sha256 of `text`." }
                }
            },
            "image": {
                "description": "The image a `build` run made of this function; its runs execute in it.",
                "type": "string",
                "minLength": 1,
                "pattern": "^[A-Za-z0-9][A-Za-z0-9._/:@-]*$"
            },
            "built_from": {
                "description": "The version and the build run that made `image`.",
                "type": "object",
                "additionalProperties": false,
                "required": ["version", "run"],
                "properties": {
                    "version": { "type": "string", "minLength": 1 },
                    "run": { "type": "string", "minLength": 1 }
                }
            },
            "python_version": { "type": "string", "pattern": "^3(\\.[0-9]+)?$" },
            "default_parameters": {
                "description": "Parameters a job run's own parameters are merged over.",
                "type": "object"
            },
            "init_function": {
                "description": "Serve: a top-level function of the handler's module, called once per replica as `init(context, **init_parameters)` before the replica is ready (load a model there).",
                "type": "string",
                "minLength": 1
            },
            "init_parameters": {
                "description": "Serve: the init function's parameters; a serve run's own parameters are merged over them. Needs `init_function`.",
                "type": "object"
            },
            "signature": {
                "description": "The handler's parameters, computed by the server (accepted so that a stored spec can be re-applied).",
                "type": "object"
            },
            "init_signature": {
                "description": "The init function's parameters, computed by the server (accepted so that a stored spec can be re-applied).",
                "type": "object"
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::spec::{FIELDS, SOURCE_FIELDS};
    use super::*;

    fn keys(value: &Value) -> Vec<String> {
        let mut keys: Vec<String> = value
            .as_object()
            .map(|map| map.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        keys
    }

    fn sorted(fields: &[&str]) -> Vec<String> {
        let mut fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
        fields.sort();
        fields
    }

    #[test]
    fn the_schema_names_exactly_the_fields_the_validator_accepts() {
        let schema = spec_schema();
        assert_eq!(keys(&schema["properties"]), sorted(FIELDS));
        assert_eq!(
            keys(&schema["properties"]["source"]["properties"]),
            sorted(SOURCE_FIELDS)
        );
        assert_eq!(
            keys(&schema["properties"]["lock"]["properties"]),
            ["hash", "text"]
        );
        assert_eq!(
            keys(&schema["properties"]["built_from"]["properties"]),
            ["run", "version"]
        );
        assert_eq!(
            schema["properties"]["requirements"]["maxItems"],
            super::super::requirements::MAX_REQUIREMENTS
        );
    }
}
