//! Creating, reading, counting and deleting runs.

use super::{now, service_status, RunBuilder};
use crate::{IdempotencyKey, RunQuery, Store, StoreError};
use runplane_domain::{Attempt, RunState, Transition};
use serde_json::json;
use std::sync::Arc;

fn key(key: &str, request_hash: &str) -> Option<IdempotencyKey> {
    Some(IdempotencyKey {
        key: key.to_string(),
        request_hash: request_hash.to_string(),
    })
}

pub async fn runs_round_trip(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    // A run with every optional field set, including a finished attempt.
    let at = now();
    let mut run = RunBuilder::new("demo", "hello")
        .task("nightly")
        .label("team", "data")
        .label("env", "prod")
        .ready()
        .state(RunState::Pending)
        .state(RunState::Running)
        .build();
    run.status.reason = Some("because".to_string());
    run.status.message = Some("a message with 'quotes' and ünïcödé".to_string());
    run.status.results = Some(json!({ "greeting": "hello", "n": [1, 2.5, null] }));
    run.status.rerun_of = Some(uuid::Uuid::now_v7().to_string());
    run.status.service = Some(service_status("demo", "api", 2, 1));
    // Created already claimed by a replica (a workflow's step run).
    run.status.owner = Some("replica-a".to_string());
    run.status.transitions.push(Transition {
        from: Some(RunState::Running),
        to: RunState::Running,
        at,
        attempt: 1,
        reason: Some("restarted".to_string()),
        message: Some("replica".to_string()),
    });
    run.status.attempts.push(Attempt {
        number: 1,
        framework: "local".to_string(),
        dispatched: at,
        started: Some(at),
        ended: Some(at),
        exit_code: Some(-1),
        signal: Some(9),
        reason: Some("oom_killed".to_string()),
    });

    let put = store.create_run(run.clone(), None).await.expect("create");
    assert!(put.created);
    assert_eq!(put.value, run);
    let read = store
        .get_run("demo", &run.metadata.id)
        .await
        .expect("get")
        .expect("the run exists");
    assert_eq!(read, run, "a run reads back exactly as written");
    assert_eq!(
        store
            .get_run_by_id(&run.metadata.id)
            .await
            .expect("get by id"),
        Some(run.clone()),
        "a run is found by id alone"
    );
    assert_eq!(
        store.get_run_by_id("no-such-run").await.expect("get by id"),
        None
    );

    // A minimal run too.
    let bare = RunBuilder::new("demo", "hello").build();
    store.create_run(bare.clone(), None).await.expect("create");
    assert_eq!(
        store.get_run("demo", &bare.metadata.id).await.expect("get"),
        Some(bare.clone())
    );

    // Runs are project-scoped.
    assert_eq!(
        store.get_run("other", &run.metadata.id).await.expect("get"),
        None
    );
    assert_eq!(
        store.get_run("demo", "no-such-run").await.expect("get"),
        None
    );

    // A run of an unknown project is refused.
    let stray = RunBuilder::new("nowhere", "hello").build();
    match store.create_run(stray, None).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("expected NotFound for a missing project, got {other:?}"),
    }
}

