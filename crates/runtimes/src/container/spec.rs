//! The spec of a `container` function: what users write, how it is checked at apply time, and
//! the normalized form that is stored (and copied into every run).
//!
//! ```yaml
//! image: localhost/runplane-busybox:latest  # required unless `build` is given
//! command: ["/bin/sh", "-c"]               # argv, the container's entrypoint (job/deploy/serve)
//! args: ["echo hello"]                      # appended to command
//! env: {KEY: value}
//! port: 8080                                # serve: the port the container listens on
//! readiness_path: /                         # serve: answered 200 when ready (default "/")
//! volumes: [{host_path: /abs, container_path: /abs, read_only: true}]
//! build:                                    # the `build` action
//!   containerfile: "FROM localhost/runplane-busybox:latest\nCOPY . /app\n"
//!   context: {archive: <base64 of a gzip'd tar>, digest: "sha256:..."}  # optional
//! built_from: {version: ..., run: ...}      # set on versions made by a build
//! ```
//!
//! Normalized: defaults left out (empty lists and maps, `readiness_path: /`), volume paths
//! cleaned (`/data/./x/` → `/data/x`), `build.context.digest` computed. A normalized spec is
//! itself a valid spec and normalizes to itself. What a run needs of it (an image, a command, a
//! port) is checked per action at run time (`check.rs`): a function may exist only to be built.

use super::ContainerConfig;
use crate::archive;
use runplane_domain::invalid::Problems;
use runplane_domain::{Invalid, Volume};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

pub(super) const FIELDS: &[&str] = &[
    "image",
    "command",
    "args",
    "env",
    "port",
    "readiness_path",
    "volumes",
    "build",
    "built_from",
];
pub(super) const VOLUME_FIELDS: &[&str] = &["host_path", "container_path", "read_only"];
pub(super) const BUILD_FIELDS: &[&str] = &["containerfile", "context"];
pub(super) const CONTEXT_FIELDS: &[&str] = &["archive", "digest"];
pub(super) const BUILT_FROM_FIELDS: &[&str] = &["version", "run"];
/// Where the frameworks mount a run's own folders; a volume there would hide them.
const RESERVED_MOUNT: &str = "/runplane";
/// The readiness path when the spec names none.
pub(super) const DEFAULT_READINESS_PATH: &str = "/";
/// Longest Containerfile accepted (it is stored in every version and every build run).
const MAX_CONTAINERFILE_BYTES: usize = 1024 * 1024;

/// The normalized spec of a `container` function, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Absent means [`DEFAULT_READINESS_PATH`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_path: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_from: Option<BuiltFrom>,
}

/// How to build the function's image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    pub containerfile: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
}

/// A packed build context (the format of a python `source.archive`), and the digest of its
/// files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub archive: String,
    pub digest: String,
}

/// The version and the build run a built version came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltFrom {
    pub version: String,
    pub run: String,
}

impl ContainerSpec {
    /// Reads a normalized spec (from a function version or a run's snapshot).
    pub fn from_value(value: &Value) -> Result<Self, String> {
        serde_path_to_error::deserialize(value).map_err(|error| {
            let path = error.path().to_string();
            if path == "." {
                error.inner().to_string()
            } else {
                format!("{path}: {}", error.inner())
            }
        })
    }

    /// `command` then `args`: the container's argv.
    pub fn argv(&self) -> Vec<String> {
        self.command.iter().chain(&self.args).cloned().collect()
    }

    pub fn readiness_path(&self) -> &str {
        self.readiness_path
            .as_deref()
            .unwrap_or(DEFAULT_READINESS_PATH)
    }
}

