//! The controller on a scripted framework: dispatch, concurrency limits, retries with backoff,
//! timeouts, stops and resumes, lost and never-started executions, and workflow steps — with
//! a real (temporary) SQLite store and the real runtimes, but no processes: the test plays
//! the framework, answering each call with the events a real one would send. Waits are on
//! the controller's bus, never on sleeps.

use runplane_domain::{reason, Document, Run, RunRequest, RunState};
use runplane_frameworks::scripted::{scripted, Script};
use runplane_frameworks::{EventKind, ExecutionId};
use runplane_logstore::file::FileLogStore;
use runplane_runtimes::pipeline::PipelineRuntime;
use runplane_runtimes::python::{PythonConfig, PythonRuntime};
use runplane_runtimes::Runtimes;
use runplane_server::controller::bus::BusEvent;
use runplane_server::controller::{Controller, ControllerOptions, Frameworks};
use runplane_store::sqlite::SqliteStore;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;

const PROJECT: &str = "p";
const PATIENCE: Duration = Duration::from_secs(30);

struct Harness {
    controller: Controller,
    script: Script,
    _home: tempfile::TempDir,
}

async fn harness(max_concurrent_runs: u32) -> Harness {
    let home = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&home.path().join("runplane.db"))
            .await
            .unwrap(),
    );
    let logs = Arc::new(FileLogStore::new(home.path().join("logs")));
    let (events, framework_events) =
        runplane_frameworks::events::channel(runplane_frameworks::events::DEFAULT_CAPACITY);
    let (framework, script) = scripted("local", events);
    let runtimes = Runtimes::new()
        .with(Arc::new(PythonRuntime::new(
            PythonConfig {
                environments_dir: home.path().join("envs").display().to_string(),
                ..PythonConfig::default()
            },
            Arc::new(runplane_server::inspector::InterpreterInspector::new(None)),
        )))
        .with(Arc::new(PipelineRuntime::new()));
    let artifacts = runplane_server::artifacts::ArtifactStore::local(
        &home.path().join("artifacts"),
        &home.path().join("artifact-cache"),
    )
    .unwrap();
    let (controller, _tasks) = Controller::start(
        store,
        runtimes,
        Frameworks::default().with(Arc::new(framework)),
        logs,
        framework_events,
        ControllerOptions {
            max_concurrent_runs,
            default_framework: "local".to_string(),
            gateway: runplane_server::gateway::GatewayOptions::default(),
            secrets: runplane_server::secrets::SecretBox::new(
                &runplane_server::secrets::SecretKey::generate().unwrap(),
            ),
            resolver: runplane_server::resolver::Resolver {
                uv: "uv".to_string(),
                python: "/usr/bin/python3".to_string(),
            },
            artifacts,
            replica: Default::default(),
            outputs_uploads: None,
        },
    );
    Harness {
        controller,
        script,
        _home: home,
    }
}

impl Harness {
    async fn apply(&self, kind: &str, name: &str, spec: Value) {
        let document: Document =
            serde_json::from_value(json!({"kind": kind, "metadata": {"name": name}, "spec": spec}))
                .unwrap();
        self.controller
            .catalog()
            .apply_function(PROJECT, document, "test")
            .await
            .unwrap_or_else(|error| panic!("apply {name}: {error}"));
    }

    /// A Python function that is never executed (the framework is scripted): only its
    /// signature matters, for the parameters runs may pass.
    async fn function(&self, name: &str) {
        self.apply(
            "python",
            name,
            json!({"handler": "handler", "source": {"code": "def handler(v=0):\n    return v\n"}}),
        )
        .await;
    }

    async fn submit(&self, request: Value) -> String {
        let request: RunRequest = serde_json::from_value(request).unwrap();
        let put = self
            .controller
            .submit_run(PROJECT, request, "test", None)
            .await
            .unwrap_or_else(|error| panic!("submit: {error}"));
        put.value.metadata.id
    }

    async fn run(&self, id: &str) -> Run {
        self.controller.get_run(PROJECT, id).await.unwrap()
    }

    /// Waits until run `id` is in `state`, woken by the bus (the store says what is true).
    async fn wait_state(&self, id: &str, state: RunState) -> Run {
        let mut bus = self.controller.bus().subscribe();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let run = self.run(id).await;
            if run.status.state == state {
                return run;
            }
            loop {
                match tokio::time::timeout_at(deadline, bus.recv()).await {
                    Err(_) => panic!("run {id} never reached {state}: {:#?}", run.status),
                    Ok(Ok(BusEvent::RunChanged { run_id, .. })) if run_id == id => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(RecvError::Lagged(_))) => break,
                    Ok(Err(RecvError::Closed)) => panic!("the bus closed"),
                }
            }
        }
    }
}

fn results(value: Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap()
}

