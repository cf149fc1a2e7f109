//! The `serve` action: a `python` function kept running as an HTTP service.
//!
//! Each replica runs the embedded runner in serve mode: the working directory of a job
//! (`runner.py`, `run.json`, `src/`) plus `runner_serve.py`, the serve half of the runner, which
//! `runner.py` loads when `run.json` says `"mode": "serve"` (kept apart so that jobs do not pay
//! for compiling it). `run.json`'s keys are listed in [`service`]. The runner imports the handler's module, calls the
//! function's `init_function` once as `init(context, **parameters)` (the function's
//! `init_parameters` with the run's parameters merged over them), then answers every HTTP
//! request by calling `handler(request)` (plus `context=` when the handler declares it).
//! [`READINESS_PATH`] answers 200 once init returned; the runner keeps it for itself.
//!
//! What is checked where:
//! - apply time (`spec.rs`): `init_function` exists in the handler's module, can take the
//!   context as its first positional argument, and accepts `init_parameters` by name;
//! - run time ([`check_run`]): the handler can be called with the request alone, and the run's
//!   parameters (merged over `init_parameters`) are what the init function takes.

use super::params::{check_names, merged_over};
use super::runnable::replica_job;
use super::signature::{ParameterKind, Signature, CONTEXT};
use super::spec::PythonSpec;
use super::PythonConfig;
use crate::RuntimeError;
use runplane_domain::invalid::Problems;
use runplane_domain::{FileEntry, Invalid, Run, Service};
use serde_json::{json, Map, Value};

/// The path every replica of a python service answers 200 on once its init function returned
/// (503 before, and again once it is draining after SIGTERM). The runner answers it itself:
/// requests to it never reach the handler.
pub const READINESS_PATH: &str = "/_runplane/ready";

/// Largest JSON request body the runner decodes before calling the handler (so that malformed
/// JSON is a 400 without the handler running); larger ones are decoded on first access.
pub const MAX_JSON_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// `run.json`'s `mode` for a replica (absent for jobs, which keeps their file unchanged).
pub(crate) const SERVE_MODE: &str = "serve";
/// The serve half of the runner, embedded like `runner.py`.
pub(crate) const SERVE_RUNNER: &str = include_str!("runner_serve.py");
pub(crate) const SERVE_RUNNER_FILE: &str = "runner_serve.py";

/// Builds the service of a run whose action is `serve`.
///
/// A replica's `run.json`: `mode` (`"serve"`), `module` and `function` (the handler),
/// `context` (whether the handler declares a `context` parameter), `init_function` (a name in
/// the same module, or null), `init_parameters` (the function's `init_parameters` with the run's
/// parameters merged over them), `run_id`, `project`, `readiness_path` ([`READINESS_PATH`]) and
/// `max_json_body_bytes` ([`MAX_JSON_BODY_BYTES`]). The framework adds `RUNPLANE_LISTEN_FD` or
/// `RUNPLANE_PORT`, `RUNPLANE_REPLICA` and `RUNPLANE_OUTPUTS` to the environment.
pub(crate) fn service(run: &Run, config: &PythonConfig) -> Result<Service, RuntimeError> {
    let spec = PythonSpec::from_value(&run.spec.function_spec).map_err(RuntimeError::BadSpec)?;
    let (module, function) = spec.handler_parts();
    let run_file = json!({
        "mode": SERVE_MODE,
        "module": module,
        "function": function,
        "context": spec.signature.takes_context,
        "init_function": spec.init_function,
        "init_parameters": merged_over(&spec.init_parameters, &run.spec.parameters),
        "run_id": run.metadata.id,
        "project": run.metadata.project,
        "readiness_path": READINESS_PATH,
        "max_json_body_bytes": MAX_JSON_BODY_BYTES,
    });
    let mut replica = replica_job(run, config, &spec, &run_file)?;
    // After runner.py, before run.json: the runner's files first, as in a job.
    replica.files.insert(
        1,
        FileEntry {
            path: SERVE_RUNNER_FILE.to_string(),
            mode: 0o644,
            contents: SERVE_RUNNER.as_bytes().to_vec(),
        },
    );
    Ok(Service {
        replica,
        replicas: run.spec.settings.replicas(),
        readiness_path: READINESS_PATH.to_string(),
        ready_timeout_seconds: run.spec.settings.ready_timeout_seconds(),
        port: None,
        http: true,
    })
}