/// Validates a submitted spec and returns its normalized form. See the module documentation.
pub(crate) fn normalize(spec: &Value, config: &ContainerConfig) -> Result<Value, Invalid> {
    let Some(object) = spec.as_object() else {
        return Err(Invalid::field(
            "",
            "must be a mapping with `image` and `command` (or `build`)",
        ));
    };
    let mut problems = Problems::new();
    unknown_fields(object, "", FIELDS, &mut problems);

    let build = object
        .get("build")
        .and_then(|value| read_build(value, config, &mut problems));
    let image =
        match object.get("image") {
            Some(value) => read_string(value, "image", &mut problems).and_then(|image| {
                match check_image_reference(&image) {
                    Ok(()) => Some(image),
                    Err(problem) => {
                        problems.add("image", problem);
                        None
                    }
                }
            }),
            None => {
                if !object.contains_key("build") {
                    problems.add(
                        "image",
                        "is required (or give `build`: a build run makes a version with an image)",
                    );
                }
                None
            }
        };
    let command = object
        .get("command")
        .map(|value| read_argv(value, "command", true, &mut problems))
        .unwrap_or_default();
    let args = object
        .get("args")
        .map(|value| read_argv(value, "args", false, &mut problems))
        .unwrap_or_default();
    let env = object
        .get("env")
        .map(|value| read_env(value, &mut problems))
        .unwrap_or_default();
    let port = object
        .get("port")
        .and_then(|value| read_port(value, &mut problems));
    let readiness_path = object
        .get("readiness_path")
        .and_then(|value| read_readiness_path(value, object, &mut problems));
    let volumes = object
        .get("volumes")
        .map(|value| read_volumes(value, &mut problems))
        .unwrap_or_default();
    let built_from = object
        .get("built_from")
        .and_then(|value| read_built_from(value, &mut problems));

    problems.finish()?;
    let normalized = ContainerSpec {
        image,
        command,
        args,
        env,
        port,
        readiness_path,
        volumes,
        build,
        built_from,
    };
    serde_json::to_value(&normalized).map_err(|error| Invalid::field("", error.to_string()))
}

