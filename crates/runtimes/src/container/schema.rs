//! The JSON Schema of a `container` function's spec, served at `/api/v1/schemas/container`.
//! Validation itself is `spec.rs` (better messages); a test keeps the two naming the same
//! fields.

use serde_json::{json, Value};

pub(super) fn spec_schema() -> Value {
    let absolute_path = json!({ "type": "string", "pattern": "^/[^:]*$" });
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "container function spec",
        "type": "object",
        "additionalProperties": false,
        "anyOf": [ { "required": ["image"] }, { "required": ["build"] } ],
        "dependentRequired": { "readiness_path": ["port"] },
        "properties": {
            "image": {
                "description": "The image runs start from (`localhost/runplane-busybox:latest`, `registry:5000/app@sha256:...`). Required unless `build` is given: a build run makes a version with one.",
                "type": "string",
                "minLength": 1
            },
            "command": {
                "description": "argv of the program to start (the container's entrypoint); required by job, deploy and serve runs.",
                "type": "array",
                "items": { "type": "string" },
                "minItems": 1
            },
            "args": {
                "description": "Appended to `command`.",
                "type": "array",
                "items": { "type": "string" }
            },
            "env": {
                "description": "Environment variables (the task's env and the run's parameters, as RUNPLANE_PARAM_<NAME>, come after). Names starting with RUNPLANE_ are reserved.",
                "type": "object",
                "propertyNames": { "pattern": "^[A-Za-z_][A-Za-z0-9_]*$" },
                "additionalProperties": { "type": "string" }
            },
            "port": {
                "description": "Serve: the TCP port the container listens on.",
                "type": "integer",
                "minimum": 1,
                "maximum": 65535
            },
            "readiness_path": {
                "description": "Serve: the path that answers 200 once a replica is ready (default /). Needs `port`.",
                "type": "string",
                "pattern": "^/\\S*$"
            },
            "volumes": {
                "description": "Host folders mounted into the container.",
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["host_path", "container_path"],
                    "properties": {
                        "host_path": absolute_path,
                        "container_path": absolute_path,
                        "read_only": { "type": "boolean", "default": false }
                    }
                }
            },
            "build": {
                "description": "The build action: a Containerfile and an optional context (base64 of a gzip'd tar, which `runplane apply` makes from `path`).",
                "type": "object",
                "additionalProperties": false,
                "required": ["containerfile"],
                "properties": {
                    "containerfile": { "type": "string", "minLength": 1 },
                    "context": {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["archive"],
                        "properties": {
                            "archive": { "type": "string", "contentEncoding": "base64" },
                            "digest": { "type": "string", "pattern": "^sha256:[0-9a-f]{64}$", "description": "Computed by the server from the archive's files." }
                        }
                    }
                }
            },
            "built_from": {
                "description": "Set by the server on versions made by a build: the version and the run it came from.",
                "type": "object",
                "additionalProperties": false,
                "required": ["version", "run"],
                "properties": {
                    "version": { "type": "string" },
                    "run": { "type": "string" }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::spec::{
        BUILD_FIELDS, BUILT_FROM_FIELDS, CONTEXT_FIELDS, FIELDS, VOLUME_FIELDS,
    };
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
        let properties = &schema["properties"];
        assert_eq!(keys(properties), sorted(FIELDS));
        assert_eq!(
            keys(&properties["volumes"]["items"]["properties"]),
            sorted(VOLUME_FIELDS)
        );
        assert_eq!(
            keys(&properties["build"]["properties"]),
            sorted(BUILD_FIELDS)
        );
        assert_eq!(
            keys(&properties["build"]["properties"]["context"]["properties"]),
            sorted(CONTEXT_FIELDS)
        );
        assert_eq!(
            keys(&properties["built_from"]["properties"]),
            sorted(BUILT_FROM_FIELDS)
        );
    }
}
