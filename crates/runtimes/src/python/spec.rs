//! The spec of a `python` function: what users write, how it is checked at apply time, and the
//! normalized form that is stored (and copied into every run).
//!
//! ```yaml
//! source:
//!   code: "def handler(name='world'): ..."   # inline: the module `main`
//!   # or
//!   archive: "<base64 of a gzip'd tar>"      # a packed file or directory (the CLI packs it)
//!   digest: "sha256:..."                     # optional on input, checked; always stored
//! handler: handler                 # `function` (in `main`) or `module:function`, `pkg.mod:function`
//! requirements: ["six==1.17.0"]    # optional: PEP 508 specifiers, resolved once by the server
//! python_version: "3.11"           # optional, stored as given (not checked against the interpreter)
//! default_parameters: {}           # optional, merged under each job run's parameters
//! init_function: load              # optional, serve only: a function of the handler's module,
//!                                  # called once per replica as load(context, **init_parameters)
//! init_parameters: {}              # optional (needs init_function), merged under each serve
//!                                  # run's parameters
//! ```
//!
//! A version may also carry what the server and builds add (`requirements.rs`): `lock` (the
//! resolved requirements, recorded by the server; not part of the content hash), and on a
//! version made by a `build` run, `image` and `built_from` (part of the hash: a built version
//! is a version of its own). They are accepted on input so that stored specs can be re-applied.
//!
//! The normalized spec adds `signature` (the handler's parameters, read from its `def`) and,
//! with an init function, `init_signature` (the same for it), so that runs are checked without
//! parsing the code again; `signature`, `init_signature` and `source.digest` are accepted on
//! input (and recomputed) so that a stored spec can be applied again as it is.

use super::handler::{is_identifier, HandlerRef, MAIN_MODULE};
use super::inspect::{strip_bom, HandlerInspector};
use super::params;
use super::requirements::{self, BuiltFrom, LockSpec};
use super::serve;
use super::signature::{HandlerError, ParameterKind, Signature, SourceTree};
use super::PythonConfig;
use crate::archive::{self, SourceFile};
use runplane_domain::invalid::Problems;
use runplane_domain::Invalid;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub(super) const FIELDS: &[&str] = &[
    "source",
    "handler",
    "requirements",
    "python_version",
    "default_parameters",
    "init_function",
    "init_parameters",
    "signature",
    "init_signature",
    "lock",
    "image",
    "built_from",
];
pub(super) const SOURCE_FIELDS: &[&str] = &["code", "archive", "digest"];
/// Syntax errors reported per apply; more are summarized.
const MAX_SYNTAX_ERRORS: usize = 5;

/// The normalized spec of a `python` function, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonSpec {
    pub source: Source,
    /// Always `module:function`.
    pub handler: String,
    /// PEP 508 requirement specifiers, trimmed, in the order given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python_version: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub default_parameters: Map<String, Value>,
    /// Serve: a function of the handler's module (a bare name), called once per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_function: Option<String>,
    /// Serve: what `init_function` is called with; a serve run's parameters are merged over it.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub init_parameters: Map<String, Value>,
    pub signature: Signature,
    /// The parameters of `init_function` (present exactly when it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_signature: Option<Signature>,
    /// `requirements` resolved by the server (present only with requirements).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockSpec>,
    /// The image a `build` run made of this function (its runs execute in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The version and run that built `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_from: Option<BuiltFrom>,
}

/// Where the function's code is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Source {
    /// Inline code: the module `main`.
    Code { code: String },
    /// A packed file or directory, and the digest of its files (what versions are hashed on).
    Archive { archive: String, digest: String },
}

impl PythonSpec {
    /// Reads a normalized spec (from a function version or a run's snapshot).
    pub fn from_value(value: &Value) -> Result<Self, String> {
        serde_path_to_error::deserialize(value).map_err(|error| describe_serde_error(&error))
    }

    /// The handler's module and function.
    pub fn handler_parts(&self) -> (&str, &str) {
        self.handler
            .split_once(':')
            .unwrap_or((MAIN_MODULE, &self.handler))
    }
}

/// The spec as submitted; field names and types only (everything else is checked after).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecInput {
    source: SourceInput,
    handler: String,
    #[serde(default)]
    requirements: Vec<String>,
    #[serde(default)]
    python_version: Option<String>,
    #[serde(default)]
    default_parameters: Map<String, Value>,
    #[serde(default)]
    init_function: Option<String>,
    #[serde(default)]
    init_parameters: Map<String, Value>,
    /// Recomputed; accepted so that a stored spec can be re-applied.
    #[serde(default, rename = "signature")]
    _signature: Option<Value>,
    /// Recomputed, like `signature`.
    #[serde(default, rename = "init_signature")]
    _init_signature: Option<Value>,
    #[serde(default)]
    lock: Option<LockSpec>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    built_from: Option<BuiltFrom>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceInput {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    archive: Option<String>,
    #[serde(default)]
    digest: Option<String>,
}

fn describe_serde_error<E: std::fmt::Display>(error: &serde_path_to_error::Error<E>) -> String {
    let path = error.path().to_string();
    if path == "." {
        error.inner().to_string()
    } else {
        format!("{path}: {}", error.inner())
    }
}

