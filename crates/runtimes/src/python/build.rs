//! The `build` action. Its one parameter, `target`, says what to build:
//!
//! - `environment`: the function's lock installed into its environment folder
//!   (`environment.rs`); the controller starts these itself, as prerequisites;
//! - `image` (the default): a container image holding the runner, the function's code and its
//!   environment, made by the framework's builder from [`image_build`]'s Containerfile. A
//!   successful image build makes a new function version: the same spec plus `image` (which
//!   its runs then execute in) and `built_from`.
//!
//! Image layout:
//!
//! ```text
//! /opt/runplane/runner.py, runner_serve.py   the embedded runner
//! /opt/runplane/src/...                      the function's files
//! /opt/runplane/site-packages/...            the environment (locked functions; on PYTHONPATH)
//! ```

use super::environment::{self, TARGET, TARGET_ENVIRONMENT, TARGET_IMAGE};
use super::outcome;
use super::runnable::{source_files, RUNNER, RUNNER_FILE, SOURCE_DIR};
use super::serve::{SERVE_RUNNER, SERVE_RUNNER_FILE};
use super::spec::PythonSpec;
use super::PythonConfig;
use crate::{Interpretation, RuntimeError};
use runplane_domain::invalid::Problems;
use runplane_domain::{
    reason, Build, BuiltImage, ContextDir, ExitOutcome, FileEntry, Invalid, Run, RunState,
    Runnable, BUILD_OUTPUT,
};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Where the image keeps runplane's files.
const IMAGE_ROOT: &str = "/opt/runplane";
/// The context folder the environment is copied from.
const ENV_CONTEXT_DIR: &str = "env";
/// Registry of images built without one: they stay on the engine.
const LOCAL_REGISTRY: &str = "localhost";
/// Characters of the version and of the run id in an image's tag.
const TAG_PART_CHARS: usize = 12;

/// What a build run builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Environment,
    Image,
}

impl Target {
    /// A run's `target` parameter (`image` when absent), as recorded in a valid run.
    fn of(parameters: &Map<String, Value>) -> Result<Self, String> {
        match parameters.get(TARGET) {
            None => Ok(Target::Image),
            Some(Value::String(target)) if target == TARGET_IMAGE => Ok(Target::Image),
            Some(Value::String(target)) if target == TARGET_ENVIRONMENT => {
                Ok(Target::Environment)
            }
            Some(other) => Err(format!(
                "{other} is not a build target; expected \"{TARGET_IMAGE}\" (the default) or \"{TARGET_ENVIRONMENT}\""
            )),
        }
    }
}

/// A build run's parameters: `target` only, and an environment only of a locked function.
pub(crate) fn check_run(spec: &PythonSpec, parameters: &Map<String, Value>) -> Result<(), Invalid> {
    let mut problems = Problems::new();
    for name in parameters.keys().filter(|name| name.as_str() != TARGET) {
        problems.add(
            format!("parameters.{name}"),
            format!("a build takes one parameter, `{TARGET}` (\"{TARGET_IMAGE}\" or \"{TARGET_ENVIRONMENT}\")"),
        );
    }
    match Target::of(parameters) {
        Err(problem) => problems.add(format!("parameters.{TARGET}"), problem),
        Ok(Target::Environment) if spec.lock.is_none() => problems.add(
            format!("parameters.{TARGET}"),
            "the function has no environment to build: it declares no `requirements` (or they are not resolved yet)",
        ),
        Ok(_) => {}
    }
    problems.finish()
}

/// The runnable of a `build` run.
pub(crate) fn runnable(run: &Run, config: &PythonConfig) -> Result<Runnable, RuntimeError> {
    let spec = PythonSpec::from_value(&run.spec.function_spec).map_err(RuntimeError::BadSpec)?;
    match Target::of(&run.spec.parameters).map_err(RuntimeError::BadSpec)? {
        Target::Environment => environment::build_job(run, &spec, config).map(Runnable::Job),
        Target::Image => image_build(run, &spec, config).map(Runnable::Build),
    }
}

