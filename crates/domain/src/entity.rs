//! The entities of DESIGN.md §2 as they appear on the wire and in the store:
//! `kind`, `metadata`, `spec`, `status` everywhere.

use crate::lifecycle::RunState;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;
pub type Timestamp = DateTime<Utc>;

/// The identity every change is attributed to (`created_by`). Anonymous until authentication.
pub const ANONYMOUS: &str = "anonymous";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Project {
    pub name: String,
    pub created: DateTime<Utc>,
    pub created_by: String,
}

/// A document as a user writes it in a YAML/JSON file (`kind`, `metadata`, `spec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Document {
    pub kind: String,
    pub metadata: DocumentMetadata,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub spec: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentMetadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Metadata of a stored, versioned entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Metadata {
    pub name: String,
    pub project: String,
    /// Version id: the first 16 hex digits of the spec's content hash.
    pub version: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub created: DateTime<Utc>,
    pub created_by: String,
}

/// One immutable version of a function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionVersion {
    /// The runtime: `python`, ...
    pub kind: String,
    pub metadata: Metadata,
    /// The normalized spec of the runtime (see `/schemas/{kind}`).
    #[schema(value_type = Object)]
    pub spec: Value,
    pub status: FunctionStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionStatus {
    /// Full SHA-256 content hash of the normalized spec.
    pub hash: String,
    /// `store://<project>/function/<kind>/<name>:<version>`.
    pub key: String,
}

/// A task: an action of a runtime applied to a function, with its execution settings.
/// `kind` is `<runtime>+<action>`, e.g. `python+job`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    pub kind: String,
    pub metadata: TaskMetadata,
    pub spec: TaskSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskMetadata {
    pub name: String,
    pub project: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub created_by: String,
}

/// Execution settings of a task. Every field is optional; a run without a task uses defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The function: `name` (latest version at run time) or `name:version` (pinned).
    pub function: String,
    /// Where runs execute (`local`, ...); the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework: Option<String>,
    /// At most this many runs of this task are PENDING or RUNNING at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Environment variables for the run's process.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Seconds between SIGTERM and SIGKILL when a run is stopped (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_seconds: Option<u64>,
}

pub const DEFAULT_STOP_GRACE_SECONDS: u64 = 5;

/// What a client posts to start a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// `name` or `name:version` of a function.
    pub function: String,
    /// The runtime action; `job` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// A task whose settings the run takes; when absent, the one task of this function and
    /// action if there is exactly one, else defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    /// Overrides the task's framework.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
}

/// One execution of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Run {
    /// `<runtime>+<action>:run`, e.g. `python+job:run`.
    pub kind: String,
    pub metadata: RunMetadata,
    pub spec: RunSpec,
    pub status: RunStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunMetadata {
    /// A UUIDv7: ordered by creation time.
    pub id: String,
    pub project: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub created_by: String,
}

/// The self-contained snapshot a run executes: the pinned function version's spec, the task's
/// settings and the run's parameters. Nothing outside it is read when the run executes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunSpec {
    /// Key of the pinned function version.
    pub function: String,
    pub function_name: String,
    pub function_version: String,
    pub runtime: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    pub framework: String,
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    pub settings: RunSettings,
    /// The function version's spec, copied.
    #[schema(value_type = Object)]
    pub function_spec: Value,
}

/// Task settings after defaults are applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    pub stop_grace_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunStatus {
    pub state: RunState,
    /// The current attempt, from 1.
    pub attempt: u32,
    /// Why the run is in its state (machine-readable, see `reason.rs`), or why a READY run waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human-readable explanation (e.g. the exception of a failed handler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The handler's return value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub results: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<String>,
    pub transitions: Vec<Transition>,
    pub attempts: Vec<Attempt>,
}

/// One change of state, as persisted by the compare-and-set that made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Transition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<RunState>,
    pub to: RunState,
    pub at: DateTime<Utc>,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One try of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    pub number: u32,
    pub framework: String,
    pub dispatched: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Run {
    pub fn key(&self) -> String {
        format!(
            "store://{}/run/{}/{}",
            self.metadata.project, self.kind, self.metadata.id
        )
    }
}

/// `python` + `job` → `python+job`.
pub fn task_kind(runtime: &str, action: &str) -> String {
    format!("{runtime}+{action}")
}

/// `python+job` → `python+job:run`.
pub fn run_kind(runtime: &str, action: &str) -> String {
    format!("{runtime}+{action}:run")
}

/// `python+job` → (`python`, `job`).
pub fn split_task_kind(kind: &str) -> Option<(&str, &str)> {
    kind.split_once('+')
        .filter(|(runtime, action)| !runtime.is_empty() && !action.is_empty())
}