/// Unknown and missing fields, and values of the wrong type, each with its exact path.
fn read_input(spec: &Value) -> Result<SpecInput, Invalid> {
    let Some(object) = spec.as_object() else {
        return Err(Invalid::field(
            "",
            "must be a mapping with `source` and `handler`",
        ));
    };
    let mut problems = Problems::new();
    for key in object.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
        problems.add(
            key.clone(),
            format!("unknown field; expected one of: {}", FIELDS.join(", ")),
        );
    }
    for required in ["source", "handler"] {
        if !object.contains_key(required) {
            problems.add(required, "is required");
        }
    }
    match object.get("source") {
        Some(Value::Object(source)) => {
            for key in source
                .keys()
                .filter(|k| !SOURCE_FIELDS.contains(&k.as_str()))
            {
                problems.add(
                    format!("source.{key}"),
                    "unknown field; expected `code` (inline Python) or `archive` (a packed file or directory)",
                );
            }
        }
        Some(_) => problems.add("source", "must be a mapping with `code` or `archive`"),
        None => {}
    }
    if let Some(Value::Number(number)) = object.get("python_version") {
        problems.add(
            "python_version",
            format!("must be a string such as \"3.11\", not the number {number} (quote it: YAML reads 3.10 as 3.1)"),
        );
    }
    problems.finish()?;
    serde_path_to_error::deserialize::<_, SpecInput>(spec).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { String::new() } else { path };
        Invalid::field(field, error.inner().to_string())
    })
}

/// `3` or `3.N`: what an environment could later provide.
fn valid_python_version(version: &str) -> bool {
    let mut parts = version.split('.');
    let major_ok = parts.next() == Some("3");
    let minor_ok = match parts.next() {
        None => true,
        Some(minor) => {
            !minor.is_empty() && minor.len() <= 3 && minor.bytes().all(|b| b.is_ascii_digit())
        }
    };
    major_ok && minor_ok && parts.next().is_none()
}

/// Validates a submitted spec and returns its normalized form. See the module documentation.
pub(crate) fn normalize(
    spec: &Value,
    config: &PythonConfig,
    inspector: &dyn HandlerInspector,
) -> Result<Value, Invalid> {
    let input = read_input(spec)?;
    let mut problems = Problems::new();

    let requirements = requirements::check_requirements(&input.requirements, &mut problems);
    if let Some(lock) = &input.lock {
        requirements::check_lock(lock, !input.requirements.is_empty(), &mut problems);
    }
    requirements::check_built(
        input.image.as_deref(),
        input.built_from.as_ref(),
        &mut problems,
    );
    if let Some(version) = &input.python_version {
        if !valid_python_version(version) {
            problems.add(
                "python_version",
                format!("{version:?} is not a Python version such as \"3\" or \"3.11\""),
            );
        }
    }
    let handler = match HandlerRef::parse(&input.handler) {
        Ok(handler) => Some(handler),
        Err(problem) => {
            problems.add("handler", problem);
            None
        }
    };
    let init_function = check_init_name(&input, &mut problems);

    let source = &input.source;
    let checked = match (&source.code, &source.archive) {
        (Some(code), None) => {
            if source.digest.is_some() {
                problems.add(
                    "source.digest",
                    "only a packed source (`archive`) has a digest",
                );
            }
            check_inline(code, handler.as_ref(), config, inspector, &mut problems)
                .map(|(signature, tree)| (Source::Code { code: code.clone() }, signature, tree))
        }
        (None, Some(archive)) => check_archive(
            archive,
            source.digest.as_deref(),
            handler.as_ref(),
            (config, inspector),
            &mut problems,
        ),
        _ => {
            problems.add(
                "source",
                "must have exactly one of `code` (inline Python) or `archive` (a packed file or directory)",
            );
            None
        }
    };
    let (Some((normalized_source, signature, tree)), Some(handler)) = (checked, handler) else {
        return Err(finish_with_problem(problems));
    };
    check_signature_usable(&handler, &signature, &mut problems);
    problems.check(params::check_names(
        &format!("handler {handler}"),
        &signature,
        &input.default_parameters,
        "default_parameters",
    ));
    let init_signature = init_function
        .as_ref()
        .and_then(|init| check_init(&tree, &handler, init, &input.init_parameters, &mut problems));
    problems.finish()?;

    let normalized = PythonSpec {
        source: normalized_source,
        handler: handler.to_string(),
        requirements,
        python_version: input.python_version,
        default_parameters: input.default_parameters,
        init_function,
        init_parameters: input.init_parameters,
        signature,
        init_signature,
        lock: input.lock,
        image: input.image,
        built_from: input.built_from,
    };
    serde_json::to_value(&normalized)
        .map_err(|error| Invalid::field("", format!("cannot be stored: {error}")))
}

/// `Problems` that are known to hold at least one problem, as an `Invalid`.
fn finish_with_problem(problems: Problems) -> Invalid {
    match problems.finish() {
        Err(invalid) => invalid,
        Ok(()) => Invalid::field("", "is invalid"),
    }
}