/// The image's reference: `<registry>/runplane/<project>-<function>:<version>-<run>`, unique
/// per build run.
fn image_reference(run: &Run, config: &PythonConfig) -> String {
    let registry = config
        .registry
        .as_deref()
        .map(|r| r.trim_end_matches('/'))
        .filter(|r| !r.is_empty())
        .unwrap_or(LOCAL_REGISTRY);
    let version: String = run
        .spec
        .function_version
        .chars()
        .take(TAG_PART_CHARS)
        .collect();
    let id = &run.metadata.id;
    let run_part = id
        .char_indices()
        .rev()
        .nth(TAG_PART_CHARS - 1)
        .map_or(id.as_str(), |(start, _)| &id[start..]);
    format!(
        "{registry}/runplane/{}-{}:{version}-{run_part}",
        run.metadata.project, run.spec.function_name
    )
}

/// A Containerfile string literal (LABEL values): JSON's escaping is Dockerfile's.
fn quoted(value: &str) -> String {
    Value::String(value.to_string()).to_string()
}

/// The image build of a run. See the module documentation.
fn image_build(run: &Run, spec: &PythonSpec, config: &PythonConfig) -> Result<Build, RuntimeError> {
    let mut context = vec![
        FileEntry {
            path: RUNNER_FILE.to_string(),
            mode: 0o644,
            contents: RUNNER.as_bytes().to_vec(),
        },
        FileEntry {
            path: SERVE_RUNNER_FILE.to_string(),
            mode: 0o644,
            contents: SERVE_RUNNER.as_bytes().to_vec(),
        },
    ];
    context.extend(
        source_files(spec, config)?
            .into_iter()
            .map(|file| FileEntry {
                path: format!("{SOURCE_DIR}/{}", file.path),
                mode: file.mode,
                contents: file.contents,
            }),
    );

    let mut containerfile = format!("FROM {}\n", config.base_image);
    let mut context_dirs = Vec::new();
    if let Some(lock) = &spec.lock {
        context_dirs.push(ContextDir {
            host_path: environment::path(config, lock),
            path: ENV_CONTEXT_DIR.to_string(),
        });
        containerfile.push_str(&format!(
            "COPY {ENV_CONTEXT_DIR}/ {IMAGE_ROOT}/site-packages/\n"
        ));
    }
    containerfile.push_str(&format!(
        "COPY {RUNNER_FILE} {SERVE_RUNNER_FILE} {IMAGE_ROOT}/\nCOPY {SOURCE_DIR}/ {IMAGE_ROOT}/{SOURCE_DIR}/\n"
    ));
    if spec.lock.is_some() {
        containerfile.push_str(&format!("ENV PYTHONPATH={IMAGE_ROOT}/site-packages\n"));
    }
    let labels = [
        ("runplane.project", run.metadata.project.as_str()),
        ("runplane.function", run.spec.function_name.as_str()),
        (
            "runplane.function_version",
            run.spec.function_version.as_str(),
        ),
        ("runplane.build_run", run.metadata.id.as_str()),
    ];
    let labels: Vec<String> = labels
        .iter()
        .map(|(key, value)| format!("{key}={}", quoted(value)))
        .collect();
    containerfile.push_str(&format!("LABEL {}\n", labels.join(" ")));

    Ok(Build {
        containerfile,
        context,
        context_dirs,
        image: image_reference(run, config),
        push: config.registry.is_some(),
        args: BTreeMap::new(),
        log_limit_bytes: run.spec.settings.log_limit_bytes,
    })
}

