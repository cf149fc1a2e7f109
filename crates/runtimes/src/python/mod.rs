//! The `python` runtime (`docs/formats.md`, `kind: python`): a handler function in inline
//! code or in a packed file/directory, called by name with the run's parameters.
//!
//! At apply time the code is read by the function's interpreter's own `ast` module, never
//! imported or executed (`inspect.rs`, through the server's [`HandlerInspector`];
//! `signature.rs`), so that a missing handler, a syntax error or a parameter the handler does
//! not take is reported before anything runs. A run becomes a [`Job`] that starts `runner.py` (embedded here) with
//! the function's files; the runner leaves `results.json` / `error.json` in the outputs folder
//! and `outcome.rs` reads them back.
//!
//! Actions: `job` (above), `serve` (`serve.rs`: the same runner kept running as an HTTP
//! server, one per replica, as a [`Service`]) and `build` (`build.rs`: the function's
//! environment, or an image holding it and the code, which becomes a new version).
//!
//! `requirements` (`requirements.rs`) are resolved by the server into a `lock` once per
//! version; every run of a locked version needs the lock's environment, built once per lock
//! (`environment.rs`) and put on the run's `PYTHONPATH`.
//!
//! [`Job`]: runplane_domain::Job
//! [`Service`]: runplane_domain::Service

mod build;
mod environment;
mod handler;
mod inspect;
mod outcome;
mod params;
mod requirements;
mod runnable;
mod schema;
mod serve;
mod signature;
mod spec;

pub use inspect::{HandlerInspector, Inspection, InspectionError, INSPECT_SCRIPT};
pub use requirements::{BuiltFrom, LockSpec};
pub use serve::{MAX_JSON_BODY_BYTES, READINESS_PATH};
pub use signature::{Parameter, ParameterKind, Signature};
pub use spec::{PythonSpec, Source};

use crate::{Dependencies, Interpretation, Lock, Prerequisite, Runtime, RuntimeError};
use runplane_domain::{ExitOutcome, Invalid, Run, Runnable};
use serde_json::{Map, Value};
use std::fmt;
use std::sync::Arc;

/// The runtime's `kind`.
pub const KIND: &str = "python";
/// Run the handler once with the run's parameters.
pub const JOB: &str = "job";
/// Keep the handler running as an HTTP service (`serve.rs`).
pub const SERVE: &str = "serve";
/// Build the function's environment or an image of it (`build.rs`).
pub const BUILD: &str = "build";
const ACTIONS: &[&str] = &[JOB, SERVE, BUILD];

/// Settings of the python runtime, fixed when the server starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonConfig {
    /// Absolute path of the interpreter runs use. Never looked up in `PATH`, so that what a run
    /// executes does not depend on the environment of whoever starts it.
    pub interpreter: String,
    /// Largest `results.json` accepted (a handler's return value is stored with the run).
    pub max_results_bytes: usize,
    /// Largest source accepted: inline code, or the total unpacked size of a packed source.
    pub max_source_bytes: usize,
    /// Absolute folder where environments built from locks live, one `<lock hash>` folder
    /// each (`$RUNPLANE_HOME/envs` on a server).
    pub environments_dir: String,
    /// The `uv` executable environment builds run (absolute, or looked up in `PATH`).
    pub uv: String,
    /// The image `build` starts from: it must hold `interpreter`.
    pub base_image: String,
    /// Where built images are pushed (`host:port[/prefix]`); kept on the engine when None.
    pub registry: Option<String>,
}

impl Default for PythonConfig {
    fn default() -> Self {
        Self {
            interpreter: "/usr/bin/python3".to_string(),
            max_results_bytes: 1024 * 1024,
            max_source_bytes: 16 * 1024 * 1024,
            environments_dir: "/var/lib/runplane/envs".to_string(),
            uv: "uv".to_string(),
            base_image: "localhost/runplane-python:latest".to_string(),
            registry: None,
        }
    }
}

/// Functions of kind `python`. See the module documentation.
#[derive(Clone)]
pub struct PythonRuntime {
    config: PythonConfig,
    inspector: Arc<dyn HandlerInspector>,
}

impl fmt::Debug for PythonRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PythonRuntime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The default settings, with the real interpreter reading sources (tests only).
#[cfg(test)]
impl Default for PythonRuntime {
    fn default() -> Self {
        Self::new(
            PythonConfig::default(),
            Arc::new(inspect::interpreter::inspector()),
        )
    }
}

impl PythonRuntime {
    /// `inspector` reads functions' sources with `config.interpreter` at apply time.
    pub fn new(config: PythonConfig, inspector: Arc<dyn HandlerInspector>) -> Self {
        Self { config, inspector }
    }

    pub fn config(&self) -> &PythonConfig {
        &self.config
    }
}

/// The error for an action this runtime does not have, shared by `validate_run` and
/// `to_runnable`.
fn unknown_action(action: &str) -> RuntimeError {
    RuntimeError::UnknownAction {
        kind: KIND.to_string(),
        action: action.to_string(),
        available: ACTIONS.join(", "),
    }
}

impl Runtime for PythonRuntime {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn actions(&self) -> &'static [&'static str] {
        ACTIONS
    }

    fn normalize_function(&self, spec: &Value) -> Result<Value, Invalid> {
        spec::normalize(spec, &self.config, self.inspector.as_ref())
    }

    fn hash_input(&self, normalized: &Value) -> Value {
        spec::hash_input(normalized)
    }

    fn spec_schema(&self) -> Value {
        schema::spec_schema()
    }

    fn validate_run(
        &self,
        function_spec: &Value,
        action: &str,
        parameters: &Map<String, Value>,
    ) -> Result<(), Invalid> {
        if !ACTIONS.contains(&action) {
            return Err(Invalid::field("action", unknown_action(action).to_string()));
        }
        let spec = PythonSpec::from_value(function_spec).map_err(|error| {
            Invalid::field(
                "function",
                format!("the function's stored spec is unusable: {error}"),
            )
        })?;
        match action {
            SERVE => serve::check_run(&spec, parameters),
            BUILD => build::check_run(&spec, parameters),
            _ => params::check_run(&spec, parameters),
        }
    }

    fn to_runnable(&self, run: &Run) -> Result<Runnable, RuntimeError> {
        match run.spec.action.as_str() {
            JOB => runnable::job(run, &self.config).map(Runnable::Job),
            SERVE => serve::service(run, &self.config).map(Runnable::Service),
            BUILD => build::runnable(run, &self.config),
            other => Err(unknown_action(other)),
        }
    }

    fn interpret(&self, run: &Run, outcome: &ExitOutcome) -> Interpretation {
        outcome::interpret(run, outcome, &self.config)
    }

    fn dependencies(&self, normalized: &Value) -> Option<Dependencies> {
        let spec = PythonSpec::from_value(normalized).ok()?;
        if spec.requirements.is_empty() {
            return None;
        }
        Some(Dependencies {
            requirements: spec.requirements,
            python_version: spec.python_version,
        })
    }

    fn with_lock(&self, normalized: Value, lock: &Lock) -> Value {
        let mut normalized = normalized;
        if let Some(object) = normalized.as_object_mut() {
            object.insert(
                "lock".to_string(),
                serde_json::json!({"text": lock.text, "hash": lock.hash}),
            );
        }
        normalized
    }

    fn prerequisite(&self, run: &Run) -> Option<Prerequisite> {
        environment::prerequisite(run, &self.config)
    }
}