/// Inline code: size, syntax, and the handler in module `main`.
fn check_inline(
    code: &str,
    handler: Option<&HandlerRef>,
    config: &PythonConfig,
    inspector: &dyn HandlerInspector,
    problems: &mut Problems,
) -> Option<(Signature, SourceTree)> {
    if code.len() > config.max_source_bytes {
        problems.add(
            "source.code",
            format!(
                "is {} bytes, more than the {} allowed",
                code.len(),
                config.max_source_bytes
            ),
        );
        return None;
    }
    let files = vec![SourceFile {
        path: "main.py".to_string(),
        mode: 0o644,
        contents: strip_bom(code).as_bytes().to_vec(),
    }];
    let tree = inspect_or_report(files, config, inspector, "source.code", problems)?;
    let handler = match handler {
        Some(handler) if handler.module == MAIN_MODULE => handler,
        other => {
            if let Some((_, problem)) = tree.syntax_problems().next() {
                problems.add("source.code", problem.to_string());
            } else if let Some(handler) = other {
                problems.add(
                    "handler",
                    format!(
                        "inline code is the module `main`: name the handler `{0}` or `main:{0}` (or pack files to use other modules)",
                        handler.function
                    ),
                );
            }
            return None;
        }
    };
    match tree.find_handler(handler) {
        Ok(signature) => Some((signature, tree)),
        Err(HandlerError::Syntax { problem, .. }) => {
            problems.add("source.code", problem.to_string());
            None
        }
        Err(HandlerError::Lookup(problem)) => {
            problems.add("handler", problem);
            None
        }
    }
}

/// Reads the source's Python files with the function's interpreter; `None` when that failed
/// (a problem of `field`, the whole source).
fn inspect_or_report(
    files: Vec<SourceFile>,
    config: &PythonConfig,
    inspector: &dyn HandlerInspector,
    field: &str,
    problems: &mut Problems,
) -> Option<SourceTree> {
    match SourceTree::inspect(files, inspector, &config.interpreter) {
        Ok(tree) => Some(tree),
        Err(error) => {
            problems.add(field, format!("could not be checked: {error}"));
            None
        }
    }
}

/// A packed source: safe to unpack, matching its digest if one is given, every `.py` file
/// parses, and the handler is found. `None` when a problem was added.
fn check_archive(
    archive: &str,
    digest: Option<&str>,
    handler: Option<&HandlerRef>,
    (config, inspector): (&PythonConfig, &dyn HandlerInspector),
    problems: &mut Problems,
) -> Option<(Source, Signature, SourceTree)> {
    let files = match archive::unpack(archive, config.max_source_bytes) {
        Ok(files) => files,
        Err(error) => {
            problems.add("source.archive", error.to_string());
            return None;
        }
    };
    let computed = archive::digest(&files);
    if let Some(given) = digest {
        if given != computed {
            problems.add(
                "source.digest",
                format!("{given} does not match the archive's files, which hash to {computed}"),
            );
        }
    }
    let source = Source::Archive {
        archive: archive::clean_base64(archive).into_owned(),
        digest: computed,
    };
    let tree = inspect_or_report(files, config, inspector, "source.archive", problems)?;
    // The handler's own module's problem is reported by its lookup, every other file's here.
    let handler_file = handler.and_then(|handler| tree.module_file(&handler.module));
    let failed = report_syntax_problems(&tree, handler_file, problems);
    let signature = match handler.map(|handler| tree.find_handler(handler)) {
        Some(Ok(signature)) => Some(signature),
        Some(Err(HandlerError::Syntax { path, problem })) => {
            if !failed.contains(&path) {
                problems.add("source.archive", format!("{path}, {problem}"));
            }
            None
        }
        Some(Err(HandlerError::Lookup(problem))) => {
            problems.add("handler", problem);
            None
        }
        None => None,
    };
    let signature = signature.filter(|_| failed.is_empty())?;
    Some((source, signature, tree))
}

/// Reports the syntax problems of a packed source's Python files but `skip`, and returns the
/// files that have one.
fn report_syntax_problems(
    tree: &SourceTree,
    skip: Option<&str>,
    problems: &mut Problems,
) -> Vec<String> {
    let mut failed = Vec::new();
    for (path, problem) in tree
        .syntax_problems()
        .filter(|(path, _)| Some(*path) != skip)
    {
        if failed.len() < MAX_SYNTAX_ERRORS {
            problems.add("source.archive", format!("{path}, {problem}"));
        }
        failed.push(path.to_string());
    }
    if failed.len() > MAX_SYNTAX_ERRORS {
        problems.add(
            "source.archive",
            format!(
                "... and {} more files with syntax errors",
                failed.len() - MAX_SYNTAX_ERRORS
            ),
        );
    }
    failed
}

/// `init_function`: a bare function name, and only with `init_parameters` when set.
fn check_init_name(input: &SpecInput, problems: &mut Problems) -> Option<String> {
    match &input.init_function {
        Some(name) if is_identifier(name) => Some(name.clone()),
        Some(name) => {
            problems.add(
                "init_function",
                format!("{name:?} is not a function name: name a top-level function of the handler's module, such as `load`"),
            );
            None
        }
        None => {
            if !input.init_parameters.is_empty() {
                problems.add(
                    "init_parameters",
                    "is only used with `init_function`, which is not set",
                );
            }
            None
        }
    }
}