/// How a build run ended. An environment build is a job of its own script (its failures are
/// `build_failed`); an image build completes with the image the framework built.
pub(crate) fn interpret(run: &Run, outcome: &ExitOutcome, config: &PythonConfig) -> Interpretation {
    let target = Target::of(&run.spec.parameters).unwrap_or(Target::Image);
    let stopping = run.status.state == RunState::Stop;
    if let Some(failure) = &outcome.failure {
        if !stopping {
            return error(&failure.reason, failure.message.clone());
        }
    }
    match (target, outcome.exit_code) {
        (Target::Environment, _) => {
            let mut got = outcome::job_ended(run, outcome, config);
            if got.state == RunState::Error && got.reason == reason::FAILED {
                got.reason = reason::BUILD_FAILED.to_string();
            }
            got
        }
        (Target::Image, Some(0)) => image_built(run, outcome),
        (Target::Image, Some(code)) if !stopping => error(
            reason::BUILD_FAILED,
            format!("the image build exited with code {code}; its output is in the run's log"),
        ),
        // Signals, stops, lost builds: as any job.
        (Target::Image, _) => outcome::job_ended(run, outcome, config),
    }
}

fn error(reason: &str, message: String) -> Interpretation {
    Interpretation {
        state: RunState::Error,
        reason: reason.to_string(),
        message: Some(message),
        results: None,
        new_version: None,
    }
}

