//! runplane's durable state: the [`Store`] trait, its two implementations — [`sqlite`] (the
//! embedded default, one file, one writer at a time) and [`postgres`] (production: any number
//! of server replicas writing to one database at once) — and the [`conformance`] suite that
//! both run, so that they behave the same.
//!
//! Must not depend on runtimes, frameworks or the server: it stores entities of
//! `runplane-domain` and enforces the run lifecycle's compare-and-set, nothing more.

pub mod conformance;
mod cursor;
pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use runplane_domain::{
    lifecycle::IllegalTransition, FunctionVersion, Project, Run, RunState, SecretMeta,
    ServiceRecord, ServiceStatus, Task,
};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The compare-and-set lost: the run is no longer in the expected state/attempt.
    #[error("run {run_id} is {current_state} (attempt {current_attempt}), expected {expected_state} (attempt {expected_attempt})")]
    Conflict {
        run_id: String,
        expected_state: RunState,
        expected_attempt: u32,
        current_state: RunState,
        current_attempt: u32,
    },
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    #[error("{0} not found")]
    NotFound(String),
    /// The same Idempotency-Key was used before with a different request.
    #[error("idempotency key {key:?} was already used for a different request (run {run_id})")]
    IdempotencyMismatch { key: String, run_id: String },
    #[error("invalid cursor")]
    InvalidCursor,
    /// A claim refused because the run's task already has `limit` active runs.
    #[error("task {task} of project {project} already has {limit} active runs")]
    TaskLimitReached {
        project: String,
        task: String,
        limit: u32,
    },
    #[error("database error: {0}")]
    Database(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The result of an insert that may find the entity already there.
#[derive(Debug, Clone, PartialEq)]
pub struct Put<T> {
    pub value: T,
    /// false when an identical entity existed (same content hash, same idempotency key).
    pub created: bool,
}

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
    pub artifacts: Option<std::collections::BTreeMap<String, String>>,
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
    pub per_task: std::collections::BTreeMap<(String, String), u64>,
}

/// One entry of the durable event log: an entity change, appended in the same transaction as
/// the change itself, so that the log never tells of a change that was rolled back nor misses
/// one that was committed.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Strictly increasing and never reused; clients resume after the last id they saw.
    pub id: u64,
    pub at: DateTime<Utc>,
    pub project: String,
    /// What changed: `run`, `function`, `task`, `service` or `secret` (also the SSE event
    /// name).
    pub kind: String,
    /// The change, as JSON (`type` repeats `kind`).
    pub data: Value,
}

/// A scheduler's (expected `next_fire`, new `next_fire`).
pub type NextFireSwap = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// What one fire of a trigger writes, in one transaction (see [`Store::fire_trigger`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FireBatch {
    pub project: String,
    pub trigger: String,
    /// Schedulers: (the `next_fire` expected, the new one): a compare-and-set that makes the
    /// whole batch happen once. None for lifecycle and webhook fires.
    pub next_fire: Option<NextFireSwap>,
    /// The fire records (unique per trigger and `dedup_key`), each with the run it created.
    pub fires: Vec<(runplane_domain::trigger::Fire, Option<Run>)>,
}

/// The largest page [`Store::events_after`] returns, whatever it is asked for.
pub const MAX_EVENTS_PAGE: u32 = 1000;