pub async fn runs_idempotency(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    store
        .ensure_project("other", "alice")
        .await
        .expect("project");
    let first = RunBuilder::new("demo", "hello").build();
    let put = store
        .create_run(first.clone(), key("k1", "h1"))
        .await
        .expect("create");
    assert!(put.created);

    // A retry of the same request: the first run, nothing new.
    let retry = RunBuilder::new("demo", "hello").build();
    let put = store
        .create_run(retry.clone(), key("k1", "h1"))
        .await
        .expect("retry");
    assert!(!put.created);
    assert_eq!(put.value, first);
    assert_eq!(
        store
            .get_run("demo", &retry.metadata.id)
            .await
            .expect("get"),
        None
    );

    // The same key with another request body.
    match store
        .create_run(RunBuilder::new("demo", "hello").build(), key("k1", "h2"))
        .await
    {
        Err(StoreError::IdempotencyMismatch { key, run_id }) => {
            assert_eq!(key, "k1");
            assert_eq!(run_id, first.metadata.id);
        }
        other => panic!("expected IdempotencyMismatch, got {other:?}"),
    }

    // Keys are per project; runs without a key never collide.
    let elsewhere = RunBuilder::new("other", "hello").build();
    assert!(
        store
            .create_run(elsewhere, key("k1", "h2"))
            .await
            .expect("other project")
            .created
    );
    for _ in 0..2 {
        assert!(
            store
                .create_run(RunBuilder::new("demo", "hello").build(), None)
                .await
                .expect("no key")
                .created
        );
    }

    // Concurrent retries of one request create one run.
    let attempts = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .create_run(RunBuilder::new("demo", "hello").build(), key("k2", "h"))
                .await
        })
    });
    let mut ids = Vec::new();
    let mut created = 0;
    for attempt in attempts {
        let put = attempt.await.expect("join").expect("create");
        created += usize::from(put.created);
        ids.push(put.value.metadata.id);
    }
    assert_eq!(created, 1);
    ids.dedup();
    assert_eq!(ids.len(), 1, "every retry sees the same run");

    let page = store
        .list_runs(&RunQuery {
            project: "demo".to_string(),
            ..RunQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(page.runs.len(), 4, "k1, two without key, k2");
}

pub async fn runs_in_states_is_oldest_first(store: Arc<dyn Store>) {
    store.ensure_project("a", "alice").await.expect("project");
    store.ensure_project("b", "alice").await.expect("project");
    let mut ready = Vec::new();
    for i in 0..6 {
        let project = if i % 2 == 0 { "a" } else { "b" };
        let run = RunBuilder::new(project, "f").ready().build();
        store.create_run(run.clone(), None).await.expect("create");
        ready.push(run);
        let other = RunBuilder::new(project, "f").build();
        store.create_run(other, None).await.expect("create");
    }
    let queue = store
        .runs_in_states(&[RunState::Ready], 100)
        .await
        .expect("queue");
    assert_eq!(queue, ready, "every project, oldest first, full runs");

    let ids = |runs: Vec<runplane_domain::Run>| -> Vec<String> {
        runs.into_iter().map(|r| r.metadata.id).collect()
    };
    let first_two = store
        .runs_in_states(&[RunState::Ready], 2)
        .await
        .expect("queue");
    assert_eq!(ids(first_two), ids(ready[..2].to_vec()));
    let both = store
        .runs_in_states(&[RunState::Ready, RunState::Created], 100)
        .await
        .expect("queue");
    assert_eq!(both.len(), 12);
    assert!(both.windows(2).all(|w| w[0].metadata.id < w[1].metadata.id));
    assert!(store
        .runs_in_states(&[RunState::Running], 100)
        .await
        .expect("queue")
        .is_empty());
}

pub async fn count_active_per_task(store: Arc<dyn Store>) {
    store.ensure_project("a", "alice").await.expect("project");
    store.ensure_project("b", "alice").await.expect("project");
    assert_eq!(store.count_active().await.expect("count").total, 0);
    let runs = [
        RunBuilder::new("a", "f")
            .task("t1")
            .ready()
            .state(RunState::Pending),
        RunBuilder::new("a", "f")
            .task("t1")
            .ready()
            .state(RunState::Pending)
            .state(RunState::Running),
        RunBuilder::new("a", "f")
            .task("t1")
            .ready()
            .state(RunState::Stop),
        RunBuilder::new("a", "f")
            .task("t2")
            .ready()
            .state(RunState::Pending)
            .state(RunState::Running),
        RunBuilder::new("b", "f")
            .task("t1")
            .ready()
            .state(RunState::Pending),
        RunBuilder::new("b", "f").ready().state(RunState::Pending),
        // Not active:
        RunBuilder::new("a", "f").task("t1").ready(),
        RunBuilder::new("a", "f")
            .task("t1")
            .ready()
            .state(RunState::Pending)
            .state(RunState::Running)
            .state(RunState::Completed),
        RunBuilder::new("a", "f")
            .task("t1")
            .ready()
            .state(RunState::Stop)
            .state(RunState::Stopped),
    ];
    for run in runs {
        store.create_run(run.build(), None).await.expect("create");
    }
    let counts = store.count_active().await.expect("count");
    assert_eq!(counts.total, 6);
    let per_task: Vec<((String, String), u64)> = counts.per_task.into_iter().collect();
    let expected = [(("a", "t1"), 3), (("a", "t2"), 1), (("b", "t1"), 1)]
        .map(|((p, t), n)| ((p.to_string(), t.to_string()), n));
    assert_eq!(per_task, expected);
}

pub async fn delete_run_removes_everything(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let run = RunBuilder::new("demo", "hello")
        .label("team", "data")
        .ready()
        .build();
    store.create_run(run.clone(), None).await.expect("create");
    let keep = RunBuilder::new("demo", "hello")
        .label("team", "data")
        .build();
    store.create_run(keep.clone(), None).await.expect("create");

    assert!(!store
        .delete_run("other", &run.metadata.id)
        .await
        .expect("wrong project"));
    assert!(store
        .delete_run("demo", &run.metadata.id)
        .await
        .expect("delete"));
    assert!(!store
        .delete_run("demo", &run.metadata.id)
        .await
        .expect("delete again"));
    assert_eq!(
        store.get_run("demo", &run.metadata.id).await.expect("get"),
        None
    );

    let labelled = store
        .list_runs(&RunQuery {
            project: "demo".to_string(),
            labels: vec![("team".to_string(), "data".to_string())],
            ..RunQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(labelled.runs, [keep]);
    assert!(store
        .runs_in_states(&[RunState::Ready], 10)
        .await
        .expect("queue")
        .is_empty());
    // The id is free again: nothing of the old run lingers (transitions, attempts, labels).
    let mut again = RunBuilder::new("demo", "hello").build();
    again.metadata.id = run.metadata.id.clone();
    store
        .create_run(again.clone(), None)
        .await
        .expect("re-create");
    assert_eq!(
        store.get_run("demo", &run.metadata.id).await.expect("get"),
        Some(again)
    );
}