/// A finished image build: its `image.json`, and the new version it makes.
fn image_built(run: &Run, outcome: &ExitOutcome) -> Interpretation {
    let built = match outcome.outputs.get(BUILD_OUTPUT) {
        None => {
            return error(
                reason::BUILD_FAILED,
                format!("the build ended without its {BUILD_OUTPUT}: no image was recorded"),
            )
        }
        Some(file) if file.is_truncated() => {
            return error(
                reason::BUILD_FAILED,
                format!(
                    "{BUILD_OUTPUT} is {} bytes: too large to be a build's record",
                    file.size
                ),
            )
        }
        Some(file) => match serde_json::from_slice::<BuiltImage>(&file.contents) {
            Ok(built) => built,
            Err(parse_error) => {
                return error(
                    reason::BUILD_FAILED,
                    format!("{BUILD_OUTPUT} is not a built image's record: {parse_error}"),
                )
            }
        },
    };
    let built_from = json!({"version": run.spec.function_version, "run": run.metadata.id});
    let Some(mut new_version) = run.spec.function_spec.as_object().cloned() else {
        return error(
            reason::BUILD_FAILED,
            "the run's function spec is not a mapping".to_string(),
        );
    };
    // A pushed image is named by its digest: what runs is exactly what was built.
    let reference = built.digest.clone().unwrap_or_else(|| built.image.clone());
    new_version.insert("image".to_string(), json!(reference));
    new_version.insert("built_from".to_string(), built_from.clone());
    Interpretation {
        state: RunState::Completed,
        reason: reason::SUCCEEDED.to_string(),
        message: None,
        results: Some(json!({
            "image": built.image,
            "id": built.id,
            "digest": built.digest,
            "built_from": built_from,
        })),
        new_version: Some(Value::Object(new_version)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::environment::tests::locked_run;
    use super::super::requirements::lock_hash;
    use super::super::runnable::tests::run_of;
    use super::super::PythonRuntime;
    use super::*;
    use crate::Runtime;
    use runplane_domain::{Failure, OutputFile};

    fn runtime(registry: Option<&str>) -> PythonRuntime {
        PythonRuntime {
            config: PythonConfig {
                environments_dir: "/srv/envs".to_string(),
                registry: registry.map(str::to_string),
                ..PythonConfig::default()
            },
            ..PythonRuntime::default()
        }
    }

    fn build_of(runtime: &PythonRuntime, run: &Run) -> Build {
        match runtime.to_runnable(run).unwrap() {
            Runnable::Build(build) => build,
            other => panic!("not a build: {other:?}"),
        }
    }

    #[test]
    fn a_locked_function_builds_into_an_image_with_its_environment() {
        let runtime = runtime(None);
        let run = locked_run("build", json!({}));
        let build = build_of(&runtime, &run);
        let hash = lock_hash("six==1.17.0\n");
        assert_eq!(
            build.containerfile,
            "FROM localhost/runplane-python:latest\n\
             COPY env/ /opt/runplane/site-packages/\n\
             COPY runner.py runner_serve.py /opt/runplane/\n\
             COPY src/ /opt/runplane/src/\n\
             ENV PYTHONPATH=/opt/runplane/site-packages\n\
             LABEL runplane.project=\"demo\" runplane.function=\"hello\" runplane.function_version=\"0123456789abcdef\" runplane.build_run=\"0190d7a8-0000-7000-8000-000000000001\"\n"
        );
        assert_eq!(
            build.context_dirs,
            [ContextDir {
                host_path: format!("/srv/envs/{hash}"),
                path: "env".into()
            }]
        );
        let paths: Vec<&str> = build.context.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["runner.py", "runner_serve.py", "src/main.py"]);
        assert_eq!(build.context[0].contents, RUNNER.as_bytes());
        assert_eq!(
            build.image,
            "localhost/runplane/demo-hello:0123456789ab-000000000001"
        );
        assert!(!build.push);
        // Its environment is built first.
        assert!(runtime.prerequisite(&run).is_some());
    }

    #[test]
    fn an_unlocked_function_builds_without_an_environment_and_pushes_to_a_registry() {
        let runtime = runtime(Some("127.0.0.1:5000/team/"));
        let mut run = run_of(
            json!({"source": {"code": "def handler():\n    pass\n"}, "handler": "handler"}),
            json!({"target": "image"}),
        );
        run.spec.action = "build".into();
        let build = build_of(&runtime, &run);
        assert!(build.context_dirs.is_empty());
        assert!(!build.containerfile.contains("site-packages"));
        assert!(build
            .containerfile
            .starts_with("FROM localhost/runplane-python:latest\nCOPY runner.py"));
        assert_eq!(
            build.image,
            "127.0.0.1:5000/team/runplane/demo-hello:0123456789ab-000000000001"
        );
        assert!(build.push);
        assert_eq!(runtime.prerequisite(&run), None);
    }

    #[test]
    fn build_runs_take_only_a_target() {
        let runtime = runtime(None);
        let locked = locked_run("build", json!({})).spec.function_spec;
        let plain = run_of(
            json!({"source": {"code": "def handler(n):\n    pass\n"}, "handler": "handler"}),
            json!({}),
        )
        .spec
        .function_spec;
        let params = |v: Value| v.as_object().cloned().unwrap();
        for (spec, parameters) in [
            (&locked, json!({})),
            (&locked, json!({"target": "image"})),
            (&locked, json!({"target": "environment"})),
            (&plain, json!({})),
        ] {
            assert!(
                runtime
                    .validate_run(spec, "build", &params(parameters.clone()))
                    .is_ok(),
                "{parameters}"
            );
        }
        for (spec, parameters, field, problem) in [
            (
                &locked,
                json!({"target": "wheel"}),
                "parameters.target",
                "not a build target",
            ),
            (
                &locked,
                json!({"target": 1}),
                "parameters.target",
                "not a build target",
            ),
            (&locked, json!({"n": 1}), "parameters.n", "one parameter"),
            (
                &plain,
                json!({"target": "environment"}),
                "parameters.target",
                "no environment",
            ),
        ] {
            let errors = runtime
                .validate_run(spec, "build", &params(parameters.clone()))
                .unwrap_err()
                .0;
            assert_eq!(errors.len(), 1, "{parameters}: {errors:?}");
            assert_eq!(errors[0].field, field);
            assert!(errors[0].problem.contains(problem), "{errors:?}");
        }
    }

    fn outcome(exit_code: Option<i32>, files: &[(&str, &[u8])]) -> ExitOutcome {
        ExitOutcome {
            exit_code,
            signal: None,
            outputs: files
                .iter()
                .map(|(name, contents)| {
                    let file = OutputFile {
                        contents: contents.to_vec(),
                        size: contents.len() as u64,
                    };
                    (name.to_string(), file)
                })
                .collect(),
            failure: None,
            outputs_dir: None,
        }
    }

    #[test]
    fn a_built_image_makes_a_new_version() {
        let runtime = runtime(None);
        let run = locked_run("build", json!({}));
        let record = br#"{"image": "localhost/runplane/demo-hello:0123456789ab-000000000001", "id": "sha256:feed"}"#;
        let got = runtime.interpret(&run, &outcome(Some(0), &[("image.json", record)]));
        assert_eq!(
            (got.state, got.reason.as_str()),
            (RunState::Completed, "succeeded")
        );
        let built_from = json!({"version": "0123456789abcdef", "run": run.metadata.id});
        assert_eq!(
            got.results,
            Some(json!({
                "image": "localhost/runplane/demo-hello:0123456789ab-000000000001",
                "id": "sha256:feed",
                "digest": null,
                "built_from": built_from,
            }))
        );
        let new_version = got.new_version.unwrap();
        let mut expected = run.spec.function_spec.clone();
        expected["image"] = json!("localhost/runplane/demo-hello:0123456789ab-000000000001");
        expected["built_from"] = built_from;
        assert_eq!(new_version, expected);
        assert!(new_version.get("lock").is_some());
        // The new version is a valid spec, distinct from its source.
        let normalized = runtime.normalize_function(&new_version).unwrap();
        assert_eq!(normalized, new_version);
        assert_ne!(
            runtime.hash_input(&normalized),
            runtime.hash_input(&run.spec.function_spec)
        );

        // A pushed image is named by its digest.
        let pushed = br#"{"image": "r:5000/runplane/demo-hello:x", "id": "sha256:feed", "digest": "r:5000/runplane/demo-hello@sha256:beef"}"#;
        let got = runtime.interpret(&run, &outcome(Some(0), &[("image.json", pushed)]));
        assert_eq!(
            got.new_version.unwrap()["image"],
            "r:5000/runplane/demo-hello@sha256:beef"
        );
    }

    #[test]
    fn builds_that_made_nothing_failed() {
        let runtime = runtime(None);
        let run = locked_run("build", json!({}));
        for (code, files) in [
            (Some(0), vec![]),
            (Some(0), vec![("image.json", &b"{\"image\": 1}"[..])]),
            (Some(1), vec![]),
        ] {
            let got = runtime.interpret(&run, &outcome(code, &files));
            assert_eq!(
                (got.state, got.reason.as_str()),
                (RunState::Error, "build_failed"),
                "{got:?}"
            );
            assert_eq!(got.new_version, None);
        }
        let mut failed = outcome(Some(1), &[]);
        failed.failure = Some(Failure {
            reason: "build_failed".into(),
            message: "step 2 failed".into(),
        });
        let got = runtime.interpret(&run, &failed);
        assert_eq!(got.message.as_deref(), Some("step 2 failed"));

        // Environment builds: results on success, build_failed with the script's error.
        let env_run = locked_run("build", json!({"target": "environment"}));
        let got = runtime.interpret(
            &env_run,
            &outcome(
                Some(0),
                &[("results.json", br#"{"environment": "ab", "reused": true}"#)],
            ),
        );
        assert_eq!(got.state, RunState::Completed);
        assert_eq!(
            got.results,
            Some(json!({"environment": "ab", "reused": true}))
        );
        assert_eq!(got.new_version, None);
        let got = runtime.interpret(
            &env_run,
            &outcome(
                Some(1),
                &[(
                    "error.json",
                    br#"{"type": "EnvironmentBuildFailed", "message": "uv exited with code 1"}"#,
                )],
            ),
        );
        assert_eq!(got.reason, "build_failed");
        assert_eq!(
            got.message.as_deref(),
            Some("EnvironmentBuildFailed: uv exited with code 1")
        );
    }
}
