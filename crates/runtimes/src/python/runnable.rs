//! A run of a `python` function as a [`Job`]: the interpreter started on the embedded runner,
//! with the function's files under `src/` and what the runner needs in `run.json`. A serve
//! run's replicas are the same kind of job with a serve-mode `run.json` (`serve.rs`).
//!
//! Working directory (written by the framework):
//!
//! ```text
//! runner.py        the embedded runner (src/python/runner.py)
//! run.json         module, function, merged parameters, run id, project, context flag, limits
//! src/...          the function's source: inline code as src/main.py, or the unpacked archive
//! ```

use super::environment;
use super::params::merged;
use super::spec::{PythonSpec, Source};
use super::PythonConfig;
use crate::archive::{self, SourceFile};
use crate::RuntimeError;
use runplane_domain::{FileEntry, Job, Run};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The runner, embedded so that what runs always matches the runtime that prepared it.
pub(crate) const RUNNER: &str = include_str!("runner.py");
pub(crate) const RUNNER_FILE: &str = "runner.py";
pub(crate) const RUN_FILE: &str = "run.json";
/// Folder of the function's own files, relative to the working directory.
pub(crate) const SOURCE_DIR: &str = "src";

/// Builds the job of a run whose action is `job`.
pub(crate) fn job(run: &Run, config: &PythonConfig) -> Result<Job, RuntimeError> {
    let spec = PythonSpec::from_value(&run.spec.function_spec).map_err(RuntimeError::BadSpec)?;
    let (module, function) = spec.handler_parts();
    let run_file = json!({
        "module": module,
        "function": function,
        "parameters": merged(&spec, &run.spec.parameters),
        "context": spec.signature.takes_context,
        "run_id": run.metadata.id,
        "project": run.metadata.project,
        "max_results_bytes": config.max_results_bytes,
    });
    replica_job(run, config, &spec, &run_file)
}

/// The runner started on `run_file` (its `run.json`) with the function's files: a job, or
/// one replica of a service.
pub(crate) fn replica_job(
    run: &Run,
    config: &PythonConfig,
    spec: &PythonSpec,
    run_file: &Value,
) -> Result<Job, RuntimeError> {
    let run_file =
        serde_json::to_vec(run_file).map_err(|error| RuntimeError::BadSpec(error.to_string()))?;

    let mut files = vec![
        FileEntry {
            path: RUNNER_FILE.to_string(),
            mode: 0o644,
            contents: RUNNER.as_bytes().to_vec(),
        },
        FileEntry {
            path: RUN_FILE.to_string(),
            mode: 0o644,
            contents: run_file,
        },
    ];
    files.extend(
        source_files(spec, config)?
            .into_iter()
            .map(|file| FileEntry {
                path: format!("{SOURCE_DIR}/{}", file.path),
                mode: file.mode,
                contents: file.contents,
            }),
    );

    // Task env may override Python's defaults, but not who the run is.
    let mut env = BTreeMap::from([
        ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
        ("PYTHONDONTWRITEBYTECODE".to_string(), "1".to_string()),
    ]);
    env.extend(run.spec.settings.env.clone());
    env.insert("RUNPLANE_RUN_ID".to_string(), run.metadata.id.clone());
    env.insert("RUNPLANE_PROJECT".to_string(), run.metadata.project.clone());

    let mut job = Job {
        command: vec![config.interpreter.clone(), RUNNER_FILE.to_string()],
        env,
        files,
        stop_grace_seconds: run.spec.settings.stop_grace_seconds,
        log_limit_bytes: run.spec.settings.log_limit_bytes,
        image: None,
        // Secrets are the controller's to add, at dispatch: the runtime never sees them.
        redact: Vec::new(),
        volumes: Vec::new(),
        limits: run.spec.settings.resources.as_ref().map(|r| r.limits()),
    };
    environment::attach(&mut job, spec, config);
    Ok(job)
}

