//! The conformance suite: the behaviour every [`Store`](crate::Store) implementation must have,
//! written once and run against each of them (`tests/sqlite_conformance.rs`,
//! `tests/postgres_conformance.rs`).
//!
//! Each case is a public `async fn(Arc<dyn Store>)` that panics on a violation; it gets a fresh,
//! empty store. [`store_conformance_tests!`](crate::store_conformance_tests) turns all of them
//! into `#[tokio::test]`s, given an expression that evaluates to a future of a new store:
//!
//! ```text
//! async fn fresh_store() -> MyStore { /* a new, empty store */ }
//! runplane_store::store_conformance_tests!(fresh_store());
//! ```
//!
//! The calling crate needs `tokio` (with the `macros` and `rt-multi-thread` features) among its
//! dev-dependencies. The cases live in the library, behind the feature `testing` (never enabled
//! in a shipped binary), rather than under `cfg(test)` so that other crates can run them
//! against their implementations: `runplane-store = { ..., features = ["testing"] }` among
//! their dev-dependencies.
//!
//! Timestamps built here are truncated to microseconds, the finest precision every backend
//! keeps, so that what is read back can be compared with `==` to what was written.

mod artifacts;
mod catalog;
mod events;
mod listing;
mod replicas;
mod runs;
mod secrets;
mod services;
mod transitions;
mod triggers;
mod workflows;

pub use artifacts::*;
pub use catalog::*;
pub use events::*;
pub use listing::*;
pub use replicas::*;
pub use runs::*;
pub use secrets::*;
pub use services::*;
pub use transitions::*;
pub use triggers::*;
pub use workflows::*;

use crate::TransitionRequest;
use chrono::{DateTime, SubsecRound, Utc};
use runplane_domain::{
    hash::{content_hash, version_id},
    key::Key,
    run_kind, service_url, FunctionStatus, FunctionVersion, Labels, Metadata, ReplicaStatus, Run,
    RunMetadata, RunSettings, RunSpec, RunState, RunStatus, ServiceStatus, Task, TaskMetadata,
    TaskSpec, Transition,
};
use serde_json::{json, Value};

/// Generates one `#[tokio::test]` per conformance case. `$make` is evaluated once per test and
/// must be a future resolving to a fresh store (any type implementing `Store`).
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@cases $make;
            projects_ensure_is_idempotent,
            function_versions_deduplicate_by_hash,
            function_versions_latest_and_listing,
            function_versions_need_their_project,
            tasks_upsert_keeps_created,
            runs_round_trip,
            runs_idempotency,
            transition_happy_path,
            transition_conflict_reports_current_state,
            transition_illegal_changes_nothing,
            transition_retry_records_a_second_attempt,
            transition_of_unknown_run_is_not_found,
            transition_race_has_one_winner,
            run_state_follows_transitions,
            set_wait_reason_is_not_a_transition,
            list_runs_filters,
            list_runs_paginates_newest_first,
            list_runs_rejects_invalid_cursor,
            runs_in_states_is_oldest_first,
            count_active_per_task,
            delete_run_removes_everything,
            events_follow_a_run_in_order,
            events_not_appended_by_a_lost_transition,
            events_of_catalog_changes,
            events_ids_increase_and_page,
            services_put_get_list_all,
            services_upsert_keeps_created_and_moves_run,
            services_need_their_project_and_run,
            services_delete_only_with_the_matching_run,
            services_events,
            service_status_round_trips,
            secrets_put_get_list_delete,
            secrets_upsert_keeps_created,
            secrets_need_their_project,
            secrets_events_never_carry_the_value,
            service_status_refused_changes_nothing,
            workflow_links_and_status_round_trip,
            count_active_ignores_workflow_runs,
            triggers_apply_pause_and_delete,
            a_tick_fires_once_with_its_run,
            // artifacts
            artifacts_put_dedupes_by_hash,
            artifacts_versions_newest_first,
            artifacts_consumers_from_run_inputs,
            // replicas
            replicas_claim_own_and_adopt_once,
            ended_runs_are_never_adopted,
            claims_never_exceed_a_task_limit,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let store = $make.await;
                $crate::conformance::$case(::std::sync::Arc::new(store)).await;
            }
        )*
    };
}

/// Now, at the microsecond precision every store keeps.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A function version of kind `python` whose hash and version id derive from `spec`.
pub fn function_version(project: &str, name: &str, spec: Value) -> FunctionVersion {
    let hash = content_hash(&spec);
    let version = version_id(&hash);
    FunctionVersion {
        kind: "python".to_string(),
        metadata: Metadata {
            name: name.to_string(),
            project: project.to_string(),
            version: version.clone(),
            labels: Labels::from([("team".to_string(), "data".to_string())]),
            description: Some(format!("the {name} function")),
            created: now(),
            created_by: "conformance".to_string(),
        },
        spec,
        status: FunctionStatus {
            hash,
            key: Key::new(project, "function", "python", name, Some(&version)).to_string(),
        },
    }
}

