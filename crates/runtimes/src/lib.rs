//! Runtimes (DESIGN.md §3): each knows one `kind` of function. A runtime validates and
//! normalizes a function spec, checks a run's parameters, translates a run into a
//! [`Runnable`], and interprets how its execution ended.
//!
//! Runtimes are pure: no files, no processes, no network, no clock. They know nothing about
//! where things execute (that is `runplane-frameworks`), and must not depend on the store or
//! the server. Adding a runtime means implementing [`Runtime`] and registering it in
//! [`Runtimes`]; the control plane does not change.

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
}

pub trait Runtime: Send + Sync {
    /// The function `kind` this runtime handles, e.g. `python`.
    fn kind(&self) -> &'static str;
    /// The actions it offers, e.g. `["job"]`.
    fn actions(&self) -> &'static [&'static str];
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