/// The parameters an init function takes by name: all but its first positional one, which
/// receives the context (`init(context, **parameters)`).
pub(crate) fn init_keywords(init: &Signature) -> Signature {
    let mut keywords = init.clone();
    if let Some(first) = keywords
        .parameters
        .iter()
        .position(|p| p.kind != ParameterKind::KeywordOnly)
    {
        keywords.parameters.remove(first);
    }
    keywords.takes_context = false;
    keywords
}

/// Apply time: an init function can be called as `init(context, **parameters)`. Problems are
/// on `init_function`.
pub(crate) fn check_init_usable(label: &str, init: &Signature, problems: &mut Problems) {
    let takes_positional = init
        .parameters
        .iter()
        .any(|p| p.kind != ParameterKind::KeywordOnly)
        || init.var_positional;
    if !takes_positional {
        problems.add(
            "init_function",
            format!(
                "{label} ({}) takes no positional parameter; runplane calls it with the context first: def {}(context, **parameters)",
                init.defined_at,
                label.rsplit(':').next().unwrap_or(label)
            ),
        );
    }
    let keywords = init_keywords(init);
    for parameter in &keywords.parameters {
        if parameter.kind == ParameterKind::PositionalOnly && !parameter.has_default {
            problems.add(
                "init_function",
                format!(
                    "{label} ({}) has the positional-only parameter {} without a default; runplane passes init parameters by name, so it could never be given",
                    init.defined_at, parameter.name
                ),
            );
        }
    }
}

/// Run time: what a serve run needs of the function and of its parameters. See the module
/// documentation.
pub(crate) fn check_run(spec: &PythonSpec, parameters: &Map<String, Value>) -> Result<(), Invalid> {
    let mut problems = Problems::new();
    check_request_handler(&spec.handler, &spec.signature, &mut problems);
    let (module, _) = spec.handler_parts();
    match (&spec.init_function, &spec.init_signature) {
        (Some(init), Some(signature)) => {
            let subject = format!("init function {module}:{init}");
            let keywords = init_keywords(signature);
            problems.check(check_names(&subject, &keywords, parameters, "parameters"));
            for required in keywords.required() {
                let name = &required.name;
                if !parameters.contains_key(name) && !spec.init_parameters.contains_key(name) {
                    problems.add(
                        format!("parameters.{name}"),
                        format!(
                            "missing: {subject} requires it (it has no default, and the function's init_parameters set none)"
                        ),
                    );
                }
            }
        }
        (Some(_), None) => problems.add(
            "init_function",
            "the function's stored spec has no init_signature; apply the function again",
        ),
        (None, _) => {
            for name in parameters.keys() {
                problems.add(
                    format!("parameters.{name}"),
                    format!(
                        "a serve run's parameters go to the function's init_function, and {} has none; set `init_function` in the function's spec, or pass no parameters",
                        spec.handler
                    ),
                );
            }
        }
    }
    problems.finish()
}