/// Finds `init` in the handler's module and checks it can be called as
/// `init(context, **init_parameters)`. `None` when a problem was added.
fn check_init(
    tree: &SourceTree,
    handler: &HandlerRef,
    init: &str,
    init_parameters: &Map<String, Value>,
    problems: &mut Problems,
) -> Option<Signature> {
    let init = HandlerRef {
        module: handler.module.clone(),
        function: init.to_string(),
    };
    let signature = match tree.find_handler(&init) {
        Ok(signature) => signature,
        Err(error) => {
            problems.add("init_function", error.to_string());
            return None;
        }
    };
    let label = format!("init function {init}");
    serve::check_init_usable(&label, &signature, problems);
    problems.check(params::check_names(
        &label,
        &serve::init_keywords(&signature),
        init_parameters,
        "init_parameters",
    ));
    Some(signature)
}

/// A handler whose required parameter is positional-only could never be called by name.
fn check_signature_usable(handler: &HandlerRef, signature: &Signature, problems: &mut Problems) {
    for parameter in &signature.parameters {
        if parameter.kind == ParameterKind::PositionalOnly && !parameter.has_default {
            problems.add(
                "handler",
                format!(
                    "{handler} ({}) has the positional-only parameter {} without a default; runplane passes parameters by name, so it could never be given",
                    signature.defined_at, parameter.name
                ),
            );
        }
    }
}