fn execution_of(id: &str, attempt: u32) -> ExecutionId {
    ExecutionId {
        run_id: id.to_string(),
        attempt,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_started_on_its_framework_and_completes_with_its_results() {
    let mut h = harness(4).await;
    h.function("f").await;
    let id = h
        .submit(json!({"function": "f", "parameters": {"v": 3}}))
        .await;

    let (execution, _runnable) = h.script.expect_start().await;
    assert_eq!(execution, execution_of(&id, 1));
    assert_eq!(h.run(&id).await.status.state, RunState::Pending);
    h.script.started(&execution).await;
    h.wait_state(&id, RunState::Running).await;
    h.script
        .exited(
            &execution,
            0,
            &[("results.json", &results(json!({"v": 3})))],
        )
        .await;
    let run = h.wait_state(&id, RunState::Completed).await;
    assert_eq!(run.status.results, Some(json!({"v": 3})));
    assert_eq!(run.status.attempts.len(), 1);
    assert_eq!(run.status.attempts[0].exit_code, Some(0));
    // The end is recorded before the framework may forget the execution.
    h.script.expect_cleanup(&execution).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_wait_for_a_free_slot() {
    let mut h = harness(1).await;
    h.function("f").await;
    let first = h.submit(json!({"function": "f"})).await;
    let second = h.submit(json!({"function": "f"})).await;

    let (execution, _) = h.script.expect_start().await;
    assert_eq!(execution.run_id, first, "runs start in submission order");
    h.script.started(&execution).await;
    h.wait_state(&first, RunState::Running).await;
    assert_eq!(h.run(&second).await.status.state, RunState::Ready);

    h.script
        .exited(&execution, 0, &[("results.json", b"null".as_slice())])
        .await;
    let (next, _) = h.script.expect_start().await;
    assert_eq!(next, execution_of(&second, 1));
    assert_eq!(
        h.run(&first).await.status.state,
        RunState::Completed,
        "the slot was free only once the first run's end was recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_is_retried_after_its_backoff() {
    let mut h = harness(4).await;
    h.function("f").await;
    let id = h
        .submit(json!({"function": "f",
                       "retry": {"max_attempts": 2, "backoff_seconds": 0.3}}))
        .await;

    let (first, _) = h.script.expect_start().await;
    h.script.started(&first).await;
    h.script.exited(&first, 1, &[]).await;
    let ended = Instant::now();
    let (second, _) = h.script.expect_start().await;
    assert_eq!(second, execution_of(&id, 2));
    assert!(
        ended.elapsed() >= Duration::from_millis(300),
        "the second attempt waited for its backoff ({:?})",
        ended.elapsed()
    );
    h.script.started(&second).await;
    h.script
        .exited(&second, 0, &[("results.json", b"7".as_slice())])
        .await;
    let run = h.wait_state(&id, RunState::Completed).await;
    assert_eq!(run.status.attempt, 2);
    assert_eq!(run.status.results, Some(json!(7)));
    assert_eq!(run.status.attempts.len(), 2);
    assert_eq!(run.status.attempts[0].exit_code, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_past_its_timeout_is_stopped_and_the_run_ends_timeout() {
    let mut h = harness(4).await;
    h.function("f").await;
    let id = h
        .submit(json!({"function": "f", "timeout_seconds": 1}))
        .await;
    let (execution, _) = h.script.expect_start().await;
    h.script.started(&execution).await;
    h.script.expect_stop(&execution).await;
    h.script.killed(&execution, 15).await;
    let run = h.wait_state(&id, RunState::Error).await;
    assert_eq!(run.status.reason.as_deref(), Some(reason::TIMEOUT));
    assert_eq!(run.status.attempt, 1, "a timeout is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_ends_stopped_and_resumes_as_a_new_attempt() {
    let mut h = harness(4).await;
    h.function("f").await;
    let id = h.submit(json!({"function": "f"})).await;
    let (execution, _) = h.script.expect_start().await;
    h.script.started(&execution).await;
    h.wait_state(&id, RunState::Running).await;

    h.controller.stop_run(PROJECT, &id, "user").await.unwrap();
    h.script.expect_stop(&execution).await;
    h.script.killed(&execution, 15).await;
    let run = h.wait_state(&id, RunState::Stopped).await;
    assert_eq!(run.status.reason.as_deref(), Some(reason::USER));

    h.controller.resume_run(PROJECT, &id).await.unwrap();
    let (resumed, _) = h.script.expect_start().await;
    assert_eq!(resumed, execution_of(&id, 2));
    h.script.started(&resumed).await;
    h.script
        .exited(&resumed, 0, &[("results.json", b"1".as_slice())])
        .await;
    let run = h.wait_state(&id, RunState::Completed).await;
    assert_eq!(run.status.attempts.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_failure_and_a_lost_execution_end_their_runs_with_the_reason() {
    let mut h = harness(4).await;
    h.function("f").await;
    h.script.fail_next_start("no such program");
    let refused = h.submit(json!({"function": "f"})).await;
    h.script.expect_start().await;
    let run = h.wait_state(&refused, RunState::Error).await;
    assert_eq!(run.status.reason.as_deref(), Some(reason::START_FAILED));
    assert!(
        run.status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("no such program"),
        "{:?}",
        run.status.message
    );

    let lost = h
        .submit(json!({"function": "f", "retry": {"max_attempts": 1}}))
        .await;
    let (execution, _) = h.script.expect_start().await;
    h.script.started(&execution).await;
    h.script
        .send(
            &execution,
            EventKind::Lost {
                message: "the node went away".to_string(),
            },
        )
        .await;
    let run = h.wait_state(&lost, RunState::Error).await;
    assert_eq!(run.status.reason.as_deref(), Some(reason::LOST));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_that_never_started_is_started_again() {
    let mut h = harness(4).await;
    h.function("f").await;
    let id = h.submit(json!({"function": "f"})).await;
    let (execution, _) = h.script.expect_start().await;
    h.script
        .send(
            &execution,
            EventKind::NeverStarted {
                message: "the server died before the start".to_string(),
            },
        )
        .await;
    let (again, _) = h.script.expect_start().await;
    assert_eq!(again.run_id, id);
    h.script.started(&again).await;
    h.script
        .exited(&again, 0, &[("results.json", b"2".as_slice())])
        .await;
    let run = h.wait_state(&id, RunState::Completed).await;
    assert_eq!(run.status.results, Some(json!(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_steps_start_when_their_dependencies_end_with_their_results() {
    let mut h = harness(4).await;
    h.function("f").await;
    h.apply(
        "pipeline",
        "flow",
        json!({"steps": [
            {"name": "a", "function": "f", "parameters": {"v": 1}},
            {"name": "b", "function": "f", "parameters": {"v": "${{ steps.a.results.n + 1 }}"}},
        ]}),
    )
    .await;
    let workflow = h.submit(json!({"function": "flow"})).await;

    let (a, _) = h.script.expect_start().await;
    assert_eq!(
        h.run(&a.run_id).await.spec.parameters.get("v"),
        Some(&json!(1))
    );
    h.script.started(&a).await;
    h.script
        .exited(&a, 0, &[("results.json", &results(json!({"n": 41})))])
        .await;
    let (b, _) = h.script.expect_start().await;
    assert_ne!(b.run_id, a.run_id);
    assert_eq!(
        h.run(&b.run_id).await.spec.parameters.get("v"),
        Some(&json!(42)),
        "b's parameter is rendered from a's results"
    );
    h.script.started(&b).await;
    h.script
        .exited(&b, 0, &[("results.json", b"\"done\"".as_slice())])
        .await;
    let run = h.wait_state(&workflow, RunState::Completed).await;
    assert_eq!(run.status.results.unwrap()["steps"]["b"], json!("done"));
}

fn replicas(ready: &[bool]) -> EventKind {
    EventKind::Replicas(
        ready
            .iter()
            .enumerate()
            .map(|(index, &ready)| runplane_domain::ReplicaStatus {
                index: index as u32,
                endpoint: format!("127.0.0.1:{}", 1 + index),
                ready,
                restarts: 0,
                pid: None,
                last_exit: None,
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeployed_service_rolls_in_replica_by_replica_then_replaces_the_old_run() {
    let mut h = harness(8).await;
    let serve = |code: &str| json!({"handler": "handler", "source": {"code": code}});
    h.apply(
        "python",
        "svc",
        serve("def handler(request):\n    return 1\n"),
    )
    .await;
    let old = h
        .submit(json!({"function": "svc", "action": "serve", "replicas": 2}))
        .await;
    let (old_execution, runnable) = h.script.expect_start().await;
    assert!(matches!(runnable, runplane_domain::Runnable::Service(_)));
    h.script.send(&old_execution, replicas(&[true, true])).await;
    h.script.started(&old_execution).await;
    h.wait_state(&old, RunState::Running).await;

    // A new version: its run starts beside the old one.
    h.apply(
        "python",
        "svc",
        serve("def handler(request):\n    return 2\n"),
    )
    .await;
    let new = h
        .submit(json!({"function": "svc", "action": "serve", "replicas": 2}))
        .await;
    let (new_execution, _) = h.script.expect_start().await;
    assert_eq!(new_execution.run_id, new);
    // Each new ready replica retires an old one, the last old one excepted...
    h.script
        .send(&new_execution, replicas(&[true, false]))
        .await;
    assert_eq!(h.script.expect_scale(&old_execution).await, 1);
    h.script.send(&old_execution, replicas(&[true])).await;
    // ...which stays until the new run has taken the name over, then is replaced.
    h.script.send(&new_execution, replicas(&[true, true])).await;
    h.script.started(&new_execution).await;
    h.wait_state(&new, RunState::Running).await;
    h.script.expect_stop(&old_execution).await;
    h.script.send(&old_execution, replicas(&[])).await;
    h.script.killed(&old_execution, 15).await;
    let old_run = h.wait_state(&old, RunState::Stopped).await;
    assert_eq!(old_run.status.reason.as_deref(), Some(reason::REPLACED));
    assert_eq!(h.run(&new).await.status.state, RunState::Running);
}