/// A `python+job` task of `function`.
pub fn task(project: &str, name: &str, function: &str) -> Task {
    let at = now();
    Task {
        kind: "python+job".to_string(),
        metadata: TaskMetadata {
            name: name.to_string(),
            project: project.to_string(),
            labels: Labels::new(),
            created: at,
            updated: at,
            created_by: "conformance".to_string(),
        },
        spec: TaskSpec {
            function: function.to_string(),
            framework: Some("local".to_string()),
            max_concurrency: Some(2),
            ..TaskSpec::default()
        },
    }
}

/// Builds test runs: a `python+job` run of a function, CREATED at attempt 1 unless moved on.
#[derive(Debug, Clone)]
pub struct RunBuilder {
    run: Run,
}

impl RunBuilder {
    pub fn new(project: &str, function: &str) -> Self {
        let at = now();
        let id = uuid::Uuid::now_v7().to_string();
        let version = "0123456789abcdef";
        RunBuilder {
            run: Run {
                kind: run_kind("python", "job"),
                metadata: RunMetadata {
                    id,
                    project: project.to_string(),
                    labels: Labels::new(),
                    created: at,
                    updated: at,
                    created_by: "conformance".to_string(),
                },
                spec: RunSpec {
                    function: Key::new(project, "function", "python", function, Some(version))
                        .to_string(),
                    function_name: function.to_string(),
                    function_version: version.to_string(),
                    runtime: "python".to_string(),
                    action: "job".to_string(),
                    task: None,
                    framework: "local".to_string(),
                    parameters: json!({ "n": 3, "name": "world" })
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                    settings: RunSettings {
                        max_concurrency: None,
                        env: [("MODE".to_string(), "test".to_string())].into(),
                        stop_grace_seconds: 5,
                        ..RunSettings::default()
                    },
                    function_spec: json!({ "source": { "code": "def handler(): pass" }, "handler": "handler" }),
                    inputs: Default::default(),
                    reuse: Default::default(),
                },
                status: RunStatus {
                    service: None,
                    step_of: None,
                    produced_by: None,
                    workflow: None,
                    owner: None,
                    artifacts: Default::default(),
                    state: RunState::Created,
                    attempt: 1,
                    reason: None,
                    message: None,
                    results: None,
                    rerun_of: None,
                    transitions: vec![Transition {
                        from: None,
                        to: RunState::Created,
                        at,
                        attempt: 1,
                        reason: None,
                        message: None,
                    }],
                    attempts: Vec::new(),
                },
            },
        }
    }

    /// Moves the run to `state`, recording the transition (not checked against the lifecycle:
    /// this fabricates history).
    pub fn state(mut self, state: RunState) -> Self {
        let status = &mut self.run.status;
        status.transitions.push(Transition {
            from: Some(status.state),
            to: state,
            at: self.run.metadata.created,
            attempt: status.attempt,
            reason: None,
            message: None,
        });
        status.state = state;
        self
    }

    /// CREATED → BUILT → READY.
    pub fn ready(self) -> Self {
        self.state(RunState::Built).state(RunState::Ready)
    }

    pub fn task(mut self, task: &str) -> Self {
        self.run.spec.task = Some(task.to_string());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.run
            .metadata
            .labels
            .insert(key.to_string(), value.to_string());
        self
    }

    /// Sets `created` and `updated` (and the times of the transitions so far).
    pub fn created(mut self, at: DateTime<Utc>) -> Self {
        self.run.metadata.created = at;
        self.run.metadata.updated = at;
        for transition in &mut self.run.status.transitions {
            transition.at = at;
        }
        self
    }

    pub fn build(self) -> Run {
        self.run
    }
}

/// `status.service` of a run serving `(project, name)` that wants `desired` replicas, of which
/// the first `ready` are ready (each replica on its own port, the last one restarted once).
pub fn service_status(project: &str, name: &str, desired: u32, ready: u32) -> ServiceStatus {
    ServiceStatus {
        name: name.to_string(),
        url: service_url(project, name),
        desired,
        replicas: (0..desired)
            .map(|index| ReplicaStatus {
                index,
                endpoint: format!("127.0.0.1:{}", 40000 + index),
                ready: index < ready,
                restarts: u32::from(index + 1 == desired),
                pid: Some(1000 + index),
                last_exit: (index + 1 == desired).then(|| "exit code 1".to_string()),
            })
            .collect(),
    }
}

/// A compare-and-set request timed at [`now`].
/// A READY run `hello`, stored in project `demo` (made if needed).
pub async fn stored_ready_run(store: &dyn crate::Store) -> Run {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let run = RunBuilder::new("demo", "hello").ready().build();
    store.create_run(run.clone(), None).await.expect("create");
    run
}

pub fn request(run: &Run, from: RunState, attempt: u32, to: RunState) -> TransitionRequest {
    TransitionRequest {
        at: now(),
        ..TransitionRequest::new(&run.metadata.id, from, attempt, to)
    }
}