/// runplane's durable state. Every method is atomic; `transition` is a compare-and-set.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn ensure_project(&self, name: &str, created_by: &str) -> StoreResult<Project>;
    async fn get_project(&self, name: &str) -> StoreResult<Option<Project>>;
    async fn list_projects(&self) -> StoreResult<Vec<Project>>;

    /// Stores a new function version, unless a version of (project, name) with the same
    /// `status.hash` exists: then returns that one with `created: false`. The project must exist.
    async fn put_function_version(
        &self,
        version: FunctionVersion,
    ) -> StoreResult<Put<FunctionVersion>>;
    /// The given version, or the newest (latest) when `version` is None.
    async fn get_function(
        &self,
        project: &str,
        name: &str,
        version: Option<&str>,
    ) -> StoreResult<Option<FunctionVersion>>;
    /// The latest version of every function of the project, by name.
    async fn list_functions(&self, project: &str) -> StoreResult<Vec<FunctionVersion>>;
    /// Every version, newest first.
    async fn list_function_versions(
        &self,
        project: &str,
        name: &str,
    ) -> StoreResult<Vec<FunctionVersion>>;
    /// Deletes every version; false when there was none.
    async fn delete_function(&self, project: &str, name: &str) -> StoreResult<bool>;

    /// Inserts or replaces a task (keeping its `created`).
    async fn put_task(&self, task: Task) -> StoreResult<Task>;
    async fn get_task(&self, project: &str, name: &str) -> StoreResult<Option<Task>>;
    async fn list_tasks(&self, project: &str) -> StoreResult<Vec<Task>>;
    async fn delete_task(&self, project: &str, name: &str) -> StoreResult<bool>;

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

    /// Points the service `(project, name)` at `run_id`, creating the service when it does
    /// not exist (`created` is kept when it does). Appends a `service` event
    /// (`{"type":"service","project","name","run_id","at"}`) in the same transaction.
    /// `NotFound` when the project or the run does not exist (the run must be one of the
    /// project's). The name keeps pointing at `run_id` if that run is deleted later: the run
    /// id is not a foreign key, and moving or removing the name is the controller's job.
    async fn put_service(
        &self,
        project: &str,
        name: &str,
        run_id: &str,
    ) -> StoreResult<ServiceRecord>;
    async fn get_service(&self, project: &str, name: &str) -> StoreResult<Option<ServiceRecord>>;
    /// The project's services, by name.
    async fn list_services(&self, project: &str) -> StoreResult<Vec<ServiceRecord>>;
    /// Every service of every project (start-up recovery of the gateway's routes).
    async fn all_services(&self) -> StoreResult<Vec<ServiceRecord>>;
    /// Removes the service, only while it still points at `run_id` (a newer run that took
    /// the name over keeps it). Appends a `service` event with `"deleted": true`. False when
    /// there was nothing to remove.
    async fn delete_service(&self, project: &str, name: &str, run_id: &str) -> StoreResult<bool>;
    /// Replaces `status.service` of the run while its attempt is `attempt` (any state), and
    /// appends a `run` event like a transition's with `"change": "service"` and the ready /
    /// desired replica counts. False when the run is gone or on another attempt.
    async fn set_service_status(
        &self,
        run_id: &str,
        attempt: u32,
        status: &ServiceStatus,
    ) -> StoreResult<bool>;

    /// Creates the secret `(project, name)` or replaces its value (keeping `created` and
    /// `created_by`). `ciphertext` is opaque to the store: the server encrypts before and
    /// decrypts after. Appends a `secret` event (`{"type":"secret","project","name","at"}`,
    /// never the value) in the same transaction. `NotFound` when the project does not exist.
    async fn put_secret(
        &self,
        project: &str,
        name: &str,
        ciphertext: &[u8],
        caller: &str,
    ) -> StoreResult<SecretMeta>;
    /// A secret's metadata, never its value.
    async fn get_secret(&self, project: &str, name: &str) -> StoreResult<Option<SecretMeta>>;
    /// The stored ciphertext, for the controller to decrypt at dispatch.
    async fn get_secret_ciphertext(
        &self,
        project: &str,
        name: &str,
    ) -> StoreResult<Option<Vec<u8>>>;
    /// The project's secrets (metadata only), by name.
    async fn list_secrets(&self, project: &str) -> StoreResult<Vec<SecretMeta>>;
    /// Removes the secret; appends a `secret` event with `"deleted": true`. False when there
    /// was none.
    async fn delete_secret(&self, project: &str, name: &str) -> StoreResult<bool>;

    /// Events with an id greater than `after`, oldest first, at most `limit` of them (0 means
    /// 100, capped at [`MAX_EVENTS_PAGE`]); only those of `project` when given. Every change
    /// method above appends its events in its own transaction (`transition`, `create_run`, a
    /// `put_function_version` that creates a version, `put_task`, `put_service`,
    /// `put_secret`, a `delete_secret`, `delete_service` or `set_service_status` that changed
    /// something). Implementations must make
    /// ids visible in increasing order (a reader that saw id N never finds a smaller one
    /// later): resuming after an id relies on it. SQLite has it for free (one writer at a
    /// time); PostgreSQL serializes its appends under an advisory lock (see [`postgres`]).
    async fn events_after(
        &self,
        after: u64,
        project: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<StoredEvent>>;
    /// The id of the newest event (0 when there is none): where a reader that wants only what
    /// happens from now on starts.
    async fn latest_event_id(&self) -> StoreResult<u64>;

    // triggers
    /// Creates or replaces a trigger (keeping `created`, `paused` and an existing token
    /// hash), with `status.next_fire` as given. Appends a `trigger` event. `NotFound` when
    /// the project does not exist. Returns it as stored.
    async fn put_trigger(
        &self,
        trigger: &runplane_domain::trigger::Trigger,
        token_hash: Option<&str>,
    ) -> StoreResult<runplane_domain::trigger::Trigger>;
    /// A trigger with its fire counts (`status.token` is never filled).
    async fn get_trigger(
        &self,
        project: &str,
        name: &str,
    ) -> StoreResult<Option<runplane_domain::trigger::Trigger>>;
    /// The project's triggers (every project's when None), by name.
    async fn list_triggers(
        &self,
        project: Option<&str>,
    ) -> StoreResult<Vec<runplane_domain::trigger::Trigger>>;
    /// Removes a trigger and its fire records (its runs stay); appends a `trigger` event.
    async fn delete_trigger(&self, project: &str, name: &str) -> StoreResult<bool>;
    /// Pauses or resumes a trigger, setting its `next_fire`; None when it does not exist.
    async fn set_trigger_paused(
        &self,
        project: &str,
        name: &str,
        paused: bool,
        next_fire: Option<DateTime<Utc>>,
    ) -> StoreResult<Option<runplane_domain::trigger::Trigger>>;
    /// The sha256 (hex) of a webhook trigger's token.
    async fn trigger_token_hash(&self, project: &str, name: &str) -> StoreResult<Option<String>>;
    /// One fire, atomically: the scheduler's compare-and-set on `next_fire` (when given; only
    /// while the trigger is not paused), the fire records and the runs they created (with their
    /// events, as `create_run`). False, and nothing written, when the compare-and-set lost or a
    /// fire's dedup key was already used: another fire did the work.
    async fn fire_trigger(&self, batch: FireBatch) -> StoreResult<bool>;
    /// A trigger's fires, newest first (at most `limit`; 0 means 100, capped at 1000).
    async fn list_fires(
        &self,
        project: &str,
        trigger: &str,
        limit: u32,
    ) -> StoreResult<Vec<runplane_domain::trigger::Fire>>;
    /// A durable reader's position in the event log (None: never stored).
    async fn get_cursor(&self, name: &str) -> StoreResult<Option<u64>>;
    async fn set_cursor(&self, name: &str, position: u64) -> StoreResult<()>;

    // workflows
    /// Replaces `status.workflow` of the run while its attempt is `attempt` (any state), and
    /// appends a `run` event with `"change": "workflow"` and the node counts. False when the
    /// run is gone or on another attempt.
    async fn set_workflow_status(
        &self,
        run_id: &str,
        attempt: u32,
        status: &runplane_domain::workflow::WorkflowStatus,
    ) -> StoreResult<bool>;
    // artifacts
    /// Stores an artifact version unless the project already has one of the same name with
    /// the same `spec.hash` (then returns that one, `created: false`, and changes nothing).
    /// A new version appends an `artifact` event (`{"type":"artifact","project","name",
    /// "version","key","produced_by","at"}`) in the same transaction. `status.consumers` is
    /// not stored. `NotFound` when the project does not exist.
    async fn put_artifact(
        &self,
        artifact: runplane_domain::Artifact,
    ) -> StoreResult<Put<runplane_domain::Artifact>>;
    /// One version, or the newest one when `version` is None.
    async fn get_artifact(
        &self,
        project: &str,
        name: &str,
        version: Option<&str>,
    ) -> StoreResult<Option<runplane_domain::Artifact>>;
    /// The newest version of each of the project's artifacts, by name; with `produced_by`,
    /// every version that run produced instead.
    async fn list_artifacts(
        &self,
        project: &str,
        produced_by: Option<&str>,
    ) -> StoreResult<Vec<runplane_domain::Artifact>>;
    /// Every version of one artifact, newest first (empty when there is none).
    async fn artifact_versions(
        &self,
        project: &str,
        name: &str,
    ) -> StoreResult<Vec<runplane_domain::Artifact>>;
    /// Removes every version of the artifact (lineage rows stay) and returns them, so that
    /// the caller can remove their files; appends an `artifact` event with `"deleted": true`.
    /// Empty when there was none.
    async fn delete_artifact(
        &self,
        project: &str,
        name: &str,
    ) -> StoreResult<Vec<runplane_domain::Artifact>>;
    /// Records that run `run_id` consumes the artifact versions `inputs` (param → key).
    /// Idempotent: recording a param again replaces its key.
    async fn put_run_inputs(
        &self,
        project: &str,
        run_id: &str,
        inputs: &std::collections::BTreeMap<String, String>,
    ) -> StoreResult<()>;
    /// Ids of the runs that consume the artifact version `key`, sorted.
    async fn artifact_consumers(&self, key: &str) -> StoreResult<Vec<String>>;

    // --- server replicas (several servers on one store) ---

    /// Whether several server processes may share this store (each then holds a lease and
    /// owns the runs it claimed). False for a store only one process can open.
    fn is_shared(&self) -> bool {
        false
    }
    /// Bumped whenever the event log may have grown through another process (PostgreSQL:
    /// `LISTEN`); None when no other process writes to this store.
    fn appends_elsewhere(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// Records that server replica `id` is alive until `lease_until` (creating its record).
    async fn renew_replica_lease(&self, id: &str, lease_until: DateTime<Utc>) -> StoreResult<()>;
    /// The replicas with a lease record, and until when it runs, by id.
    async fn list_replicas(&self) -> StoreResult<Vec<(String, DateTime<Utc>)>>;
    /// Makes replica `to` the owner of every active run (PENDING, RUNNING, STOP, DELETING)
    /// owned by no replica or by one whose lease ended before `expired_before`, and forgets
    /// those replicas. One transaction: a run is adopted by exactly one replica. Returns the
    /// runs adopted.
    async fn adopt_orphaned_runs(
        &self,
        to: &str,
        expired_before: DateTime<Utc>,
    ) -> StoreResult<Vec<Run>>;
    /// The active runs replica `owner` follows.
    async fn runs_owned_by(&self, owner: &str) -> StoreResult<Vec<Run>>;
}