/// The function's files, checked again: the snapshot is trusted, but not blindly (a stored
/// archive that no longer matches its digest is not run).
pub(crate) fn source_files(
    spec: &PythonSpec,
    config: &PythonConfig,
) -> Result<Vec<SourceFile>, RuntimeError> {
    match &spec.source {
        Source::Code { code } => Ok(vec![SourceFile {
            path: "main.py".to_string(),
            mode: 0o644,
            contents: code.as_bytes().to_vec(),
        }]),
        Source::Archive { archive, digest } => {
            let files = archive::unpack(archive, config.max_source_bytes)
                .map_err(|error| RuntimeError::BadSpec(format!("source.archive {error}")))?;
            let actual = archive::digest(&files);
            if &actual != digest {
                return Err(RuntimeError::BadSpec(format!(
                    "source.archive hashes to {actual}, not to its recorded digest {digest}"
                )));
            }
            Ok(files)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::PythonRuntime;
    use super::*;
    use crate::archive::tests::{b64, Item};
    use crate::Runtime;
    use runplane_domain::{RunMetadata, RunSettings, RunSpec, RunState, RunStatus, Runnable};
    use serde_json::Map;

    /// A run of `spec` (as submitted) with `parameters`, as the controller would build it.
    pub(crate) fn run_of(spec: Value, parameters: Value) -> Run {
        let function_spec = PythonRuntime::default().normalize_function(&spec).unwrap();
        let now = chrono::DateTime::<chrono::Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        Run {
            kind: "python+job:run".into(),
            metadata: RunMetadata {
                id: "0190d7a8-0000-7000-8000-000000000001".into(),
                project: "demo".into(),
                labels: Default::default(),
                created: now,
                updated: now,
                created_by: "anonymous".into(),
            },
            spec: RunSpec {
                function: "store://demo/function/python/hello:0123456789abcdef".into(),
                function_name: "hello".into(),
                function_version: "0123456789abcdef".into(),
                runtime: "python".into(),
                action: "job".into(),
                task: None,
                framework: "local".into(),
                parameters: parameters.as_object().cloned().unwrap_or_else(Map::new),
                settings: RunSettings {
                    max_concurrency: None,
                    env: BTreeMap::from([
                        ("GREETING".into(), "hi".into()),
                        ("PYTHONUNBUFFERED".into(), "0".into()),
                        ("RUNPLANE_RUN_ID".into(), "spoofed".into()),
                    ]),
                    stop_grace_seconds: 7,
                    ..RunSettings::default()
                },
                function_spec,
                inputs: Default::default(),
                reuse: Default::default(),
            },
            status: RunStatus {
                state: RunState::Pending,
                attempt: 1,
                reason: None,
                message: None,
                results: None,
                rerun_of: None,
                service: None,
                step_of: None,
                produced_by: None,
                workflow: None,
                owner: None,
                artifacts: Default::default(),
                transitions: Vec::new(),
                attempts: Vec::new(),
            },
        }
    }

    fn job_of(run: &Run) -> Job {
        match PythonRuntime::default().to_runnable(run).unwrap() {
            Runnable::Job(job) => job,
            other => panic!("not a job: {other:?}"),
        }
    }

    #[test]
    fn an_inline_function_becomes_a_job() {
        let code = "def handler(name, greeting='hello'):\n    return greeting + name\n";
        let run = run_of(
            json!({"source": {"code": code}, "handler": "handler", "default_parameters": {"greeting": "hey", "name": "x"}}),
            json!({"name": "ada"}),
        );
        let job = job_of(&run);
        assert_eq!(job.command, ["/usr/bin/python3", "runner.py"]);
        assert_eq!(job.stop_grace_seconds, 7);
        let paths: Vec<&str> = job.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["runner.py", "run.json", "src/main.py"]);
        assert_eq!(job.files[0].contents, RUNNER.as_bytes());
        assert_eq!(job.files[2].contents, code.as_bytes());
        let run_file: Value = serde_json::from_slice(&job.files[1].contents).unwrap();
        assert_eq!(
            run_file,
            json!({
                "module": "main", "function": "handler", "context": false,
                "parameters": {"greeting": "hey", "name": "ada"},
                "run_id": run.metadata.id, "project": "demo", "max_results_bytes": 1048576,
            })
        );
        assert_eq!(job.env["GREETING"], "hi");
        assert_eq!(job.env["PYTHONUNBUFFERED"], "0"); // the task's choice
        assert_eq!(job.env["PYTHONDONTWRITEBYTECODE"], "1");
        assert_eq!(job.env["RUNPLANE_RUN_ID"], run.metadata.id); // not the task's
        assert_eq!(job.env["RUNPLANE_PROJECT"], "demo");
    }

    #[test]
    fn a_packed_function_is_unpacked_under_src() {
        let archive = b64(&[
            Item::File("pkg/__init__.py", 0o644, b""),
            Item::File(
                "pkg/job.py",
                0o644,
                b"def run(context):\n    return context.run_id\n",
            ),
            Item::File("bin/tool.sh", 0o755, b"#!/bin/sh\n"),
        ]);
        let run = run_of(
            json!({"source": {"archive": archive}, "handler": "pkg.job:run"}),
            json!({}),
        );
        let job = job_of(&run);
        let files: Vec<(&str, u32)> = job
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.mode))
            .collect();
        assert_eq!(
            files,
            [
                ("runner.py", 0o644),
                ("run.json", 0o644),
                ("src/bin/tool.sh", 0o755),
                ("src/pkg/__init__.py", 0o644),
                ("src/pkg/job.py", 0o644)
            ]
        );
        let run_file: Value = serde_json::from_slice(&job.files[1].contents).unwrap();
        assert_eq!(
            (run_file["module"].as_str(), run_file["function"].as_str()),
            (Some("pkg.job"), Some("run"))
        );
        assert_eq!(run_file["context"], true);
    }

    #[test]
    fn other_actions_and_tampered_snapshots_are_refused() {
        let mut run = run_of(
            json!({"source": {"code": "def handler():\n    pass\n"}, "handler": "handler"}),
            json!({}),
        );
        run.spec.action = "train".into();
        let error = PythonRuntime::default().to_runnable(&run).unwrap_err();
        assert!(
            matches!(error, RuntimeError::UnknownAction { .. }),
            "{error}"
        );

        let archive = b64(&[Item::File("main.py", 0o644, b"def handler():\n    pass\n")]);
        let mut run = run_of(
            json!({"source": {"archive": archive}, "handler": "handler"}),
            json!({}),
        );
        run.spec.function_spec["source"]["digest"] = json!("sha256:0000");
        let error = PythonRuntime::default().to_runnable(&run).unwrap_err();
        assert!(error.to_string().contains("recorded digest"), "{error}");

        run.spec.function_spec = json!({"what": "else"});
        assert!(matches!(
            PythonRuntime::default().to_runnable(&run),
            Err(RuntimeError::BadSpec(_))
        ));
    }
}
