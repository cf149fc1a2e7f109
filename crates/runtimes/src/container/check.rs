//! What a run needs of the function and of its parameters, per action (`validate_run`), and
//! how parameters reach the container: as environment variables `RUNPLANE_PARAM_<NAME>`.

use super::spec::{is_identifier, ContainerSpec};
use super::{BUILD, SERVE};
use runplane_domain::invalid::Problems;
use runplane_domain::Invalid;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The prefix of the environment variable of each run parameter.
pub const PARAM_PREFIX: &str = "RUNPLANE_PARAM_";
/// Longest value one environment variable may hold (Linux's `MAX_ARG_STRLEN`).
const MAX_ENV_VALUE_BYTES: usize = 128 * 1024;

/// Run time: see the module documentation. Field paths are relative to the run request.
pub(crate) fn check_run(
    spec: &ContainerSpec,
    action: &str,
    parameters: &Map<String, Value>,
) -> Result<(), Invalid> {
    let mut problems = Problems::new();
    if action == BUILD {
        if spec.build.is_none() {
            problems.add(
                "action",
                "the function has no `build` (a Containerfile) to build",
            );
        }
        for name in parameters.keys() {
            problems.add(
                format!("parameters.{name}"),
                "a build takes no parameters (its Containerfile and context are the function's)",
            );
        }
        return problems.finish();
    }
    if spec.image.is_none() {
        problems.add(
            "image",
            format!("the function has no image yet: run its build first (runplane run NAME --action build), which makes a version with one; a {action} run needs it"),
        );
    }
    if spec.command.is_empty() {
        problems.add(
            "command",
            format!("the function has no `command`: a {action} run needs the program to start in the image (its argv)"),
        );
    }
    if action == SERVE && spec.port.is_none() {
        problems.add(
            "port",
            "the function has no `port`: serve needs the port its container listens on (set `port` in the function's spec, or use action deploy for a worker that serves nothing)",
        );
    }
    problems.check(param_env(parameters).map(|_| ()));
    problems.finish()
}

/// Each parameter as `RUNPLANE_PARAM_<NAME uppercased>`: strings as they are, anything else as
/// its JSON text. Names must be identifiers that stay distinct once uppercased.
pub(crate) fn param_env(
    parameters: &Map<String, Value>,
) -> Result<BTreeMap<String, String>, Invalid> {
    let mut problems = Problems::new();
    let mut env = BTreeMap::new();
    let mut owners: BTreeMap<String, &str> = BTreeMap::new();
    for (name, value) in parameters {
        let field = format!("parameters.{name}");
        if !is_identifier(name) {
            problems.add(
                field,
                format!("{name:?} cannot name an environment variable ({PARAM_PREFIX}<NAME>): use letters, digits and _, not starting with a digit"),
            );
            continue;
        }
        let variable = format!("{PARAM_PREFIX}{}", name.to_ascii_uppercase());
        if let Some(other) = owners.get(&variable) {
            problems.add(
                field,
                format!("becomes the same variable {variable} as the parameter {other}"),
            );
            continue;
        }
        let text = match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        if text.contains('\0') {
            problems.add(field, "must not contain a NUL character");
            continue;
        }
        if text.len() > MAX_ENV_VALUE_BYTES {
            problems.add(
                field,
                format!(
                    "is {} bytes, more than the {MAX_ENV_VALUE_BYTES} an environment variable can hold",
                    text.len()
                ),
            );
            continue;
        }
        owners.insert(variable.clone(), name);
        env.insert(variable, text);
    }
    problems.finish().map(|()| env)
}

#[cfg(test)]
mod tests {
    use super::super::runnable::tests::busybox;
    use super::super::ContainerRuntime;
    use crate::Runtime;
    use serde_json::{json, Value};

    fn problems(spec: Value, action: &str, parameters: Value) -> Vec<(String, String)> {
        let runtime = ContainerRuntime::default();
        let function = runtime.normalize_function(&spec).unwrap();
        let parameters = parameters.as_object().cloned().unwrap_or_default();
        match runtime.validate_run(&function, action, &parameters) {
            Ok(()) => Vec::new(),
            Err(invalid) => invalid
                .0
                .into_iter()
                .map(|e| (e.field, e.problem))
                .collect(),
        }
    }

    fn fields(problems: &[(String, String)]) -> Vec<&str> {
        problems.iter().map(|(f, _)| f.as_str()).collect()
    }

    #[test]
    fn runs_of_each_action_need_what_they_use() {
        let plain = busybox(json!({}));
        for action in ["job", "deploy"] {
            assert!(problems(plain.clone(), action, json!({})).is_empty());
        }
        let got = problems(plain.clone(), "serve", json!({}));
        assert_eq!(fields(&got), ["port"]);
        assert!(got[0].1.contains("deploy"), "{}", got[0].1);
        assert!(problems(busybox(json!({"port": 8080})), "serve", json!({})).is_empty());

        let got = problems(plain.clone(), "build", json!({}));
        assert_eq!(fields(&got), ["action"]);
        assert!(got[0].1.contains("no `build`"), "{}", got[0].1);

        let build_only = json!({"build": {"containerfile": "FROM x\n"}});
        assert!(problems(build_only.clone(), "build", json!({})).is_empty());
        let got = problems(build_only.clone(), "job", json!({}));
        assert_eq!(fields(&got), ["image", "command"]);
        assert!(got[0].1.contains("--action build"), "{}", got[0].1);
        let got = problems(build_only, "serve", json!({}));
        assert_eq!(fields(&got), ["image", "command", "port"]);

        let got = problems(plain.clone(), "train", json!({}));
        assert_eq!(fields(&got), ["action"]);
        assert!(
            got[0].1.contains("job, deploy, serve, build"),
            "{}",
            got[0].1
        );

        let runtime = ContainerRuntime::default();
        let error = runtime
            .validate_run(&json!({"handler": "x"}), "job", &Default::default())
            .unwrap_err();
        assert_eq!(error.0[0].field, "function");
    }

    #[test]
    fn parameters_must_name_environment_variables() {
        let spec = busybox(json!({}));
        assert!(problems(
            spec.clone(),
            "job",
            json!({"n": 1, "_x": "a", "Name2": null})
        )
        .is_empty());
        let got = problems(
            spec.clone(),
            "job",
            json!({"2x": 1, "a-b": 1, "é": 1, "ok": 1, "": 1}),
        );
        let mut names = fields(&got);
        names.sort();
        assert_eq!(
            names,
            [
                "parameters.",
                "parameters.2x",
                "parameters.a-b",
                "parameters.é"
            ]
        );
        assert!(
            got.iter().all(|(_, p)| p.contains("RUNPLANE_PARAM_")),
            "{got:?}"
        );

        // `a` and `A` would be the same variable.
        let got = problems(spec.clone(), "job", json!({"A": 1, "a": 2}));
        assert_eq!(fields(&got), ["parameters.a"]);
        assert!(got[0].1.contains("RUNPLANE_PARAM_A"), "{}", got[0].1);

        let got = problems(spec.clone(), "deploy", json!({"x": "a\u{0}b"}));
        assert_eq!(fields(&got), ["parameters.x"]);
        let got = problems(spec.clone(), "job", json!({"big": "x".repeat(200 * 1024)}));
        assert_eq!(fields(&got), ["parameters.big"]);

        let got = problems(
            json!({"build": {"containerfile": "FROM x\n"}}),
            "build",
            json!({"n": 1}),
        );
        assert_eq!(fields(&got), ["parameters.n"]);
    }
}