/// What a version's content hash covers: the normalized spec without what is derived from it
/// (`signature`, `init_signature`: a newer runplane may read them differently; `lock`: resolved
/// from `requirements` once, so the same spec applied again is the same version) and without a
/// packed source's bytes (only its `digest`, so that the same files packed twice make the same
/// version).
pub(crate) fn hash_input(normalized: &Value) -> Value {
    let mut value = normalized.clone();
    if let Some(object) = value.as_object_mut() {
        object.remove("signature");
        object.remove("init_signature");
        object.remove("lock");
        if let Some(source) = object.get_mut("source").and_then(Value::as_object_mut) {
            if source.contains_key("digest") {
                source.remove("archive");
            }
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::super::inspect::interpreter::inspector;
    use super::*;
    use crate::archive::tests::{b64, tar_gz, Item};
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use proptest::prelude::*;
    use serde_json::json;

    fn config() -> PythonConfig {
        PythonConfig::default()
    }

    /// Normalizes with the real interpreter reading the code.
    fn normalize(spec: &Value, config: &PythonConfig) -> Result<Value, Invalid> {
        super::normalize(spec, config, &inspector())
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

    const HELLO: &str = "def handler(name='world'):\n    return {'greeting': 'hello ' + name}\n";

    #[test]
    fn normalizes_inline_code() {
        let spec = json!({"source": {"code": HELLO}, "handler": "handler", "requirements": []});
        let normalized = normalize(&spec, &config()).unwrap();
        assert_eq!(normalized["handler"], "main:handler");
        assert_eq!(normalized["source"], json!({"code": HELLO}));
        assert!(normalized.get("requirements").is_none());
        assert_eq!(normalized["signature"]["parameters"][0]["name"], "name");
        let parsed = PythonSpec::from_value(&normalized).unwrap();
        assert_eq!(parsed.handler_parts(), ("main", "handler"));

        // The normalized spec is itself a valid spec, and normalizes to itself.
        assert_eq!(normalize(&normalized, &config()).unwrap(), normalized);
        // `handler` and `main:handler` are the same version.
        let explicit = json!({"source": {"code": HELLO}, "handler": "main:handler"});
        assert_eq!(normalize(&explicit, &config()).unwrap(), normalized);
    }

    #[test]
    fn stored_specs_are_read_strictly() {
        let normalized = normalize(
            &json!({"source": {"code": HELLO}, "handler": "handler"}),
            &config(),
        )
        .unwrap();
        let mut mixed = normalized.clone();
        mixed["source"]["digest"] = json!("sha256:00");
        assert!(PythonSpec::from_value(&mixed).is_err());
        let mut extra = normalized.clone();
        extra["registry"] = json!("x");
        assert!(PythonSpec::from_value(&extra)
            .unwrap_err()
            .contains("registry"));
        let mut bad_lock = normalized.clone();
        bad_lock["lock"] = json!({"text": "six==1", "hash": "00", "extra": 1});
        assert!(PythonSpec::from_value(&bad_lock)
            .unwrap_err()
            .contains("lock"));
        assert!(PythonSpec::from_value(&json!({"handler": 1})).is_err());
    }

    /// A large source is parsed in reasonable time (every `.py` file is parsed at apply).
    #[test]
    fn a_large_source_normalizes() {
        let mut code = String::from("def handler(n=1):\n    return n\n");
        for i in 0..5_000 {
            code.push_str(&format!("def f{i}(a, b=2, *c, **d):\n    x = [a, b, {{'k': (c, d)}}]\n    return x[0] + {i}\n\n"));
        }
        let started = std::time::Instant::now();
        normalize(
            &json!({"source": {"code": code}, "handler": "handler"}),
            &config(),
        )
        .unwrap();
        eprintln!("{} bytes normalized in {:?}", code.len(), started.elapsed());
    }

    #[test]
    fn names_each_bad_field() {
        let cases = [
            (json!("code"), ""),
            (json!({"source": {"code": HELLO}}), "handler"),
            (json!({"handler": "handler"}), "source"),
            (
                json!({"source": {"code": HELLO}, "handler": "handler", "image": ""}),
                "image",
            ),
            (
                json!({"source": {"code": HELLO, "file": "a.py"}, "handler": "handler"}),
                "source.file",
            ),
            (
                json!({"source": "def f(): pass", "handler": "handler"}),
                "source",
            ),
            (
                json!({"source": {"code": 3}, "handler": "handler"}),
                "source.code",
            ),
            (json!({"source": {"code": HELLO}, "handler": 7}), "handler"),
            (
                json!({"source": {"code": HELLO}, "handler": "handler", "requirements": "numpy"}),
                "requirements",
            ),
            (
                json!({"source": {"code": HELLO}, "handler": "handler", "requirements": ["numpy", "-r x"]}),
                "requirements[1]",
            ),
            (
                json!({"source": {"code": HELLO}, "handler": "handler", "requirements": ["numpy", 3]}),
                "requirements[1]",
            ),
            (
                json!({"source": {"code": HELLO}, "handler": "handler", "requirements": ["six"], "lock": {"text": "six==1"}}),
                "lock",
            ),
            (
                json!({"source": {"code": HELLO}, "handler": "handler", "requirements": ["six"], "lock": {"text": "six==1", "hash": 1}}),
                "lock.hash",
            ),
            (
                json!({"source": {"code": HELLO}, "handler": "handler", "requirements": ["six"], "lock": {"text": "six==1", "hash": "ab"}}),
                "lock.hash",
            ),
            (
                json!({"source": {"code": HELLO}, "handler": "handler", "built_from": {"version": "a", "run": "b"}}),
                "built_from",
            ),
            (
                json!({"source": {"code": HELLO}, "handler": "handler", "image": "i", "built_from": {"version": "a"}}),
                "built_from",
            ),
            (
                json!({"source": {"code": HELLO}, "handler": "handler", "python_version": 3.1}),
                "python_version",
            ),
            (
                json!({"source": {"code": HELLO}, "handler": "handler", "python_version": "2.7"}),
                "python_version",
            ),
            (
                json!({"source": {"code": HELLO}, "handler": "handler", "default_parameters": []}),
                "default_parameters",
            ),
            (
                json!({"source": {"code": HELLO}, "handler": "handler", "default_parameters": {"nme": 1}}),
                "default_parameters.nme",
            ),
            (
                json!({"source": {"code": HELLO}, "handler": "handler", "default_parameters": {"context": 1}}),
                "default_parameters.context",
            ),
            (json!({"source": {}, "handler": "handler"}), "source"),
            (
                json!({"source": {"code": HELLO, "archive": "x"}, "handler": "handler"}),
                "source",
            ),
            (
                json!({"source": {"code": HELLO, "digest": "sha256:00"}, "handler": "handler"}),
                "source.digest",
            ),
            (
                json!({"source": {"code": HELLO}, "handler": "mod:handler"}),
                "handler",
            ),
            (
                json!({"source": {"code": HELLO}, "handler": "nothere"}),
                "handler",
            ),
            (
                json!({"source": {"code": HELLO}, "handler": "not valid"}),
                "handler",
            ),
            (
                json!({"source": {"code": "def handler(:\n"}, "handler": "handler"}),
                "source.code",
            ),
            (
                json!({"source": {"archive": "%%%"}, "handler": "handler"}),
                "source.archive",
            ),
        ];
        for (spec, field) in cases {
            let (got, problem) = only_field(normalize(&spec, &config()));
            assert_eq!(got, field, "{spec} → {problem}");
            assert!(!problem.is_empty());
        }
    }

    #[test]
    fn reports_every_problem_at_once() {
        let spec = json!({"source": {"code": HELLO}, "handler": "bad handler", "requirements": ["x"], "extra": 1});
        let got: Vec<String> = fields(normalize(&spec, &config()))
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(got, ["extra"]); // structure first
        let spec = json!({"source": {"code": HELLO}, "handler": "bad handler", "requirements": ["-e ."], "python_version": "4"});
        let got: Vec<String> = fields(normalize(&spec, &config()))
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(got, ["requirements[0]", "python_version", "handler"]);
    }

    #[test]
    fn messages_say_what_to_do() {
        let spec = json!({"source": {"code": HELLO}, "handler": "handler", "requirements": ["--index-url=http://x"]});
        let (_, problem) = only_field(normalize(&spec, &config()));
        assert!(
            problem.contains("is a pip option") && problem.contains("`requests>=2`"),
            "{problem}"
        );

        let spec = json!({"source": {"code": "x = 1\ny = )\ndef handler():\n    pass\n"}, "handler": "handler"});
        let (_, problem) = only_field(normalize(&spec, &config()));
        assert!(problem.starts_with("line 2, column "), "{problem}");

        let spec = json!({"source": {"code": HELLO}, "handler": "handler", "default_parameters": {"nme": 1}});
        let (_, problem) = only_field(normalize(&spec, &config()));
        assert_eq!(
            problem,
            "handler main:handler does not accept a parameter nme (it takes: name)"
        );

        let spec =
            json!({"source": {"code": "def handler(a, /, b):\n    pass\n"}, "handler": "handler"});
        let (field, problem) = only_field(normalize(&spec, &config()));
        assert_eq!(field, "handler");
        assert!(problem.contains("positional-only parameter a"), "{problem}");
    }

    #[test]
    fn accepts_versions_and_defaults() {
        for version in ["3", "3.8", "3.11", "3.100"] {
            let spec =
                json!({"source": {"code": HELLO}, "handler": "handler", "python_version": version});
            assert_eq!(
                normalize(&spec, &config()).unwrap()["python_version"],
                version
            );
        }
        let spec = json!({"source": {"code": HELLO}, "handler": "handler", "default_parameters": {"name": "you"}});
        assert_eq!(
            normalize(&spec, &config()).unwrap()["default_parameters"],
            json!({"name": "you"})
        );
        let spec = json!({"source": {"code": "def handler(**kw):\n    pass\n"}, "handler": "handler", "default_parameters": {"x": 1}});
        assert!(normalize(&spec, &config()).is_ok());
    }

    #[test]
    fn inline_code_over_the_limit_is_refused() {
        let small = PythonConfig {
            max_source_bytes: 10,
            ..config()
        };
        let (field, problem) = only_field(normalize(
            &json!({"source": {"code": HELLO}, "handler": "handler"}),
            &small,
        ));
        assert_eq!(field, "source.code");
        assert!(problem.contains("more than the 10 allowed"), "{problem}");
    }

    #[test]
    fn normalizes_packed_sources() {
        let archive = b64(&[
            Item::File("app/__init__.py", 0o644, b""),
            Item::File(
                "app/jobs.py",
                0o644,
                b"def train(epochs, context=None):\n    pass\n",
            ),
            Item::File("README.md", 0o644, b"# not python"),
        ]);
        let spec = json!({"source": {"archive": archive}, "handler": "app.jobs:train"});
        let normalized = normalize(&spec, &config()).unwrap();
        let digest = normalized["source"]["digest"].as_str().unwrap().to_string();
        assert!(digest.starts_with("sha256:"));
        assert_eq!(normalized["source"]["archive"], archive);
        assert_eq!(normalized["signature"]["defined_at"], "app/jobs.py:1");
        assert_eq!(normalized["signature"]["takes_context"], true);
        assert_eq!(normalize(&normalized, &config()).unwrap(), normalized);

        let wrong = json!({"source": {"archive": archive, "digest": "sha256:1234"}, "handler": "app.jobs:train"});
        let (field, problem) = only_field(normalize(&wrong, &config()));
        assert_eq!(field, "source.digest");
        assert!(problem.contains(&digest), "{problem}");
    }

    #[test]
    fn packed_syntax_errors_name_the_file() {
        let archive = b64(&[
            Item::File("main.py", 0o644, b"def handler():\n    pass\n"),
            Item::File("lib/broken.py", 0o644, b"x = (\n"),
            Item::File(
                "lib/latin1.py",
                0o644,
                b"# -*- coding: latin-1 -*-\nx = '\xe9'\n",
            ),
        ]);
        let spec = json!({"source": {"archive": archive}, "handler": "handler"});
        let (field, problem) = only_field(normalize(&spec, &config()));
        assert_eq!(field, "source.archive");
        assert!(problem.starts_with("lib/broken.py, line "), "{problem}");

        // The handler's own module (parsed by the lookup) and a module it imports from.
        let archive = b64(&[
            Item::File("main.py", 0o644, b"from lib import handler\nx = (\n"),
            Item::File("lib.py", 0o644, b"def handler(:\n"),
        ]);
        let spec = json!({"source": {"archive": archive}, "handler": "handler"});
        let got = fields(normalize(&spec, &config()));
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.iter().all(|(field, _)| field == "source.archive"));
        assert!(got[0].1.starts_with("lib.py, line 1"), "{got:?}");
        assert!(got[1].1.starts_with("main.py, line "), "{got:?}");
    }

    #[test]
    fn packed_handlers_must_exist() {
        let archive = b64(&[Item::File("tool.py", 0o644, b"def handler():\n    pass\n")]);
        let spec = json!({"source": {"archive": archive}, "handler": "handler"});
        let (field, problem) = only_field(normalize(&spec, &config()));
        assert_eq!(field, "handler");
        assert!(
            problem.contains("module main is not in the source") && problem.contains("tool"),
            "{problem}"
        );
        let spec = json!({"source": {"archive": archive}, "handler": "tool:handler"});
        assert!(normalize(&spec, &config()).is_ok());
    }

    #[test]
    fn unsafe_archives_are_refused_on_source_archive() {
        for item in [
            Item::File("../evil.py", 0o644, b"x"),
            Item::File("/abs.py", 0o644, b"x"),
            Item::Symlink("link.py", "/etc/passwd"),
        ] {
            let archive = b64(&[
                Item::File("main.py", 0o644, b"def handler():\n    pass\n"),
                item,
            ]);
            let spec = json!({"source": {"archive": archive}, "handler": "handler"});
            assert_eq!(only_field(normalize(&spec, &config())).0, "source.archive");
        }
    }

    const SERVED: &str = "def load(context, path, scale=1):\n    pass\n\ndef predict(request, context=None):\n    return 1\n";

    #[test]
    fn normalizes_init_functions() {
        let spec = json!({"source": {"code": SERVED}, "handler": "predict", "init_function": "load", "init_parameters": {"path": "/m"}});
        let normalized = normalize(&spec, &config()).unwrap();
        assert_eq!(normalized["init_function"], "load");
        assert_eq!(normalized["init_parameters"], json!({"path": "/m"}));
        assert_eq!(normalized["init_signature"]["defined_at"], "main.py:1");
        assert_eq!(
            normalized["init_signature"]["parameters"][1]["name"],
            "path"
        );
        // Idempotent, and what is derived is not hashed.
        assert_eq!(normalize(&normalized, &config()).unwrap(), normalized);
        assert!(hash_input(&normalized).get("init_signature").is_none());
        assert_eq!(hash_input(&normalized)["init_function"], "load");
        // Without an init function, nothing of it is stored.
        let plain = normalize(
            &json!({"source": {"code": SERVED}, "handler": "predict"}),
            &config(),
        )
        .unwrap();
        for field in ["init_function", "init_parameters", "init_signature"] {
            assert!(plain.get(field).is_none(), "{field}");
        }
        let parsed = PythonSpec::from_value(&plain).unwrap();
        assert_eq!((parsed.init_function, parsed.init_signature), (None, None));
    }

    #[test]
    fn init_functions_are_found_through_imports() {
        let archive = b64(&[
            Item::File(
                "app/__init__.py",
                0o644,
                b"from .model import load, predict\n",
            ),
            Item::File(
                "app/model.py",
                0o644,
                b"async def load(ctx, *, size):\n    pass\n\ndef predict(request):\n    pass\n",
            ),
        ]);
        let spec = json!({"source": {"archive": archive}, "handler": "app:predict", "init_function": "load", "init_parameters": {"size": 3}});
        let normalized = normalize(&spec, &config()).unwrap();
        assert_eq!(normalized["init_signature"]["defined_at"], "app/model.py:1");
        assert_eq!(normalized["init_signature"]["is_async"], true);
        assert_eq!(normalize(&normalized, &config()).unwrap(), normalized);
    }

    #[test]
    fn init_problems_name_their_fields() {
        let with = |code: &str, extra: Value| {
            let mut spec = json!({"source": {"code": code}, "handler": "predict"});
            spec.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            fields(normalize(&spec, &config()))
        };
        let cases = [
            (
                SERVED,
                json!({"init_function": "nothere"}),
                "init_function",
                "has no top-level function nothere",
            ),
            (
                SERVED,
                json!({"init_function": "main:load"}),
                "init_function",
                "is not a function name",
            ),
            (
                SERVED,
                json!({"init_function": 3}),
                "init_function",
                "expected a string",
            ),
            (
                SERVED,
                json!({"init_parameters": {"path": "/m"}}),
                "init_parameters",
                "only used with `init_function`",
            ),
            (
                SERVED,
                json!({"init_function": "load", "init_parameters": {"pth": 1}}),
                "init_parameters.pth",
                "init function main:load does not accept a parameter pth (it takes: path, scale)",
            ),
            (
                SERVED,
                json!({"init_function": "load", "init_parameters": {"context": 1}}),
                "init_parameters.context",
                "cannot be passed",
            ),
            (
                SERVED,
                json!({"init_function": "load", "init_parameters": []}),
                "init_parameters",
                "expected a map",
            ),
            (
                "def load(*, path):\n    pass\n\ndef predict(r):\n    pass\n",
                json!({"init_function": "load"}),
                "init_function",
                "takes no positional parameter",
            ),
            (
                "def load(c, p, /):\n    pass\n\ndef predict(r):\n    pass\n",
                json!({"init_function": "load"}),
                "init_function",
                "positional-only parameter p",
            ),
            (
                "load = 1\n\ndef predict(r):\n    pass\n",
                json!({"init_function": "load"}),
                "init_function",
                "a variable",
            ),
        ];
        for (code, extra, field, problem) in cases {
            let got = with(code, extra.clone());
            assert_eq!(got.len(), 1, "{extra} → {got:?}");
            assert_eq!(got[0].0, field, "{extra} → {got:?}");
            assert!(got[0].1.contains(problem), "{extra} → {got:?}");
        }
        // A stored spec is read strictly.
        let normalized = normalize(
            &json!({"source": {"code": SERVED}, "handler": "predict", "init_function": "load"}),
            &config(),
        )
        .unwrap();
        let mut broken = normalized.clone();
        broken["init_signature"] = json!({"x": 1});
        assert!(PythonSpec::from_value(&broken)
            .unwrap_err()
            .contains("init_signature"));
    }

    #[test]
    fn hash_input_ignores_archive_bytes_and_signature() {
        let files = [
            Item::File("main.py", 0o644, b"def handler():\n    pass\n"),
            Item::File("util.py", 0o644, b"X = 1\n"),
        ];
        let one = STANDARD.encode(tar_gz(&files, 1));
        let two = STANDARD.encode(tar_gz(
            &[
                Item::File("util.py", 0o644, b"X = 1\n"),
                Item::File("./main.py", 0o644, b"def handler():\n    pass\n"),
            ],
            99,
        ));
        assert_ne!(one, two);
        let normalized = |archive: &str| {
            normalize(
                &json!({"source": {"archive": archive}, "handler": "handler"}),
                &config(),
            )
            .unwrap()
        };
        let (a, b) = (normalized(&one), normalized(&two));
        assert_ne!(a, b);
        assert_eq!(hash_input(&a), hash_input(&b));
        assert!(hash_input(&a).get("signature").is_none());
        assert!(hash_input(&a)["source"].get("archive").is_none());

        let inline = normalize(
            &json!({"source": {"code": HELLO}, "handler": "handler"}),
            &config(),
        )
        .unwrap();
        assert_eq!(hash_input(&inline)["source"]["code"], HELLO);
    }

    const SIX_LOCK: &str = "six==1.17.0\n    # via -r requirements.in\n";

    fn locked() -> Value {
        let spec = normalize(
            &json!({"source": {"code": HELLO}, "handler": "handler", "requirements": [" six==1.17.0 "], "python_version": "3.11"}),
            &config(),
        )
        .unwrap();
        let mut locked = spec.clone();
        locked["lock"] = json!({"text": SIX_LOCK, "hash": requirements::lock_hash(SIX_LOCK)});
        locked
    }

    #[test]
    fn requirements_are_kept_and_locks_are_not_hashed() {
        let locked = locked();
        assert_eq!(locked["requirements"], json!(["six==1.17.0"]));
        // A stored spec with its lock normalizes to itself, lock included.
        assert_eq!(normalize(&locked, &config()).unwrap(), locked);
        let parsed = PythonSpec::from_value(&locked).unwrap();
        assert_eq!(parsed.lock.unwrap().text, SIX_LOCK);
        // The lock is not part of the version: the same spec without it hashes the same.
        let mut unlocked = locked.clone();
        unlocked.as_object_mut().unwrap().remove("lock");
        assert_eq!(hash_input(&locked), hash_input(&unlocked));
        assert!(hash_input(&locked).get("lock").is_none());
        // ...but requirements are.
        let mut other = unlocked.clone();
        other["requirements"] = json!(["six==1.16.0"]);
        assert_ne!(hash_input(&other), hash_input(&unlocked));

        // A lock whose text was changed after hashing is refused.
        let mut tampered = locked.clone();
        tampered["lock"]["text"] = json!("six==1.16.0\n");
        let (field, problem) = only_field(normalize(&tampered, &config()));
        assert_eq!(field, "lock.hash");
        assert!(problem.contains("does not match lock.text"), "{problem}");
    }

    #[test]
    fn built_versions_are_versions_of_their_own() {
        let source = locked();
        let mut built = source.clone();
        built["image"] = json!("localhost/runplane/demo-hello:0123456789ab-000000000001");
        built["built_from"] =
            json!({"version": "0123456789abcdef", "run": "0190d7a8-0000-7000-8000-000000000001"});
        assert_eq!(normalize(&built, &config()).unwrap(), built);
        assert_ne!(hash_input(&built), hash_input(&source));
        assert_eq!(hash_input(&built)["image"], built["image"]);
        assert_eq!(hash_input(&built)["built_from"], built["built_from"]);
        let parsed = PythonSpec::from_value(&built).unwrap();
        assert_eq!(parsed.built_from.unwrap().version, "0123456789abcdef");
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,20}".prop_map(Value::String),
            prop::sample::select(vec![
                "source",
                "code",
                "archive",
                "handler",
                "digest",
                "requirements",
                "default_parameters",
                "signature",
                "main:handler",
                "handler",
                "H4sIAAAAAAAA"
            ])
            .prop_map(|s| Value::String(s.to_string())),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(vec![
                        "source",
                        "code",
                        "archive",
                        "digest",
                        "handler",
                        "requirements",
                        "python_version",
                        "default_parameters",
                        "signature",
                        "lock",
                        "text",
                        "hash",
                        "image",
                        "built_from",
                        "x"
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

    /// Python-ish text: fragments that stress the lexer and parser more than random characters.
    fn python_like() -> impl Strategy<Value = String> {
        let fragment = prop::sample::select(vec![
            "def ",
            "async def ",
            "handler",
            "(",
            ")",
            "[",
            "]",
            "{",
            "}",
            ":",
            ",",
            "=",
            "*",
            "**",
            "/",
            "\n",
            "    ",
            "\t",
            "lambda",
            "f'",
            "{x}",
            "'",
            "\"\"\"",
            "\\",
            "#",
            "if ",
            "elif ",
            "else",
            "return ",
            "1",
            "0x",
            "1e",
            "é",
            "\u{feff}",
            "\r",
            "@",
            "context",
            "not ",
            "-",
            ".",
            "match ",
            "case ",
            "type ",
            "yield",
        ]);
        prop::collection::vec(fragment, 0..60).prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn normalize_never_panics_on_arbitrary_json(spec in arbitrary_json()) {
            let _ = normalize(&spec, &config());
        }

        #[test]
        fn normalize_never_panics_on_arbitrary_code(code in "\\PC{0,200}", handler in "[a-z_:. ]{0,12}") {
            let _ = normalize(&json!({"source": {"code": code}, "handler": handler}), &config());
        }

        #[test]
        fn normalize_never_panics_on_python_like_code(code in python_like()) {
            let _ = normalize(&json!({"source": {"code": code}, "handler": "handler"}), &config());
        }

        #[test]
        fn normalize_never_panics_on_arbitrary_archives(bytes in prop::collection::vec(any::<u8>(), 0..600), gzip in any::<bool>()) {
            let bytes = if gzip {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut gz, &bytes).unwrap();
                gz.finish().unwrap()
            } else {
                bytes
            };
            let spec = json!({"source": {"archive": STANDARD.encode(bytes)}, "handler": "handler"});
            let _ = normalize(&spec, &config());
        }
    }
}