/// What a version's content hash covers: the normalized spec without the context archive's
/// bytes (its `digest` stays), so that the same files packed twice make the same version.
pub(crate) fn hash_input(normalized: &Value) -> Value {
    let mut value = normalized.clone();
    if let Some(context) = value
        .pointer_mut("/build/context")
        .and_then(Value::as_object_mut)
    {
        if context.contains_key("digest") {
            context.remove("archive");
        }
    }
    value
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

fn unknown_fields(
    object: &Map<String, Value>,
    prefix: &str,
    known: &[&str],
    problems: &mut Problems,
) {
    for key in object.keys().filter(|k| !known.contains(&k.as_str())) {
        problems.add(
            join(prefix, key),
            format!("unknown field; expected one of: {}", known.join(", ")),
        );
    }
}

/// A string without NUL characters (which no argv, environment or path can hold).
fn read_string(value: &Value, field: &str, problems: &mut Problems) -> Option<String> {
    match value {
        Value::String(text) if text.contains('\0') => {
            problems.add(field, "must not contain a NUL character");
            None
        }
        Value::String(text) => Some(text.clone()),
        other => {
            problems.add(field, format!("must be a string, not {}", type_name(other)));
            None
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// An image reference: `[host[:port]/]path[:tag][@sha256:<64 hex>]`, path components in
/// lowercase letters, digits and `._-`.
pub(crate) fn check_image_reference(reference: &str) -> Result<(), String> {
    let example = "an image reference such as localhost/runplane-busybox:latest or registry:5000/team/app@sha256:<64 hex digits>";
    let bad = |why: &str| Err(format!("{reference:?} is not {example}: {why}"));
    if reference.is_empty() {
        return bad("it is empty");
    }
    if reference.len() > 512 {
        return bad("it is longer than 512 characters");
    }
    let (name_tag, digest) = match reference.split_once('@') {
        Some((name_tag, digest)) => (name_tag, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        let valid = digest
            .strip_prefix("sha256:")
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        if !valid {
            return bad("the digest after @ must be sha256:<64 hex digits>");
        }
    }
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(colon) => (
            &name_tag[..last_slash + colon],
            Some(&name_tag[last_slash + colon + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(tag) = tag {
        let first_ok = tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        let rest_ok = tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !first_ok || !rest_ok || tag.len() > 128 {
            return bad("a tag is up to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`");
        }
    }
    let mut components = name.split('/').peekable();
    let mut index = 0;
    while let Some(component) = components.next() {
        let is_host = index == 0
            && components.peek().is_some()
            && (component.contains(['.', ':']) || component == "localhost");
        let valid = if is_host {
            let (host, port) = match component.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (component, None),
            };
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
                && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        } else {
            !component.is_empty()
                && component.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && component
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric())
        };
        if !valid {
            return bad(&format!(
                "{component:?} is not a valid {} (lowercase letters, digits, `.`, `_` and `-`)",
                if is_host {
                    "registry host"
                } else {
                    "name component"
                }
            ));
        }
        index += 1;
    }
    Ok(())
}

/// A list of strings; `command` must also name a program first.
fn read_argv(value: &Value, field: &str, is_command: bool, problems: &mut Problems) -> Vec<String> {
    let Value::Array(items) = value else {
        problems.add(
            field,
            format!(
                "must be a list of strings (argv), e.g. [\"/bin/sh\", \"-c\"], not {}",
                type_name(value)
            ),
        );
        return Vec::new();
    };
    let argv: Vec<Option<String>> = items
        .iter()
        .enumerate()
        .map(|(index, item)| read_string(item, &format!("{field}[{index}]"), problems))
        .collect();
    if is_command {
        match argv.first() {
            None => problems.add(field, "must name a program: [\"/path/to/program\", ...]"),
            Some(Some(program)) if program.is_empty() => {
                problems.add(format!("{field}[0]"), "must name a program, not be empty")
            }
            _ => {}
        }
    }
    argv.into_iter().flatten().collect()
}

/// Letters, digits and `_`, not starting with a digit: what shells and `env` accept.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn read_env(value: &Value, problems: &mut Problems) -> BTreeMap<String, String> {
    let Value::Object(map) = value else {
        problems.add(
            "env",
            format!(
                "must be a mapping of names to strings, not {}",
                type_name(value)
            ),
        );
        return BTreeMap::new();
    };
    let mut env = BTreeMap::new();
    for (name, value) in map {
        let field = format!("env.{name}");
        if !is_identifier(name) {
            problems.add(
                &field,
                "is not an environment variable name (letters, digits and _, not starting with a digit)",
            );
            continue;
        }
        if name.starts_with("RUNPLANE_") {
            problems.add(
                &field,
                "names starting with RUNPLANE_ are runplane's (run id, parameters, outputs folder)",
            );
            continue;
        }
        if !value.is_string() {
            problems.add(
                &field,
                format!(
                    "must be a string, not {} (quote it in YAML: \"1\", \"true\")",
                    type_name(value)
                ),
            );
            continue;
        }
        if let Some(text) = read_string(value, &field, problems) {
            env.insert(name.clone(), text);
        }
    }
    env
}

fn read_port(value: &Value, problems: &mut Problems) -> Option<u16> {
    match value.as_u64().and_then(|port| u16::try_from(port).ok()) {
        Some(port) if port > 0 => Some(port),
        _ => {
            problems.add(
                "port",
                format!("must be a TCP port number from 1 to 65535, not {value}"),
            );
            None
        }
    }
}

/// `None` for the default, so that writing it out makes the same version as leaving it out.
fn read_readiness_path(
    value: &Value,
    object: &Map<String, Value>,
    problems: &mut Problems,
) -> Option<String> {
    let path = read_string(value, "readiness_path", problems)?;
    if !path.starts_with('/')
        || path.len() > 2048
        || path.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        problems.add(
            "readiness_path",
            format!(
                "{path:?} is not a URL path such as /healthz (starting with /, without spaces)"
            ),
        );
        return None;
    }
    if !object.contains_key("port") {
        problems.add(
            "readiness_path",
            "is only used by `serve`, with `port`, which is not set",
        );
        return None;
    }
    (path != DEFAULT_READINESS_PATH).then_some(path)
}

/// An absolute path without `..`, cleaned (`/a//b/./c/` → `/a/b/c`). `:` is refused: engines
/// separate the parts of a bind mount with it.
fn clean_absolute_path(path: &str) -> Result<String, &'static str> {
    if !path.starts_with('/') {
        return Err("must be an absolute path (starting with /)");
    }
    if path.contains(':') {
        return Err("must not contain `:` (engines separate the parts of a mount with it)");
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("must not contain `..`"),
            part => parts.push(part),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

fn read_volumes(value: &Value, problems: &mut Problems) -> Vec<Volume> {
    let Value::Array(items) = value else {
        problems.add(
            "volumes",
            format!(
                "must be a list of {{host_path, container_path, read_only}}, not {}",
                type_name(value)
            ),
        );
        return Vec::new();
    };
    let mut volumes = Vec::new();
    let mut seen = BTreeSet::new();
    for (index, item) in items.iter().enumerate() {
        let prefix = format!("volumes[{index}]");
        let Value::Object(volume) = item else {
            problems.add(
                &prefix,
                "must be a mapping with host_path, container_path and optionally read_only",
            );
            continue;
        };
        unknown_fields(volume, &prefix, VOLUME_FIELDS, problems);
        let mut path = |name: &str| {
            let field = format!("{prefix}.{name}");
            let Some(value) = volume.get(name) else {
                problems.add(&field, "is required");
                return None;
            };
            let text = read_string(value, &field, problems)?;
            clean_absolute_path(&text)
                .map_err(|problem| problems.add(&field, problem))
                .ok()
        };
        let host_path = path("host_path");
        let container_path = path("container_path");
        let read_only = match volume.get("read_only") {
            None => false,
            Some(Value::Bool(read_only)) => *read_only,
            Some(other) => {
                problems.add(
                    format!("{prefix}.read_only"),
                    format!("must be true or false, not {}", type_name(other)),
                );
                false
            }
        };
        if let Some(target) = &container_path {
            let field = format!("{prefix}.container_path");
            if target == "/" {
                problems.add(&field, "must not be / (it would hide the whole image)");
            } else if target == RESERVED_MOUNT || target.starts_with(&format!("{RESERVED_MOUNT}/"))
            {
                problems.add(
                    &field,
                    format!(
                        "{RESERVED_MOUNT} is reserved for the run's own folders (work, outputs)"
                    ),
                );
            } else if !seen.insert(target.clone()) {
                problems.add(&field, format!("{target} is mounted twice"));
            }
        }
        if let (Some(host_path), Some(container_path)) = (host_path, container_path) {
            volumes.push(Volume {
                host_path,
                container_path,
                read_only,
            });
        }
    }
    volumes
}

fn read_build(
    value: &Value,
    config: &ContainerConfig,
    problems: &mut Problems,
) -> Option<BuildSpec> {
    let Value::Object(build) = value else {
        problems.add(
            "build",
            "must be a mapping with `containerfile` and optionally `context`",
        );
        return None;
    };
    unknown_fields(build, "build", BUILD_FIELDS, problems);
    let containerfile = match build.get("containerfile") {
        None => {
            problems.add("build.containerfile", "is required");
            None
        }
        Some(value) => read_string(value, "build.containerfile", problems).and_then(|text| {
            match check_containerfile(&text) {
                Ok(()) => Some(text),
                Err(problem) => {
                    problems.add("build.containerfile", problem);
                    None
                }
            }
        }),
    };
    let context = match build.get("context") {
        None => Some(None),
        Some(value) => read_context(value, config, problems).map(Some),
    };
    Some(BuildSpec {
        containerfile: containerfile?,
        context: context?,
    })
}

/// A Containerfile's first instruction (after comments, blank lines and `ARG`s) is `FROM`.
fn check_containerfile(text: &str) -> Result<(), String> {
    if text.len() > MAX_CONTAINERFILE_BYTES {
        return Err(format!(
            "is {} bytes, more than the {MAX_CONTAINERFILE_BYTES} allowed",
            text.len()
        ));
    }
    let first = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            line.split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase()
        })
        .find(|instruction| instruction != "ARG");
    match first.as_deref() {
        Some("FROM") => Ok(()),
        Some(other) => Err(format!(
            "must start with FROM (after comments and ARG lines), not {other}"
        )),
        None => Err("has no instructions; it must start with FROM".to_string()),
    }
}

fn read_context(
    value: &Value,
    config: &ContainerConfig,
    problems: &mut Problems,
) -> Option<Context> {
    let Value::Object(context) = value else {
        problems.add(
            "build.context",
            "must be a mapping with `archive` (`runplane apply` packs it from `path`)",
        );
        return None;
    };
    for key in context
        .keys()
        .filter(|k| !CONTEXT_FIELDS.contains(&k.as_str()))
    {
        let problem = if key == "path" {
            "is packed into `archive` by `runplane apply`; the server takes only `archive`"
                .to_string()
        } else {
            format!(
                "unknown field; expected one of: {}",
                CONTEXT_FIELDS.join(", ")
            )
        };
        problems.add(format!("build.context.{key}"), problem);
    }
    let Some(archive_value) = context.get("archive") else {
        // A `path` left unpacked was reported above, which says what to send instead.
        if !context.contains_key("path") {
            problems.add("build.context.archive", "is required");
        }
        return None;
    };
    let archive_text = read_string(archive_value, "build.context.archive", problems)?;
    let claimed = match context.get("digest") {
        None => None,
        Some(value) => Some(read_string(value, "build.context.digest", problems)?),
    };
    let files = match archive::unpack(&archive_text, config.max_context_bytes) {
        Ok(files) => files,
        Err(error) => {
            problems.add("build.context.archive", error.to_string());
            return None;
        }
    };
    let digest = archive::digest(&files);
    if let Some(claimed) = claimed {
        if claimed != digest {
            problems.add(
                "build.context.digest",
                format!("{claimed:?} does not match the archive's files, which hash to {digest}"),
            );
            return None;
        }
    }
    Some(Context {
        archive: archive::clean_base64(&archive_text).into_owned(),
        digest,
    })
}

fn read_built_from(value: &Value, problems: &mut Problems) -> Option<BuiltFrom> {
    let Value::Object(built_from) = value else {
        problems.add("built_from", "must be a mapping with `version` and `run`");
        return None;
    };
    unknown_fields(built_from, "built_from", BUILT_FROM_FIELDS, problems);
    let mut field = |name: &str| {
        let path = format!("built_from.{name}");
        match built_from.get(name) {
            None => {
                problems.add(&path, "is required");
                None
            }
            Some(value) => read_string(value, &path, problems).filter(|text| {
                let ok = !text.is_empty();
                if !ok {
                    problems.add(&path, "must not be empty");
                }
                ok
            }),
        }
    };
    let version = field("version");
    let run = field("run");
    Some(BuiltFrom {
        version: version?,
        run: run?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::tests::{b64, Item};
    use proptest::prelude::*;
    use serde_json::json;

    fn config() -> ContainerConfig {
        ContainerConfig::default()
    }

    fn fields(result: Result<Value, Invalid>) -> Vec<(String, String)> {
        result
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| (e.field, e.problem))
            .collect()
    }

    fn only_field(result: Result<Value, Invalid>) -> (String, String) {
        let mut all = fields(result);
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    fn with(extra: Value) -> Value {
        let mut spec =
            json!({"image": "localhost/runplane-busybox:latest", "command": ["/bin/sh", "-c"]});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        spec
    }

    #[test]
    fn normalizes_a_full_spec_to_itself() {
        let spec = with(json!({
            "args": ["echo $GREETING"],
            "env": {"GREETING": "hi", "_X1": ""},
            "port": 8080,
            "readiness_path": "/healthz",
            "volumes": [
                {"host_path": "/srv//data/./in/", "container_path": "/in/", "read_only": true},
                {"host_path": "/tmp", "container_path": "/scratch"}
            ],
        }));
        let normalized = normalize(&spec, &config()).unwrap();
        assert_eq!(
            normalized,
            json!({
                "image": "localhost/runplane-busybox:latest",
                "command": ["/bin/sh", "-c"],
                "args": ["echo $GREETING"],
                "env": {"GREETING": "hi", "_X1": ""},
                "port": 8080,
                "readiness_path": "/healthz",
                "volumes": [
                    {"host_path": "/srv/data/in", "container_path": "/in", "read_only": true},
                    {"host_path": "/tmp", "container_path": "/scratch", "read_only": false}
                ],
            })
        );
        assert_eq!(normalize(&normalized, &config()).unwrap(), normalized);
        let parsed = ContainerSpec::from_value(&normalized).unwrap();
        assert_eq!(parsed.argv(), ["/bin/sh", "-c", "echo $GREETING"]);
        assert_eq!(parsed.readiness_path(), "/healthz");
    }

    #[test]
    fn defaults_are_left_out_so_that_writing_them_makes_no_new_version() {
        let minimal = normalize(&with(json!({"port": 80})), &config()).unwrap();
        let explicit = normalize(
            &with(json!({"port": 80, "readiness_path": "/", "args": [], "env": {}, "volumes": []})),
            &config(),
        )
        .unwrap();
        assert_eq!(minimal, explicit);
        assert_eq!(
            minimal,
            json!({"image": "localhost/runplane-busybox:latest", "command": ["/bin/sh", "-c"], "port": 80})
        );
        assert_eq!(
            ContainerSpec::from_value(&minimal)
                .unwrap()
                .readiness_path(),
            "/"
        );
    }

    #[test]
    fn names_each_bad_field() {
        let cases = [
            (json!("busybox"), ""),
            (json!({"command": ["/bin/true"]}), "image"),
            (with(json!({"entrypoint": ["/bin/sh"]})), "entrypoint"),
            (with(json!({"image": 3})), "image"),
            (with(json!({"image": "Busybox"})), "image"),
            (with(json!({"image": "busybox:"})), "image"),
            (with(json!({"image": "a b"})), "image"),
            (with(json!({"image": "busybox@sha256:12"})), "image"),
            (with(json!({"command": "/bin/sh -c"})), "command"),
            (with(json!({"command": []})), "command"),
            (with(json!({"command": [""]})), "command[0]"),
            (with(json!({"command": ["/bin/sh", 3]})), "command[1]"),
            (
                with(json!({"command": ["/bin/sh", "a\u{0}b"]})),
                "command[1]",
            ),
            (with(json!({"args": "echo"})), "args"),
            (with(json!({"args": ["ok", null]})), "args[1]"),
            (with(json!({"env": ["A=1"]})), "env"),
            (with(json!({"env": {"A": 1}})), "env.A"),
            (with(json!({"env": {"A": true}})), "env.A"),
            (with(json!({"env": {"1A": "x"}})), "env.1A"),
            (with(json!({"env": {"A-B": "x"}})), "env.A-B"),
            (
                with(json!({"env": {"RUNPLANE_RUN_ID": "x"}})),
                "env.RUNPLANE_RUN_ID",
            ),
            (with(json!({"env": {"A": "x\u{0}"}})), "env.A"),
            (with(json!({"port": 0})), "port"),
            (with(json!({"port": 70000})), "port"),
            (with(json!({"port": "80"})), "port"),
            (with(json!({"port": -1})), "port"),
            (
                with(json!({"port": 80, "readiness_path": "healthz"})),
                "readiness_path",
            ),
            (
                with(json!({"port": 80, "readiness_path": "/a b"})),
                "readiness_path",
            ),
            (
                with(json!({"port": 80, "readiness_path": 1})),
                "readiness_path",
            ),
            (
                with(json!({"readiness_path": "/healthz"})),
                "readiness_path",
            ),
            (with(json!({"volumes": {"host_path": "/a"}})), "volumes"),
            (with(json!({"volumes": ["/a:/b"]})), "volumes[0]"),
            (
                with(json!({"volumes": [{"container_path": "/b"}]})),
                "volumes[0].host_path",
            ),
            (
                with(json!({"volumes": [{"host_path": "a", "container_path": "/b"}]})),
                "volumes[0].host_path",
            ),
            (
                with(json!({"volumes": [{"host_path": "/a/../etc", "container_path": "/b"}]})),
                "volumes[0].host_path",
            ),
            (
                with(json!({"volumes": [{"host_path": "/a", "container_path": "/b:ro"}]})),
                "volumes[0].container_path",
            ),
            (
                with(json!({"volumes": [{"host_path": "/a", "container_path": "/"}]})),
                "volumes[0].container_path",
            ),
            (
                with(
                    json!({"volumes": [{"host_path": "/a", "container_path": "/runplane/outputs"}]}),
                ),
                "volumes[0].container_path",
            ),
            (
                with(
                    json!({"volumes": [{"host_path": "/a", "container_path": "/b", "read_only": "yes"}]}),
                ),
                "volumes[0].read_only",
            ),
            (
                with(
                    json!({"volumes": [{"host_path": "/a", "container_path": "/b", "mode": "ro"}]}),
                ),
                "volumes[0].mode",
            ),
            (
                with(json!({"volumes": [
                    {"host_path": "/a", "container_path": "/b"},
                    {"host_path": "/c", "container_path": "/b/"}
                ]})),
                "volumes[1].container_path",
            ),
            (with(json!({"build": "FROM x"})), "build"),
            (with(json!({"build": {}})), "build.containerfile"),
            (
                with(json!({"build": {"containerfile": "FROM x", "target": "a"}})),
                "build.target",
            ),
            (
                with(json!({"build": {"containerfile": "RUN echo\nFROM x\n"}})),
                "build.containerfile",
            ),
            (
                with(json!({"build": {"containerfile": "# only a comment\n"}})),
                "build.containerfile",
            ),
            (
                with(json!({"build": {"containerfile": "FROM x", "context": "."}})),
                "build.context",
            ),
            (
                with(json!({"build": {"containerfile": "FROM x", "context": {"path": "."}}})),
                "build.context.path",
            ),
            (
                with(json!({"build": {"containerfile": "FROM x", "context": {}}})),
                "build.context.archive",
            ),
            (
                with(json!({"build": {"containerfile": "FROM x", "context": {"archive": "%%%"}}})),
                "build.context.archive",
            ),
            (with(json!({"built_from": "v1"})), "built_from"),
            (
                with(json!({"built_from": {"version": "v1"}})),
                "built_from.run",
            ),
            (
                with(json!({"built_from": {"version": "", "run": "r"}})),
                "built_from.version",
            ),
            (
                with(json!({"built_from": {"version": "v", "run": "r", "at": 1}})),
                "built_from.at",
            ),
        ];
        for (spec, field) in cases {
            let (got, problem) = only_field(normalize(&spec, &config()));
            assert_eq!(got, field, "{spec} → {problem}");
            assert!(!problem.is_empty());
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let spec = json!({"command": 1, "port": 0, "env": {"A": 1}, "x": 1});
        let mut got: Vec<String> = fields(normalize(&spec, &config()))
            .into_iter()
            .map(|(field, _)| field)
            .collect();
        got.sort();
        assert_eq!(got, ["command", "env.A", "image", "port", "x"]);
    }

    #[test]
    fn image_references() {
        for good in [
            "busybox",
            "busybox:1.36",
            "localhost/runplane-busybox:latest",
            "localhost:5000/team/app:v1.2_3",
            "registry.example.com/a/b/c",
            "127.0.0.1:5000/runplane/demo-hello:0123456789ab-00000000abcd",
            "127.0.0.1:5000/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "app:v1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(check_image_reference(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "UPPER/case",
            "a//b",
            "/abs",
            "app:",
            "app:-tag",
            "app@sha256:xyz",
            "app@md5:0123",
            "localhost:port/app",
            "a b",
            "app:tag:more",
        ] {
            let problem = check_image_reference(bad).unwrap_err();
            assert!(
                problem.contains("is not an image reference"),
                "{bad}: {problem}"
            );
        }
    }

    #[test]
    fn a_build_only_function_needs_no_image() {
        let spec = json!({"build": {"containerfile": "# base\nARG BASE=x\nfrom localhost/runplane-busybox:latest\nCOPY . /app\n"}});
        let normalized = normalize(&spec, &config()).unwrap();
        assert_eq!(normalized, spec);
        let parsed = ContainerSpec::from_value(&normalized).unwrap();
        assert_eq!(parsed.image, None);
        assert!(parsed.command.is_empty());
    }

    #[test]
    fn build_contexts_are_checked_and_digested() {
        let archive = b64(&[
            Item::File("app/main.sh", 0o755, b"#!/bin/sh\necho hi\n"),
            Item::File("README", 0o644, b"hello"),
        ]);
        let spec = json!({"build": {"containerfile": "FROM x\n", "context": {"archive": archive}}});
        let normalized = normalize(&spec, &config()).unwrap();
        let digest = normalized["build"]["context"]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            digest.starts_with("sha256:") && digest.len() == 71,
            "{digest}"
        );
        assert_eq!(normalized["build"]["context"]["archive"], archive);
        assert_eq!(normalize(&normalized, &config()).unwrap(), normalized);

        let mut wrong = normalized.clone();
        wrong["build"]["context"]["digest"] = json!("sha256:00");
        let (field, problem) = only_field(normalize(&wrong, &config()));
        assert_eq!(field, "build.context.digest");
        assert!(problem.contains(&digest), "{problem}");

        let unsafe_archive = b64(&[Item::File("../evil", 0o644, b"x")]);
        let spec =
            json!({"build": {"containerfile": "FROM x\n", "context": {"archive": unsafe_archive}}});
        let (field, problem) = only_field(normalize(&spec, &config()));
        assert_eq!(field, "build.context.archive");
        assert!(problem.contains("../evil"), "{problem}");

        let small = ContainerConfig {
            max_context_bytes: 10,
            ..config()
        };
        let spec = json!({"build": {"containerfile": "FROM x\n", "context": {"archive": archive}}});
        let (field, problem) = only_field(normalize(&spec, &small));
        assert_eq!(field, "build.context.archive");
        assert!(problem.contains("more than 10 bytes"), "{problem}");
    }

    #[test]
    fn hash_input_ignores_the_context_archive_bytes() {
        let items = || {
            [
                Item::File("a", 0o644, &b"1"[..]),
                Item::File("b", 0o644, &b"2"[..]),
            ]
        };
        let one = b64(&items());
        let two = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .encode(crate::archive::tests::tar_gz(&items(), 99))
        };
        assert_ne!(one, two);
        let normalized = |archive: &str| {
            normalize(
                &json!({"build": {"containerfile": "FROM x\n", "context": {"archive": archive}}}),
                &config(),
            )
            .unwrap()
        };
        let (a, b) = (normalized(&one), normalized(&two));
        assert_ne!(a, b);
        assert_eq!(hash_input(&a), hash_input(&b));
        assert!(hash_input(&a)["build"]["context"].get("archive").is_none());
        let plain = normalize(&with(json!({})), &config()).unwrap();
        assert_eq!(hash_input(&plain), plain);
    }

    #[test]
    fn stored_specs_are_read_strictly() {
        let normalized = normalize(&with(json!({})), &config()).unwrap();
        let mut extra = normalized.clone();
        extra["handler"] = json!("x");
        assert!(ContainerSpec::from_value(&extra)
            .unwrap_err()
            .contains("handler"));
        let mut bad = normalized;
        bad["volumes"] = json!([{"host_path": 1}]);
        assert!(ContainerSpec::from_value(&bad)
            .unwrap_err()
            .contains("volumes"));
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
            prop::sample::select(vec!["/a", "/", "FROM x", "busybox", "/runplane", "H4sI"])
                .prop_map(|s| Value::String(s.to_string())),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(vec![
                        "image",
                        "command",
                        "args",
                        "env",
                        "port",
                        "readiness_path",
                        "volumes",
                        "host_path",
                        "container_path",
                        "read_only",
                        "build",
                        "containerfile",
                        "context",
                        "archive",
                        "digest",
                        "built_from",
                        "version",
                        "run",
                        "X"
                    ]),
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        })
    }

    proptest! {
        #[test]
        fn normalize_never_panics_and_is_idempotent(spec in arbitrary_json()) {
            if let Ok(normalized) = normalize(&spec, &config()) {
                prop_assert_eq!(normalize(&normalized, &config()).unwrap(), normalized.clone());
                prop_assert!(ContainerSpec::from_value(&normalized).is_ok());
            }
        }
    }
}
