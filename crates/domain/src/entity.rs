//! The entities of `docs/concepts.md` as they appear on the wire and in the store:
//! `kind`, `metadata`, `spec`, `status` everywhere.

use crate::invalid::{Invalid, Problems};
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
    /// Environment variables set from the project's secrets: variable name → secret name.
    /// The values are decrypted at dispatch and never enter the run's spec.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Seconds between SIGTERM and SIGKILL when a run is stopped (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_seconds: Option<u64>,
    /// An attempt PENDING or RUNNING longer than this (from its dispatch) is stopped and the
    /// run ends in ERROR (`timeout`). No limit when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Start a new attempt when one fails; a single attempt when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(inline)]
    pub retry: Option<RetryPolicy>,
    /// The most bytes one attempt's log may hold; further output is discarded after a
    /// `system` line saying so (default 64 MiB, see `runnable::DEFAULT_LOG_LIMIT_BYTES`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_limit_bytes: Option<u64>,
    /// Services: how many replicas serve requests (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Services: a replica not ready this long after it started fails the run with reason
    /// `not_ready` (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout_seconds: Option<u64>,
    /// cpu/memory limits, applied by container frameworks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(inline)]
    pub resources: Option<Resources>,
}

/// cpu/memory limits as users write them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU cores (0.5 = half a core), from 0.01 to 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Memory: bytes as a number, or a string with a unit (`512Mi`, `2Gi`, `100M`, `1G`).
    /// At least 6 MiB (the engines' floor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub memory: Option<Value>,
}

/// The smallest memory limit engines accept.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

impl Resources {
    /// Field errors under `field` (`spec.resources`, `resources`).
    pub fn validate(&self, field: &str) -> Result<(), Invalid> {
        let mut problems = Problems::new();
        if let Some(cpu) = self.cpu {
            if !cpu.is_finite() || !(0.01..=1024.0).contains(&cpu) {
                problems.add(
                    format!("{field}.cpu"),
                    format!("must be a number of cores between 0.01 and 1024, not {cpu}"),
                );
            }
        }
        if let Err(message) = self.memory_bytes() {
            problems.add(format!("{field}.memory"), message);
        }
        problems.finish()
    }

    /// `memory` in bytes.
    pub fn memory_bytes(&self) -> Result<Option<u64>, String> {
        let Some(memory) = &self.memory else {
            return Ok(None);
        };
        let bytes = match memory {
            Value::Number(n) => n
                .as_u64()
                .ok_or_else(|| format!("must be a whole number of bytes, not {n}"))?,
            Value::String(text) => parse_quantity(text)?,
            other => return Err(format!("must be bytes or a string like 512Mi, not {other}")),
        };
        if bytes < MIN_MEMORY_BYTES {
            return Err(format!(
                "must be at least 6Mi ({MIN_MEMORY_BYTES} bytes), not {bytes} bytes"
            ));
        }
        Ok(Some(bytes))
    }

    /// As a framework takes them; invalid values (never stored) count as absent.
    pub fn limits(&self) -> crate::runnable::Limits {
        crate::runnable::Limits {
            cpus: self.cpu,
            memory_bytes: self.memory_bytes().ok().flatten(),
        }
    }
}

/// `512Mi`, `2Gi`, `100M`, `1G`, `1024k`, `4096`: Kubernetes-style quantities of bytes.
fn parse_quantity(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a quantity like 512Mi or 1G"))?;
    let factor: u64 = match unit {
        "" => 1,
        "k" | "K" => 1000,
        "M" => 1000_u64.pow(2),
        "G" => 1000_u64.pow(3),
        "T" => 1000_u64.pow(4),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit {unit:?} (use Ki, Mi, Gi, Ti, k, M, G or T)"
            ))
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

pub const DEFAULT_STOP_GRACE_SECONDS: u64 = 5;
pub const DEFAULT_READY_TIMEOUT_SECONDS: u64 = 60;
/// The most replicas one service may ask for.
pub const MAX_REPLICAS: u32 = 64;

/// How a run retries an attempt that ended in ERROR. Attempt `n + 1` waits
/// `backoff_seconds * backoff_factor^(n - 1)` after attempt `n` ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 to 100).
    pub max_attempts: u32,
    /// Seconds before the second attempt (default 0).
    #[serde(default)]
    pub backoff_seconds: f64,
    /// Each further delay is the previous one times this (default 2, at least 1).
    #[serde(default = "default_backoff_factor")]
    pub backoff_factor: f64,
    /// The reasons of an ERROR that retry (default `failed`, `lost`, `killed`). Stops — by a
    /// person (`user`), a replacement or a timeout — are never retried.
    #[serde(default = "default_retry_on")]
    pub on: Vec<String>,
}

