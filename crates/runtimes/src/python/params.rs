//! Checking parameters against a handler's signature: a run's (at run time) and a function's
//! `default_parameters` (at apply time). Handlers are called with parameters by name, so every
//! name must be one the handler takes, and every parameter without a default must be given.

use super::signature::{Signature, CONTEXT};
use super::spec::PythonSpec;
use runplane_domain::invalid::Problems;
use runplane_domain::Invalid;
use serde_json::{Map, Value};

/// Every name in `given` is one the function accepts; problems are on `<prefix>.<name>`.
/// `subject` names the function in messages (`handler main:handler`, `init function main:load`).
pub(crate) fn check_names(
    subject: &str,
    signature: &Signature,
    given: &Map<String, Value>,
    prefix: &str,
) -> Result<(), Invalid> {
    let mut problems = Problems::new();
    for name in given.keys() {
        if name == CONTEXT {
            problems.add(
                format!("{prefix}.{name}"),
                "`context` cannot be passed: runplane gives it to handlers that declare a `context` parameter",
            );
        } else if !signature.accepts(name) {
            problems.add(
                format!("{prefix}.{name}"),
                format!(
                    "{subject} does not accept a parameter {name} (it takes: {})",
                    signature.describe_accepted()
                ),
            );
        }
    }
    problems.finish()
}

/// A run's parameters against the function: known names, and nothing required missing once
/// `default_parameters` are merged under them.
pub(crate) fn check_run(spec: &PythonSpec, parameters: &Map<String, Value>) -> Result<(), Invalid> {
    let mut problems = Problems::new();
    problems.check(check_names(
        &format!("handler {}", spec.handler),
        &spec.signature,
        parameters,
        "parameters",
    ));
    for required in spec.signature.required() {
        let name = &required.name;
        if !parameters.contains_key(name) && !spec.default_parameters.contains_key(name) {
            problems.add(
                format!("parameters.{name}"),
                format!(
                    "missing: handler {} requires it (it has no default, and the function sets none)",
                    spec.handler
                ),
            );
        }
    }
    problems.finish()
}

/// The parameters a run's handler is called with: the run's over the function's defaults.
pub(crate) fn merged(spec: &PythonSpec, parameters: &Map<String, Value>) -> Map<String, Value> {
    merged_over(&spec.default_parameters, parameters)
}

/// `parameters` over `defaults`, name by name.
pub(crate) fn merged_over(
    defaults: &Map<String, Value>,
    parameters: &Map<String, Value>,
) -> Map<String, Value> {
    let mut all = defaults.clone();
    for (name, value) in parameters {
        all.insert(name.clone(), value.clone());
    }
    all
}

#[cfg(test)]
mod tests {
    use super::super::PythonRuntime;
    use super::*;
    use crate::Runtime;
    use serde_json::json;

    fn function(code: &str, defaults: Value) -> Value {
        let spec =
            json!({"source": {"code": code}, "handler": "handler", "default_parameters": defaults});
        PythonRuntime::default().normalize_function(&spec).unwrap()
    }

    fn problems(spec: &Value, action: &str, parameters: Value) -> Vec<(String, String)> {
        let runtime = PythonRuntime::default();
        let parameters = parameters.as_object().cloned().unwrap_or_default();
        match runtime.validate_run(spec, action, &parameters) {
            Ok(()) => Vec::new(),
            Err(invalid) => invalid
                .0
                .into_iter()
                .map(|e| (e.field, e.problem))
                .collect(),
        }
    }

    #[test]
    fn accepts_what_the_handler_takes() {
        let spec = function("def handler(a, b=1, *, c, d=2):\n    pass\n", json!({}));
        assert!(problems(&spec, "job", json!({"a": 1, "c": 3})).is_empty());
        assert!(problems(&spec, "job", json!({"a": 1, "b": 2, "c": 3, "d": 4})).is_empty());
    }

    #[test]
    fn names_unknown_and_missing_parameters() {
        let spec = function("def handler(a, b):\n    pass\n", json!({}));
        assert_eq!(
            problems(&spec, "job", json!({"a": 1, "x": 2})),
            [
                ("parameters.x".to_string(), "handler main:handler does not accept a parameter x (it takes: a, b)".to_string()),
                (
                    "parameters.b".to_string(),
                    "missing: handler main:handler requires it (it has no default, and the function sets none)".to_string()
                ),
            ]
        );
        let none = function("def handler():\n    pass\n", json!({}));
        assert_eq!(
            problems(&none, "job", json!({"x": 1}))[0].1,
            "handler main:handler does not accept a parameter x (it takes: no parameters)"
        );
    }

    #[test]
    fn default_parameters_fill_required_ones() {
        let spec = function("def handler(a, b):\n    pass\n", json!({"b": 2}));
        assert!(problems(&spec, "job", json!({"a": 1})).is_empty());
        assert_eq!(problems(&spec, "job", json!({}))[0].0, "parameters.a");
    }

    #[test]
    fn kwargs_accept_any_name_but_never_context() {
        let spec = function("def handler(context, **kwargs):\n    pass\n", json!({}));
        assert!(problems(&spec, "job", json!({"anything": 1, "else": 2})).is_empty());
        let got = problems(&spec, "job", json!({"context": {}}));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "parameters.context");
        // A declared `context` is never a missing parameter.
        assert!(problems(&spec, "job", json!({})).is_empty());
    }

    #[test]
    fn other_actions_and_broken_specs_are_refused() {
        let spec = function("def handler():\n    pass\n", json!({}));
        let got = problems(&spec, "train", json!({}));
        assert_eq!(got[0].0, "action");
        assert!(
            got[0].1.contains("train") && got[0].1.contains("job, serve, build"),
            "{}",
            got[0].1
        );
        assert_eq!(
            problems(&json!({"handler": 1}), "job", json!({}))[0].0,
            "function"
        );
    }

    #[test]
    fn run_parameters_override_defaults() {
        let spec = PythonSpec::from_value(&function(
            "def handler(a=0, b=0):\n    pass\n",
            json!({"a": 1, "b": 2}),
        ))
        .unwrap();
        let run = json!({"b": 3}).as_object().cloned().unwrap();
        assert_eq!(Value::Object(merged(&spec, &run)), json!({"a": 1, "b": 3}));
    }
}