/// A serve handler is called as `handler(request)`, plus `context=` when it declares one.
fn check_request_handler(handler: &str, signature: &Signature, problems: &mut Problems) {
    let usage = "a serve handler is called with the request as its one positional argument: def handler(request, context=None)";
    let request_slot = signature
        .parameters
        .iter()
        .position(|p| p.kind != ParameterKind::KeywordOnly);
    match request_slot.map(|index| &signature.parameters[index]) {
        Some(first) if first.name == CONTEXT && first.kind != ParameterKind::PositionalOnly => {
            problems.add(
                "handler",
                format!(
                    "{handler} ({}) takes `context` first, where the request goes; {usage}",
                    signature.defined_at
                ),
            );
            return;
        }
        Some(_) => {}
        None if signature.var_positional => {}
        None => {
            problems.add(
                "handler",
                format!(
                    "{handler} ({}) takes no positional parameter; {usage}",
                    signature.defined_at
                ),
            );
            return;
        }
    }
    let others = signature
        .parameters
        .iter()
        .enumerate()
        .filter(|(index, _)| Some(*index) != request_slot);
    for (_, parameter) in others {
        let is_context =
            parameter.name == CONTEXT && parameter.kind != ParameterKind::PositionalOnly;
        if !is_context && !parameter.has_default {
            problems.add(
                "handler",
                format!(
                    "{handler} ({}) has the parameter {} without a default, which a request cannot fill; {usage}",
                    signature.defined_at, parameter.name
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::runnable::tests::run_of;
    use super::super::PythonRuntime;
    use super::*;
    use crate::Runtime;
    use runplane_domain::Runnable;

    const MODEL: &str = "MODEL = None\n\ndef load(context, path, scale=1):\n    global MODEL\n    MODEL = (path, scale)\n\ndef predict(request, context=None):\n    return {'model': MODEL}\n";

    fn serve_spec(code: &str, extra: Value) -> Value {
        let mut spec = json!({"source": {"code": code}, "handler": "predict"});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        spec
    }

    fn problems(spec: &Value, parameters: Value) -> Vec<(String, String)> {
        let runtime = PythonRuntime::default();
        let function = runtime.normalize_function(spec).unwrap();
        let parameters = parameters.as_object().cloned().unwrap_or_default();
        match runtime.validate_run(&function, "serve", &parameters) {
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
    fn a_serve_run_becomes_a_service() {
        let mut run = run_of(
            serve_spec(
                MODEL,
                json!({"init_function": "load", "init_parameters": {"path": "/m", "scale": 2}}),
            ),
            json!({"scale": 3}),
        );
        run.spec.action = "serve".into();
        run.spec.settings.replicas = Some(3);
        run.spec.settings.ready_timeout_seconds = Some(42);
        let Runnable::Service(service) = PythonRuntime::default().to_runnable(&run).unwrap() else {
            panic!("not a service");
        };
        assert_eq!(service.replicas, 3);
        assert_eq!(service.ready_timeout_seconds, 42);
        assert_eq!(service.readiness_path, "/_runplane/ready");
        let job = &service.replica;
        assert_eq!(job.command, ["/usr/bin/python3", "runner.py"]);
        assert_eq!(job.stop_grace_seconds, 7);
        assert_eq!(job.env["RUNPLANE_RUN_ID"], run.metadata.id);
        let paths: Vec<&str> = job.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["runner.py", "runner_serve.py", "run.json", "src/main.py"]
        );
        assert_eq!(job.files[1].contents, SERVE_RUNNER.as_bytes());
        let run_file: Value = serde_json::from_slice(&job.files[2].contents).unwrap();
        assert_eq!(
            run_file,
            json!({
                "mode": "serve", "module": "main", "function": "predict", "context": true,
                "init_function": "load", "init_parameters": {"path": "/m", "scale": 3},
                "run_id": run.metadata.id, "project": "demo",
                "readiness_path": "/_runplane/ready", "max_json_body_bytes": 16777216,
            })
        );

        // Defaults: one replica, the domain's ready timeout, no init.
        let mut run = run_of(
            serve_spec("def predict(request):\n    return 'ok'\n", json!({})),
            json!({}),
        );
        run.spec.action = "serve".into();
        let Runnable::Service(service) = PythonRuntime::default().to_runnable(&run).unwrap() else {
            panic!("not a service");
        };
        assert_eq!(service.replicas, 1);
        assert_eq!(
            service.ready_timeout_seconds,
            runplane_domain::RunSettings::default().ready_timeout_seconds()
        );
        let run_file: Value = serde_json::from_slice(&service.replica.files[2].contents).unwrap();
        assert_eq!(
            (
                &run_file["init_function"],
                &run_file["init_parameters"],
                &run_file["context"]
            ),
            (&Value::Null, &json!({}), &json!(false))
        );
    }

    #[test]
    fn serve_runs_check_init_parameters() {
        let spec = serve_spec(
            MODEL,
            json!({"init_function": "load", "init_parameters": {"scale": 2}}),
        );
        assert!(problems(&spec, json!({"path": "/m"})).is_empty());
        assert!(problems(&spec, json!({"path": "/m", "scale": 5})).is_empty());
        let got = problems(&spec, json!({"pth": "/m"}));
        assert_eq!(fields(&got), ["parameters.pth", "parameters.path"]);
        assert_eq!(
            got[0].1,
            "init function main:load does not accept a parameter pth (it takes: path, scale)"
        );
        assert!(got[1]
            .1
            .starts_with("missing: init function main:load requires it"));
        // The context slot is not a parameter, whatever its name.
        let got = problems(&spec, json!({"path": "/m", "context": 1}));
        assert_eq!(fields(&got), ["parameters.context"]);

        let spec = serve_spec(
            "def load(ctx, path):\n    pass\n\ndef predict(request):\n    pass\n",
            json!({"init_function": "load", "init_parameters": {"path": "/m"}}),
        );
        assert!(problems(&spec, json!({})).is_empty());
        assert_eq!(
            fields(&problems(&spec, json!({"ctx": 1}))),
            ["parameters.ctx"]
        );
    }

    #[test]
    fn serve_runs_without_init_take_no_parameters() {
        let spec = serve_spec("def predict(request):\n    pass\n", json!({}));
        assert!(problems(&spec, json!({})).is_empty());
        let got = problems(&spec, json!({"x": 1}));
        assert_eq!(fields(&got), ["parameters.x"]);
        assert!(got[0].1.contains("init_function"), "{}", got[0].1);
    }

    #[test]
    fn serve_handlers_take_the_request_alone() {
        for code in [
            "def predict(request):\n    pass\n",
            "def predict(request, context):\n    pass\n",
            "def predict(request, *, context=None, verbose=False):\n    pass\n",
            "def predict(*args, context):\n    pass\n",
            "async def predict(req, context=None):\n    pass\n",
        ] {
            let got = problems(&serve_spec(code, json!({})), json!({}));
            assert!(got.is_empty(), "{code:?} → {got:?}");
        }
        for (code, expected) in [
            (
                "def predict():\n    pass\n",
                "takes no positional parameter",
            ),
            (
                "def predict(*, context):\n    pass\n",
                "takes no positional parameter",
            ),
            (
                "def predict(context, request):\n    pass\n",
                "takes `context` first",
            ),
            (
                "def predict(request, n):\n    pass\n",
                "the parameter n without a default",
            ),
            (
                "def predict(request, *, n):\n    pass\n",
                "the parameter n without a default",
            ),
        ] {
            let got = problems(&serve_spec(code, json!({})), json!({}));
            assert_eq!(fields(&got), ["handler"], "{code:?}");
            assert!(got[0].1.contains(expected), "{code:?} → {}", got[0].1);
            assert!(
                got[0].1.contains("main:predict (main.py:1)"),
                "{}",
                got[0].1
            );
        }
    }

    #[test]
    fn init_keywords_drop_the_context_slot() {
        let runtime = PythonRuntime::default();
        let spec = runtime
            .normalize_function(&serve_spec(
                "def load(c, /, a, *, b=1):\n    pass\n\ndef predict(r):\n    pass\n",
                json!({"init_function": "load"}),
            ))
            .unwrap();
        let spec = PythonSpec::from_value(&spec).unwrap();
        let init = spec.init_signature.unwrap();
        assert_eq!(init.parameters.len(), 3);
        let keywords = init_keywords(&init);
        let names: Vec<&str> = keywords.named().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }
}