/// Most attempts a retry policy may ask for: a run is not a loop.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Longest delay between two attempts; longer computed delays are cut to it, so that a large
/// factor cannot overflow time arithmetic.
pub const MAX_RETRY_DELAY_SECONDS: f64 = 86_400.0;

fn default_backoff_factor() -> f64 {
    2.0
}

fn default_retry_on() -> Vec<String> {
    crate::reason::DEFAULT_RETRY_ON
        .iter()
        .map(|reason| reason.to_string())
        .collect()
}

impl RetryPolicy {
    /// Field errors relative to the policy (`max_attempts`, `on[1]`...); callers add the prefix.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut problems = Problems::new();
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            problems.add(
                "max_attempts",
                format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
            );
        }
        if !self.backoff_seconds.is_finite()
            || !(0.0..=MAX_RETRY_DELAY_SECONDS).contains(&self.backoff_seconds)
        {
            problems.add(
                "backoff_seconds",
                format!("must be a number from 0 to {MAX_RETRY_DELAY_SECONDS}"),
            );
        }
        if !self.backoff_factor.is_finite() || self.backoff_factor < 1.0 {
            problems.add("backoff_factor", "must be a finite number of at least 1");
        }
        for (index, on) in self.on.iter().enumerate() {
            if !crate::reason::RETRYABLE.contains(&on.as_str()) {
                problems.add(
                    format!("on[{index}]"),
                    format!(
                        "{on:?} is not a reason that can be retried (one of: {})",
                        crate::reason::RETRYABLE.join(", ")
                    ),
                );
            }
        }
        problems.finish()
    }

    /// Whether an attempt `attempt` that ended in ERROR with `reason` is followed by another.
    pub fn retries(&self, reason: &str, attempt: u32) -> bool {
        attempt < self.max_attempts && self.on.iter().any(|on| on == reason)
    }

    /// The delay before attempt `next` (2, 3, ...), capped at [`MAX_RETRY_DELAY_SECONDS`].
    pub fn delay_before(&self, next: u32) -> std::time::Duration {
        let exponent = i32::try_from(next.saturating_sub(2)).unwrap_or(i32::MAX);
        let seconds = self.backoff_seconds * self.backoff_factor.powi(exponent);
        let seconds = if seconds.is_finite() {
            seconds.clamp(0.0, MAX_RETRY_DELAY_SECONDS)
        } else {
            MAX_RETRY_DELAY_SECONDS
        };
        std::time::Duration::from_secs_f64(seconds)
    }
}

/// Validates a timeout setting (`field` names it in errors).
/// `replicas` of a task or run request: 1 to [`MAX_REPLICAS`].
pub fn validate_replicas(field: &str, replicas: Option<u32>) -> Result<(), Invalid> {
    match replicas {
        Some(n) if n == 0 || n > MAX_REPLICAS => Err(Invalid::field(
            field,
            format!("must be between 1 and {MAX_REPLICAS}, not {n}"),
        )),
        _ => Ok(()),
    }
}

pub fn validate_timeout_seconds(field: &str, timeout: Option<u64>) -> Result<(), Invalid> {
    match timeout {
        Some(0) => Err(Invalid::field(field, "must be at least 1")),
        _ => Ok(()),
    }
}

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
    /// Overrides the task's `timeout_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Overrides the task's `retry` policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Services: how many replicas (overrides the task's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Environment variable → secret name, added to (and overriding) the task's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Overrides the task's cpu/memory limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(inline)]
    pub resources: Option<Resources>,
    /// Input artifacts: parameter name → artifact (`name`, `name:version` or a
    /// `store://` key). The run's handler gets a local path to it as that parameter.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
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
    /// Input artifacts: parameter name → the pinned artifact key, resolved at submit.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    /// Workflow runs rerun from a failure: node name → the run (of an earlier workflow run)
    /// whose results the node reuses instead of running again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reuse: BTreeMap<String, String>,
}

