//! The runs aggregate of the store: [`RunStore`] and the types it takes and returns.

use crate::{Put, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use runplane_domain::workflow::WorkflowStatus;
use runplane_domain::{Run, RunState};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    /// Hash of the request body: a reuse of the key with another body is refused.
    pub request_hash: String,
}

/// Filters for listing runs of one project; results are newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunQuery {
    pub project: String,
    pub function: Option<String>,
    /// Only the runs a workflow run started for its nodes (`status.step_of.run_id`).
    pub step_of: Option<String>,
    /// Any of these states (all when empty).
    pub states: Vec<RunState>,
    /// All of these labels (`key`, `value`).
    pub labels: Vec<(String, String)>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Page size (the store caps it at 1000; 0 means 100).
    pub limit: u32,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunPage {
    pub runs: Vec<Run>,
    pub next_cursor: Option<String>,
}

/// A compare-and-set on a run's (state, attempt), persisted with its transition record.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionRequest {
    pub run_id: String,
    pub from: RunState,
    pub attempt: u32,
    pub to: RunState,
    /// The attempt after the transition (retries: attempt + 1). None keeps it.
    pub next_attempt: Option<u32>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub at: DateTime<Utc>,
    /// Sets `status.results` when Some.
    pub results: Option<Value>,
    /// Sets `status.artifacts` (artifact name → key) when Some.
    pub artifacts: Option<BTreeMap<String, String>>,
    pub attempt_update: Option<AttemptUpdate>,
    /// Makes this server replica the one that follows the run (set when a replica claims it).
    pub owner: Option<String>,
    /// A claim that holds only while the run's task has fewer active runs (PENDING, RUNNING,
    /// STOP) than this: counted and claimed in one transaction, serialized per task, so that
    /// several dispatchers (replicas) never exceed it. `TaskLimitReached` otherwise.
    pub task_limit: Option<TaskLimit>,
}

/// See [`TransitionRequest::task_limit`].
#[derive(Debug, Clone, PartialEq)]
pub struct TaskLimit {
    pub project: String,
    pub task: String,
    pub max_active: u32,
}

impl TransitionRequest {
    pub fn new(run_id: &str, from: RunState, attempt: u32, to: RunState) -> Self {
        TransitionRequest {
            run_id: run_id.to_string(),
            from,
            attempt,
            to,
            next_attempt: None,
            reason: None,
            message: None,
            at: Utc::now().trunc_subsecs(6),
            results: None,
            artifacts: None,
            attempt_update: None,
            owner: None,
            task_limit: None,
        }
    }

    pub fn reason(mut self, reason: &str) -> Self {
        self.reason = Some(reason.to_string());
        self
    }

    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

/// Changes to the attempt record (`status.attempts[attempt]`) made with a transition.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptUpdate {
    /// A new attempt record (READY → PENDING).
    Dispatched { framework: String },
    /// PENDING → RUNNING.
    Started,
    Ended {
        exit_code: Option<i32>,
        signal: Option<i32>,
        reason: Option<String>,
    },
}

/// How many runs hold execution slots (PENDING, RUNNING or STOP). Workflow runs
/// (`pipeline+pipeline:run`) hold none: only their step runs do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActiveCounts {
    pub total: u64,
    /// (project, task) → count, for runs that have a task.
    pub per_task: BTreeMap<(String, String), u64>,
}

/// Runs, their lifecycle compare-and-set (transitions and attempts) and the status a
/// workflow run keeps.
#[async_trait]
pub trait RunStore: Send + Sync + 'static {
    /// Inserts a run with its initial transitions, attempts and owner (a run may be created
    /// already claimed: PENDING, its attempt dispatched). With an idempotency key already used in the
    /// project: returns the earlier run (`created: false`) if the request hash matches, else
    /// `IdempotencyMismatch`.
    async fn create_run(
        &self,
        run: Run,
        idempotency: Option<IdempotencyKey>,
    ) -> StoreResult<Put<Run>>;
    async fn get_run(&self, project: &str, id: &str) -> StoreResult<Option<Run>>;
    /// A run by id alone (framework events know no project).
    async fn get_run_by_id(&self, id: &str) -> StoreResult<Option<Run>>;
    async fn list_runs(&self, query: &RunQuery) -> StoreResult<RunPage>;
    /// Runs of every project in any of `states`, oldest first (the dispatcher's queue).
    async fn runs_in_states(&self, states: &[RunState], limit: u32) -> StoreResult<Vec<Run>>;
    async fn count_active(&self) -> StoreResult<ActiveCounts>;
    /// The state and attempt of run `id` alone: whether a copy of it read earlier is still
    /// current (the workflow engine keeps the workflow runs it drives).
    async fn run_state(&self, id: &str) -> StoreResult<Option<(RunState, u32)>>;
    /// The compare-and-set: applies `request` only if the run is in (`from`, `attempt`), and
    /// only if the lifecycle table allows `from → to`. Returns the updated run.
    async fn transition(&self, request: TransitionRequest) -> StoreResult<Run>;
    /// Sets `status.reason` and `status.message` of a run that stays in `state` (why a READY
    /// run waits, e.g. for which build). Returns false if the run is no longer in (`state`,
    /// `attempt`).
    async fn set_wait_reason(
        &self,
        run_id: &str,
        state: RunState,
        attempt: u32,
        reason: Option<&str>,
        message: Option<&str>,
    ) -> StoreResult<bool>;
    /// Removes the run and its transitions and attempts; false when there was none.
    async fn delete_run(&self, project: &str, id: &str) -> StoreResult<bool>;

    // workflows
    /// Replaces `status.workflow` of the run while its attempt is `attempt` (any state), and
    /// appends a `run` event with `"change": "workflow"` and the node counts. False when the
    /// run is gone or on another attempt.
    async fn set_workflow_status(
        &self,
        run_id: &str,
        attempt: u32,
        status: &WorkflowStatus,
    ) -> StoreResult<bool>;
}
