//! The `container` runtime (`docs/formats.md`): an image and a command, or a Containerfile to build
//! one.
//!
//! Actions:
//! - `job` (`runnable.rs`): the command runs once in the image, as a [`Job`]; the run's
//!   parameters arrive as `RUNPLANE_PARAM_<NAME>` environment variables and the container may
//!   leave `results.json` in `$RUNPLANE_OUTPUTS` (`outcome.rs`).
//! - `deploy`: the same job kept running as the replicas of a [`Service`] that serves nothing
//!   (a worker); `serve`: a [`Service`] whose replicas listen on the spec's `port`. Their
//!   parameters arrive as a job's do.
//! - `build` (`build.rs`): the spec's Containerfile and packed context become a [`Build`]; a
//!   successful build makes a new function version whose `image` is the built one.
//!
//! Pure like every runtime: the spec carries everything, including the build context (packed by
//! the CLI like a python `source.path`).
//!
//! [`Job`]: runplane_domain::Job
//! [`Service`]: runplane_domain::Service
//! [`Build`]: runplane_domain::Build

mod build;
mod check;
mod outcome;
mod runnable;
mod schema;
mod spec;

pub use spec::{BuildSpec, BuiltFrom, ContainerSpec, Context};

use crate::{Interpretation, Runtime, RuntimeError};
use runplane_domain::{ExitOutcome, Invalid, Run, Runnable};
use serde_json::{Map, Value};

/// The runtime's `kind`.
pub const KIND: &str = "container";
/// Run the command once.
pub const JOB: &str = "job";
/// Keep the command running as replicas that serve nothing (workers).
pub const DEPLOY: &str = "deploy";
/// Keep the command running as replicas that serve HTTP on the spec's `port`.
pub const SERVE: &str = "serve";
/// Build an image from the spec's Containerfile.
pub const BUILD: &str = "build";
const ACTIONS: &[&str] = &[JOB, DEPLOY, SERVE, BUILD];

/// Settings of the container runtime, fixed when the server starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    /// Where built images are pushed (`host:port[/prefix]`); kept on the engine when None.
    pub registry: Option<String>,
    /// Largest `results.json` accepted (it is stored with the run).
    pub max_results_bytes: usize,
    /// Largest build context accepted (total unpacked size).
    pub max_context_bytes: usize,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        Self {
            registry: None,
            max_results_bytes: 1024 * 1024,
            max_context_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Functions of kind `container`. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct ContainerRuntime {
    config: ContainerConfig,
}

impl ContainerRuntime {
    pub fn new(config: ContainerConfig) -> Self {
        Self { config }
    }

    pub fn config(&self) -> &ContainerConfig {
        &self.config
    }
}

fn unknown_action(action: &str) -> RuntimeError {
    RuntimeError::UnknownAction {
        kind: KIND.to_string(),
        action: action.to_string(),
        available: ACTIONS.join(", "),
    }
}

impl Runtime for ContainerRuntime {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn requires_containers(&self) -> bool {
        true
    }

    fn actions(&self) -> &'static [&'static str] {
        ACTIONS
    }

    fn normalize_function(&self, spec: &Value) -> Result<Value, Invalid> {
        spec::normalize(spec, &self.config)
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
        let spec = ContainerSpec::from_value(function_spec).map_err(|error| {
            Invalid::field(
                "function",
                format!("the function's stored spec is unusable: {error}"),
            )
        })?;
        check::check_run(&spec, action, parameters)
    }

    fn to_runnable(&self, run: &Run) -> Result<Runnable, RuntimeError> {
        match run.spec.action.as_str() {
            JOB => runnable::job(run).map(Runnable::Job),
            DEPLOY | SERVE => runnable::service(run).map(Runnable::Service),
            BUILD => build::build(run, &self.config).map(Runnable::Build),
            other => Err(unknown_action(other)),
        }
    }

    fn interpret(&self, run: &Run, outcome: &ExitOutcome) -> Interpretation {
        outcome::interpret(run, outcome, &self.config)
    }
}