/// Task settings after defaults are applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Environment variable → secret name (the task's and the request's). Names only: the
    /// values are read and decrypted when an attempt is dispatched, never stored here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    pub stop_grace_seconds: u64,
    /// See [`TaskSpec::timeout_seconds`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// See [`TaskSpec::retry`]; defaults filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// See [`TaskSpec::log_limit_bytes`]; the framework's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_limit_bytes: Option<u64>,
    /// Services: see [`TaskSpec::replicas`] (1 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Services: see [`TaskSpec::ready_timeout_seconds`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout_seconds: Option<u64>,
    /// See [`TaskSpec::resources`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

impl RunSettings {
    pub fn replicas(&self) -> u32 {
        self.replicas.unwrap_or(1)
    }

    pub fn ready_timeout_seconds(&self) -> u64 {
        self.ready_timeout_seconds
            .unwrap_or(DEFAULT_READY_TIMEOUT_SECONDS)
    }
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
    /// Service runs: the service this run backs and its replicas, as last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceStatus>,
    /// Runs a workflow run started for one of its nodes: which run, which step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_of: Option<crate::workflow::StepOf>,
    /// Runs a trigger created: the trigger's key (`store://<project>/trigger/<kind>/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub produced_by: Option<String>,
    /// The artifacts the run logged (`context.log_artifact`): name → key
    /// (`store://<project>/artifact/<kind>/<name>:<version>`), set when it ended.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, String>,
    /// Workflow runs: every node and its state, as last recorded by the workflow engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<crate::workflow::WorkflowStatus>,
    /// The server replica that follows the run's execution (set when it claims the run,
    /// moved when another replica adopts it after the owner's lease ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub transitions: Vec<Transition>,
    pub attempts: Vec<Attempt>,
}

/// `status.service` of a service run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceStatus {
    /// The service name the run serves (`/services/{project}/{name}/`).
    pub name: String,
    /// The gateway URL path of the service, relative to the server (`/services/p/n/`).
    pub url: String,
    /// How many replicas the run is asked to have right now (grows during a rollout).
    pub desired: u32,
    pub replicas: Vec<crate::ReplicaStatus>,
}

impl ServiceStatus {
    pub fn ready(&self) -> usize {
        self.replicas.iter().filter(|r| r.ready).count()
    }

    pub fn restarts(&self) -> u32 {
        self.replicas.iter().map(|r| r.restarts).sum()
    }
}

/// A stable name `(project, name)` pointing at the service run that currently backs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceRecord {
    pub project: String,
    pub name: String,
    /// The run that holds (or is taking over) the name.
    pub run_id: String,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

/// What the store and the API tell about a secret: never its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretMeta {
    pub project: String,
    pub name: String,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub created_by: String,
}

