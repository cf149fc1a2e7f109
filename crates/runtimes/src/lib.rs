//! Runtimes (ARCHITECTURE.md): each knows one `kind` of function. A runtime validates and
//! normalizes a function spec, checks a run's parameters, translates a run into a
//! [`Runnable`], and interprets how its execution ended.
//!
//! Runtimes are pure: no files, no processes, no network, no clock. They know nothing about
//! where things execute (that is `runplane-frameworks`), and must not depend on the store or
//! the server. Adding a runtime means implementing [`Runtime`] and registering it in
//! [`Runtimes`]; the control plane does not change.

pub(crate) mod archive;
pub mod container;
pub(crate) mod outcome;
pub mod pipeline;
pub mod python;

use runplane_domain::{ExitOutcome, Invalid, Run, RunState, Runnable};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("runtime {kind:?} has no action {action:?} (it has: {available})")]
    UnknownAction {
        kind: String,
        action: String,
        available: String,
    },
    #[error("the run's spec is unusable: {0}")]
    BadSpec(String),
}

/// How a finished execution ends the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Interpretation {
    /// `Completed` or `Error`.
    pub state: RunState,
    /// A machine-readable reason (`runplane_domain::reason`).
    pub reason: String,
    pub message: Option<String>,
    pub results: Option<Value>,
    /// A build run that made a new function version: its normalized spec (same kind, same
    /// name), which the controller stores as a new version and names in `results`.
    pub new_version: Option<Value>,
}

/// Something a run needs built before it can execute, e.g. the Python environment of its
/// lock. The controller checks `ready_path`, and when it is missing starts one build run per
/// `key` (the run's function version, `action`, `parameters`, on `framework`) and holds the
/// run READY (`waiting_for_build`) until that build ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Prerequisite {
    /// The same for every run needing the same build (e.g. `python-env:<lock hash>`).
    pub key: String,
    /// Exists once the build is done (absolute path on the server's host).
    pub ready_path: String,
    /// The build run: an action of the same function version, its parameters and framework.
    pub action: String,
    pub parameters: Map<String, Value>,
    pub framework: String,
}

/// Dependencies a function version declares, which the server resolves (IO) into a lock once,
/// when the version is first stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Dependencies {
    /// Requirement specifiers (`requests>=2`, `six==1.16.0`).
    pub requirements: Vec<String>,
    /// The interpreter version to resolve for (`3.11`), when the spec names one.
    pub python_version: Option<String>,
}

/// The resolved, pinned form of [`Dependencies`].
#[derive(Debug, Clone, PartialEq)]
pub struct Lock {
    /// The lock file (`uv pip compile` output: `name==version` lines).
    pub text: String,
    /// sha256 hex of `text`.
    pub hash: String,
}

pub trait Runtime: Send + Sync {
    /// The function `kind` this runtime handles, e.g. `python`.
    fn kind(&self) -> &'static str;
    /// The actions it offers, e.g. `["job"]`.
    fn actions(&self) -> &'static [&'static str];
    /// The action of a run request that names none.
    fn default_action(&self) -> &'static str {
        "job"
    }
    /// Whether the controller itself drives its runs (workflows: the workflow engine creates
    /// step runs) instead of handing a [`Runnable`] to a framework. `to_runnable` and
    /// `interpret` are then never called.
    fn is_workflow(&self) -> bool {
        false
    }
    /// Validates a function spec (as submitted) and returns its normalized form, which is what
    /// gets stored. Field paths in errors are relative to the spec (`handler`, `source.code`).
    fn normalize_function(&self, spec: &Value) -> Result<Value, Invalid>;
    /// What the version's content hash is computed over (by default the normalized spec).
    fn hash_input(&self, normalized: &Value) -> Value {
        normalized.clone()
    }
    /// Checks a run's action and parameters against a normalized function spec, without
    /// executing anything. Field paths are relative to the run request (`parameters.n`).
    fn validate_run(
        &self,
        function_spec: &Value,
        action: &str,
        parameters: &Map<String, Value>,
    ) -> Result<(), Invalid>;
    /// Translates a run (whose spec is the self-contained snapshot) into something to execute.
    fn to_runnable(&self, run: &Run) -> Result<Runnable, RuntimeError>;
    /// Reads an execution's outcome (exit status, outputs) into the run's final state.
    fn interpret(&self, run: &Run, outcome: &ExitOutcome) -> Interpretation;
    /// JSON Schema (draft 2020-12) of the spec users write for this kind (`/schemas/{kind}`).
    fn spec_schema(&self) -> Value;
    /// What a normalized spec asks the server to resolve before it is stored (None: nothing).
    /// The server resolves every new version a user applies (a lock in the submitted spec is
    /// replaced); a version made by a build keeps the lock it was built with.
    fn dependencies(&self, _normalized: &Value) -> Option<Dependencies> {
        None
    }
    /// The normalized spec with its resolved lock recorded. The lock is not part of the
    /// content hash (`hash_input` leaves it out): re-applying the same spec makes no version.
    fn with_lock(&self, normalized: Value, _lock: &Lock) -> Value {
        normalized
    }
    /// Whether its runs only make sense in a container image (a `container` function's command
    /// exists in its image, not on the host): the server then refuses frameworks that run
    /// host processes.
    fn requires_containers(&self) -> bool {
        false
    }
    /// What must be built before `run` can execute (checked at every dispatch).
    fn prerequisite(&self, _run: &Run) -> Option<Prerequisite> {
        None
    }
}

/// The registry of runtimes, by kind.
#[derive(Clone, Default)]
pub struct Runtimes {
    by_kind: BTreeMap<&'static str, Arc<dyn Runtime>>,
}

impl Runtimes {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.by_kind.insert(runtime.kind(), runtime);
        self
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Runtime>> {
        self.by_kind.get(kind)
    }

    pub fn kinds(&self) -> Vec<&'static str> {
        self.by_kind.keys().copied().collect()
    }
}
