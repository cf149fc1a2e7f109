//! Helpers shared by the tests that run the embedded runner for real.
#![allow(dead_code)] // each test crate uses its own subset

use runplane_domain::{FileEntry, Run, RunMetadata, RunSettings, RunSpec, RunState, RunStatus};
pub use runplane_runtimes::python::{HandlerInspector, Inspection, InspectionError};
use runplane_runtimes::python::{PythonConfig, PythonRuntime};
use runplane_runtimes::Runtime;
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

pub mod interpreter;

pub const PYTHON: &str = "/usr/bin/python3";

pub fn python_missing() -> bool {
    let missing = !Path::new(PYTHON).exists();
    if missing {
        eprintln!("skipped: {PYTHON} is not installed");
    }
    missing
}

pub fn runtime() -> PythonRuntime {
    PythonRuntime::new(
        PythonConfig {
            interpreter: PYTHON.to_string(),
            ..PythonConfig::default()
        },
        inspector(),
    )
}

/// Reads sources with the real interpreter, as the server does.
pub fn inspector() -> Arc<dyn HandlerInspector> {
    Arc::new(interpreter::inspector())
}

pub fn run_of(spec: Value, parameters: Value) -> Run {
    let function_spec = runtime().normalize_function(&spec).expect("a valid spec");
    let now = chrono::Utc::now();
    Run {
        kind: "python+job:run".into(),
        metadata: RunMetadata {
            id: "0190d7a8-0000-7000-8000-00000000abcd".into(),
            project: "demo".into(),
            labels: BTreeMap::new(),
            created: now,
            updated: now,
            created_by: "anonymous".into(),
        },
        spec: RunSpec {
            function: "store://demo/function/python/f:0000000000000000".into(),
            function_name: "f".into(),
            function_version: "0000000000000000".into(),
            runtime: "python".into(),
            action: "job".into(),
            task: None,
            framework: "local".into(),
            parameters: parameters.as_object().cloned().unwrap_or_default(),
            settings: RunSettings {
                max_concurrency: None,
                env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
                stop_grace_seconds: 5,
                ..RunSettings::default()
            },
            function_spec,
            inputs: Default::default(),
            reuse: Default::default(),
        },
        status: RunStatus {
            state: RunState::Running,
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

/// A run of `spec` whose action is `action`.
pub fn run_with_action(spec: Value, parameters: Value, action: &str) -> Run {
    let mut run = run_of(spec, parameters);
    run.spec.action = action.to_string();
    run.kind = format!("python+{action}:run");
    run
}

/// Writes a runnable's files under `dir`, as the local framework does.
pub fn write_files(files: &[FileEntry], dir: &Path) {
    for file in files {
        assert!(!file.path.starts_with('/') && !file.path.split('/').any(|p| p == ".."));
        let path = dir.join(&file.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &file.contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode)).unwrap();
    }
}