/// The gateway path prefix of a service.
pub fn service_url(project: &str, name: &str) -> String {
    format!("/services/{project}/{name}/")
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn resources(json: serde_json::Value) -> Resources {
        serde_json::from_value(json).expect("resources")
    }

    #[test]
    fn memory_quantities_are_bytes() {
        for (given, bytes) in [
            (serde_json::json!("512Mi"), 512 << 20),
            (serde_json::json!("2Gi"), 2 << 30),
            (serde_json::json!("100M"), 100_000_000),
            (serde_json::json!("1G"), 1_000_000_000),
            (serde_json::json!(" 8Mi "), 8 << 20),
            (serde_json::json!(67_108_864), 64 << 20),
        ] {
            let r = resources(serde_json::json!({ "memory": given }));
            assert_eq!(r.memory_bytes(), Ok(Some(bytes)), "{given}");
            assert!(r.validate("resources").is_ok());
            assert_eq!(r.limits().memory_bytes, Some(bytes));
        }
    }

    #[test]
    fn bad_resources_name_their_field() {
        for (json, field) in [
            (
                serde_json::json!({"memory": "12 bytes"}),
                "spec.resources.memory",
            ),
            (
                serde_json::json!({"memory": "1Xi"}),
                "spec.resources.memory",
            ),
            (
                serde_json::json!({"memory": "1Mi"}),
                "spec.resources.memory",
            ),
            (serde_json::json!({"memory": -5}), "spec.resources.memory"),
            (serde_json::json!({"memory": true}), "spec.resources.memory"),
            (
                serde_json::json!({"memory": "99999999999999999999Gi"}),
                "spec.resources.memory",
            ),
            (serde_json::json!({"cpu": 0.0}), "spec.resources.cpu"),
            (serde_json::json!({"cpu": 2000.0}), "spec.resources.cpu"),
        ] {
            let invalid = resources(json.clone())
                .validate("spec.resources")
                .expect_err("invalid");
            let fields: Vec<&str> = invalid.0.iter().map(|e| e.field.as_str()).collect();
            assert_eq!(fields, [field], "{json}");
        }
        assert!(serde_json::from_value::<Resources>(serde_json::json!({"gpu": 1})).is_err());
    }

    fn policy(json: serde_json::Value) -> RetryPolicy {
        serde_json::from_value(json).expect("a policy")
    }

    #[test]
    fn a_policy_fills_its_defaults() {
        let retry = policy(serde_json::json!({"max_attempts": 3}));
        assert_eq!(retry.backoff_seconds, 0.0);
        assert_eq!(retry.backoff_factor, 2.0);
        assert_eq!(retry.on, ["failed", "lost", "killed"]);
        assert!(retry.validate().is_ok());
        assert!(
            serde_json::from_value::<RetryPolicy>(
                serde_json::json!({"max_attempts": 3, "tries": 1})
            )
            .is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn delays_grow_by_the_factor_from_the_second_attempt() {
        let retry = policy(
            serde_json::json!({"max_attempts": 5, "backoff_seconds": 1.5, "backoff_factor": 2}),
        );
        assert_eq!(retry.delay_before(2), Duration::from_millis(1500));
        assert_eq!(retry.delay_before(3), Duration::from_secs(3));
        assert_eq!(retry.delay_before(4), Duration::from_secs(6));
        // Attempt 1 never waits; nonsense input does not panic.
        assert_eq!(retry.delay_before(1), Duration::from_millis(1500));
        assert_eq!(retry.delay_before(0), Duration::from_millis(1500));
        let none = policy(serde_json::json!({"max_attempts": 5}));
        assert_eq!(none.delay_before(4), Duration::ZERO);
    }

    #[test]
    fn huge_delays_are_capped() {
        let retry = policy(
            serde_json::json!({"max_attempts": 100, "backoff_seconds": 86400, "backoff_factor": 1e300}),
        );
        let cap = Duration::from_secs_f64(MAX_RETRY_DELAY_SECONDS);
        assert_eq!(retry.delay_before(100), cap);
        assert_eq!(retry.delay_before(u32::MAX), cap);
    }

    #[test]
    fn retries_only_listed_reasons_while_attempts_remain() {
        let retry = policy(serde_json::json!({"max_attempts": 3}));
        assert!(retry.retries("failed", 1));
        assert!(retry.retries("lost", 2));
        assert!(!retry.retries("failed", 3), "the third attempt is the last");
        assert!(!retry.retries("user", 1));
        assert!(!retry.retries("timeout", 1));
        assert!(!retry.retries("start_failed", 1), "not in the default list");
    }

    #[test]
    fn invalid_policies_name_their_fields() {
        let fields = |retry: RetryPolicy| -> Vec<String> {
            retry
                .validate()
                .err()
                .map(|invalid| invalid.0.into_iter().map(|e| e.field).collect())
                .unwrap_or_default()
        };
        let mut retry = policy(serde_json::json!({"max_attempts": 0}));
        assert_eq!(fields(retry.clone()), ["max_attempts"]);
        retry.max_attempts = 101;
        assert_eq!(fields(retry.clone()), ["max_attempts"]);
        retry.max_attempts = 100;
        assert!(fields(retry.clone()).is_empty());
        for bad in [-1.0, f64::NAN, f64::INFINITY, MAX_RETRY_DELAY_SECONDS + 1.0] {
            let retry = RetryPolicy {
                backoff_seconds: bad,
                ..retry.clone()
            };
            assert_eq!(fields(retry), ["backoff_seconds"], "{bad}");
        }
        for bad in [0.5, f64::NAN, f64::INFINITY] {
            let retry = RetryPolicy {
                backoff_factor: bad,
                ..retry.clone()
            };
            assert_eq!(fields(retry), ["backoff_factor"], "{bad}");
        }
        let retry = RetryPolicy {
            on: vec![
                "failed".into(),
                "user".into(),
                "timeout".into(),
                "nope".into(),
            ],
            ..retry
        };
        assert_eq!(fields(retry), ["on[1]", "on[2]", "on[3]"]);
        assert!(validate_timeout_seconds("timeout_seconds", Some(0)).is_err());
        assert!(validate_timeout_seconds("timeout_seconds", Some(1)).is_ok());
        assert!(validate_timeout_seconds("timeout_seconds", None).is_ok());
    }
}
