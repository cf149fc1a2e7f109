//! What only the PostgreSQL store has to prove: that its invariants hold when several stores
//! (several pools, standing for server replicas) write to one database at once, that its
//! event log is read in order under concurrent writers, that it tells the same events as the
//! SQLite store, and what it does with the values PostgreSQL stores differently.
//!
//! Every test gets a fresh database on the server of `RUNPLANE_TEST_PG_URL` (default: the one
//! `scripts/setup-postgres` starts); without one the tests fail, saying so.

#![cfg(feature = "postgres")]

use chrono::{Duration, SubsecRound, Utc};
use runplane_domain::trigger::{Fire, Trigger, TriggerMetadata, TriggerSpec, TriggerStatus};
use runplane_domain::workflow::{NodeState, NodeStatus, WorkflowStatus};
use runplane_domain::{Run, RunState};
use runplane_store::conformance::{
    artifact, function_version, now, request, service_status, stored_ready_run, task, RunBuilder,
};
use runplane_store::postgres::testing::fresh_database;
use runplane_store::postgres::{PostgresOptions, PostgresStore, EVENT_LOG_LOCK};
use runplane_store::prelude::*;
use runplane_store::sqlite::SqliteStore;
use runplane_store::{AttemptUpdate, FireBatch, IdempotencyKey, RunQuery, StoreError, StoredEvent};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Barrier;

/// `n` stores on one fresh database, each with its own small pool: `n` replicas.
async fn replicas(n: usize) -> Vec<Arc<PostgresStore>> {
    let url = fresh_database().await;
    let mut stores = Vec::new();
    for _ in 0..n {
        let options = PostgresOptions {
            max_connections: 4,
            ..PostgresOptions::default()
        };
        let store = PostgresStore::connect_with(&url, options)
            .await
            .expect("connect a replica");
        stores.push(Arc::new(store));
    }
    stores
}

fn as_dyn(store: &Arc<PostgresStore>) -> Arc<dyn Store> {
    store.clone()
}

async fn all_events(store: &dyn Store) -> Vec<StoredEvent> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events_after(after, None, 1000).await.expect("events");
        let Some(last) = page.last() else {
            return all;
        };
        after = last.id;
        all.extend(page);
    }
}

/// Many contenders on three replicas claim each of 20 READY runs at once (and then race
/// three different ends of the same RUNNING run): exactly one wins each race, every loser
/// sees a Conflict naming the winner's state, and the store records one transition and one
/// event per race.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_transitions_from_several_replicas_have_one_winner() {
    let stores = replicas(3).await;
    let first = as_dyn(&stores[0]);
    first
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let mut runs = Vec::new();
    for _ in 0..20 {
        let run = RunBuilder::new("demo", "hello").ready().build();
        first.create_run(run.clone(), None).await.expect("create");
        runs.push(run);
    }

    // Claims: 6 contenders per run, 2 per replica, all runs at once.
    let mut tasks = Vec::new();
    for run in &runs {
        let barrier = Arc::new(Barrier::new(6));
        for contender in 0..6 {
            let store = as_dyn(&stores[contender % 3]);
            let barrier = barrier.clone();
            let mut claim = request(run, RunState::Ready, 1, RunState::Pending);
            claim.attempt_update = Some(AttemptUpdate::Dispatched {
                framework: format!("replica-{contender}"),
            });
            let id = run.metadata.id.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                (id, store.transition(claim).await)
            }));
        }
    }
    let mut winners: std::collections::HashMap<String, Run> = Default::default();
    for task in tasks {
        let (id, outcome) = task.await.expect("join");
        match outcome {
            Ok(run) => assert!(winners.insert(id, run).is_none(), "two claims won"),
            Err(StoreError::Conflict {
                current_state: RunState::Pending,
                current_attempt: 1,
                ..
            }) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(winners.len(), runs.len(), "every run was claimed once");
    for run in &runs {
        let stored = first
            .get_run("demo", &run.metadata.id)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(Some(&stored), winners.get(&run.metadata.id));
        let claims = stored
            .status
            .transitions
            .iter()
            .filter(|t| t.to == RunState::Pending)
            .count();
        assert_eq!(claims, 1);
        assert_eq!(stored.status.attempts.len(), 1);
    }

    // Ends: COMPLETED, ERROR and STOP race from RUNNING; one of them happens.
    for run in &runs {
        first
            .transition(request(run, RunState::Pending, 1, RunState::Running))
            .await
            .expect("start");
        let barrier = Arc::new(Barrier::new(3));
        let ends = [RunState::Completed, RunState::Error, RunState::Stop];
        let tasks: Vec<_> = ends
            .into_iter()
            .enumerate()
            .map(|(i, to)| {
                let store = as_dyn(&stores[i]);
                let barrier = barrier.clone();
                let end = request(run, RunState::Running, 1, to);
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.transition(end).await
                })
            })
            .collect();
        let mut won = Vec::new();
        for task in tasks {
            match task.await.expect("join") {
                Ok(after) => won.push(after.status.state),
                Err(StoreError::Conflict { current_state, .. }) => {
                    assert!(ends.contains(&current_state), "{current_state}")
                }
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
        assert_eq!(won.len(), 1, "one end wins: {won:?}");
    }

    // The log tells each run's history once: CREATED, BUILT, READY, PENDING, RUNNING, end.
    let events = all_events(first.as_ref()).await;
    assert_eq!(events.len(), runs.len() * 6);
    for run in &runs {
        let states: Vec<&str> = events
            .iter()
            .filter(|e| e.data["id"] == json!(run.metadata.id))
            .map(|e| e.data["state"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(
            &states[..5],
            ["CREATED", "BUILT", "READY", "PENDING", "RUNNING"]
        );
        assert_eq!(states.len(), 6);
    }
}

fn scheduler(next_fire: chrono::DateTime<Utc>) -> Trigger {
    Trigger {
        kind: "scheduler".into(),
        metadata: TriggerMetadata {
            name: "tick".into(),
            project: "demo".into(),
            labels: Default::default(),
            created: now(),
            updated: now(),
            created_by: "test".into(),
        },
        spec: TriggerSpec {
            schedule: Some("* * * * * *".into()),
            template: json!({"function": "f"}),
            ..TriggerSpec::default()
        },
        status: TriggerStatus {
            next_fire: Some(next_fire),
            ..TriggerStatus::default()
        },
    }
}

fn fire(dedup: &str, run_id: Option<&str>) -> Fire {
    Fire {
        id: uuid::Uuid::now_v7().to_string(),
        project: "demo".into(),
        trigger: "tick".into(),
        at: now(),
        scheduled_for: None,
        dedup_key: dedup.into(),
        run_id: run_id.map(str::to_string),
        error: None,
    }
}

/// Two replicas' schedulers fire the same ticks, 25 of them in a row: each tick fires once,
/// with the winner's run only; a replica that comes late for a tick fires nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_fire_each_tick_once() {
    let stores = replicas(2).await;
    let first = as_dyn(&stores[0]);
    first
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let start = now();
    let tick = |n: i64| start + Duration::seconds(n);
    first
        .put_trigger(&scheduler(tick(0)), None)
        .await
        .expect("put trigger");

    let batch = |n: i64| {
        let run = RunBuilder::new("demo", "f").ready().build();
        FireBatch {
            project: "demo".into(),
            trigger: "tick".into(),
            next_fire: Some((Some(tick(n)), Some(tick(n + 1)))),
            fires: vec![(
                fire(&tick(n).to_rfc3339(), Some(&run.metadata.id)),
                Some(run),
            )],
        }
    };
    for n in 0..25 {
        let barrier = Arc::new(Barrier::new(2));
        let tasks: Vec<_> = stores
            .iter()
            .map(|store| {
                let store = as_dyn(store);
                let barrier = barrier.clone();
                let batch = batch(n);
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.fire_trigger(batch).await
                })
            })
            .collect();
        let mut won = 0;
        for task in tasks {
            won += usize::from(task.await.expect("join").expect("fire"));
        }
        assert_eq!(won, 1, "tick {n} fires once");
    }
    // A late replica, still at tick 3: the compare-and-set refuses it.
    assert!(!first.fire_trigger(batch(3)).await.expect("late fire"));

    let runs = first
        .list_runs(&RunQuery {
            project: "demo".into(),
            limit: 1000,
            ..RunQuery::default()
        })
        .await
        .expect("runs");
    assert_eq!(runs.runs.len(), 25, "one run per tick");
    let fires = first.list_fires("demo", "tick", 1000).await.expect("fires");
    assert_eq!(fires.len(), 25);
    let fired_runs: BTreeSet<_> = fires.iter().filter_map(|f| f.run_id.clone()).collect();
    let stored_runs: BTreeSet<_> = runs.runs.iter().map(|r| r.metadata.id.clone()).collect();
    assert_eq!(
        fired_runs, stored_runs,
        "each fire's run exists, and no other"
    );
    let trigger = first
        .get_trigger("demo", "tick")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(trigger.status.next_fire, Some(tick(25)));
    assert_eq!(trigger.status.fires, 25);
}

/// Two lifecycle fires that insert the same two dedup keys in opposite orders deadlock in
/// the database; the store retries the loser, which then finds the keys used: one fire
/// happens, the other writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crossed_dedup_keys_fire_once() {
    let stores = replicas(2).await;
    let first = as_dyn(&stores[0]);
    first
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    first
        .put_trigger(&scheduler(now()), None)
        .await
        .expect("put trigger");
    for round in 0..3 {
        let (a, b) = (format!("event-{round}-a"), format!("event-{round}-b"));
        let orders = [[a.clone(), b.clone()], [b, a]];
        let barrier = Arc::new(Barrier::new(2));
        let tasks: Vec<_> = orders
            .into_iter()
            .zip(&stores)
            .map(|(keys, store)| {
                let store = as_dyn(store);
                let barrier = barrier.clone();
                let batch = FireBatch {
                    project: "demo".into(),
                    trigger: "tick".into(),
                    next_fire: None,
                    fires: keys.iter().map(|k| (fire(k, None), None)).collect(),
                };
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.fire_trigger(batch).await
                })
            })
            .collect();
        let mut won = 0;
        for task in tasks {
            won += usize::from(
                task.await
                    .expect("join")
                    .expect("no error reaches the caller"),
            );
        }
        assert_eq!(won, 1, "round {round}");
    }
    let trigger = first
        .get_trigger("demo", "tick")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(trigger.status.fires, 6);
}

/// Eight writers on four replicas append events (run creations and claims) while a reader
/// follows the log the way `GET /events` does, resuming after the last id it saw. The
/// reader must see strictly increasing ids and, in the end, every event: an id that became
/// visible after a larger one would have been skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_of_the_log_misses_nothing_under_concurrent_writers() {
    let stores = replicas(5).await;
    let reader_store = as_dyn(&stores[4]);
    reader_store
        .ensure_project("demo", "alice")
        .await
        .expect("project");

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = reader_store.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen: Vec<u64> = Vec::new();
            let mut after = 0;
            loop {
                // Read the flag before the page: a page read after the writers ended has
                // everything.
                let finished = done.load(Ordering::SeqCst);
                let page = store.events_after(after, None, 1000).await.expect("events");
                for event in &page {
                    assert!(event.id > after, "ids strictly increase");
                    after = event.id;
                    seen.push(event.id);
                }
                if finished && page.is_empty() {
                    return seen;
                }
                if page.is_empty() {
                    tokio::task::yield_now().await;
                }
            }
        })
    };

    let mut writers = Vec::new();
    for writer in 0..8 {
        let store = as_dyn(&stores[writer % 4]);
        writers.push(tokio::spawn(async move {
            for _ in 0..25 {
                let run = RunBuilder::new("demo", "hello")
                    .label("writer", &writer.to_string())
                    .ready()
                    .build();
                store.create_run(run.clone(), None).await.expect("create");
                store
                    .transition(request(&run, RunState::Ready, 1, RunState::Pending))
                    .await
                    .expect("claim");
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.expect("reader");

    let all: Vec<u64> = all_events(reader_store.as_ref())
        .await
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(all.len(), 8 * 25 * 4);
    assert_eq!(seen, all, "the follower saw every event, in order");
}

/// Events are inserted under the advisory lock EVENT_LOG_LOCK: while another session holds
/// it, a change that appends an event waits (and is not visible), and goes through once the
/// lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_appends_wait_for_the_event_log_lock() {
    let stores = replicas(1).await;
    let store = as_dyn(&stores[0]);
    let run = stored_ready_run(store.as_ref()).await;
    let before = store.latest_event_id().await.expect("latest");

    let mut holder = stores[0].pool().acquire().await.expect("connection");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(EVENT_LOG_LOCK)
        .execute(&mut *holder)
        .await
        .expect("take the lock");
    let claim = {
        let store = store.clone();
        let request = request(&run, RunState::Ready, 1, RunState::Pending);
        tokio::spawn(async move { store.transition(request).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!claim.is_finished(), "the transition waits for the lock");
    let stored = store
        .get_run("demo", &run.metadata.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        stored.status.state,
        RunState::Ready,
        "nothing is visible yet"
    );
    assert_eq!(store.latest_event_id().await.expect("latest"), before);

    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(EVENT_LOG_LOCK)
        .execute(&mut *holder)
        .await
        .expect("release the lock");
    let after = claim.await.expect("join").expect("claim");
    assert_eq!(after.status.state, RunState::Pending);
    assert!(store.latest_event_id().await.expect("latest") > before);
}

/// Retries of one request with an Idempotency-Key, sent to several replicas at once, make
/// one run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotent_creates_across_replicas_make_one_run() {
    let stores = replicas(3).await;
    as_dyn(&stores[0])
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let barrier = Arc::new(Barrier::new(12));
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let store = as_dyn(&stores[i % 3]);
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let key = IdempotencyKey {
                    key: "retry-me".into(),
                    request_hash: "h".into(),
                };
                store
                    .create_run(RunBuilder::new("demo", "hello").build(), Some(key))
                    .await
            })
        })
        .collect();
    let mut created = 0;
    let mut ids = BTreeSet::new();
    for task in tasks {
        let put = task.await.expect("join").expect("create");
        created += usize::from(put.created);
        ids.insert(put.value.metadata.id);
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1, "every retry gets the same run");
    let events = all_events(as_dyn(&stores[0]).as_ref()).await;
    assert_eq!(events.len(), 1, "one CREATED event");
}

/// Server replicas starting together migrate the same empty database at once; all of them
/// come up, and the schema is there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_migrate_once() {
    let url = fresh_database().await;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresStore::connect(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for task in tasks {
        stores.push(task.await.expect("join").expect("connect"));
    }
    let migrations: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(stores[0].pool())
        .await
        .expect("count");
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .expect("migrations folder")
        .count();
    assert_eq!(migrations, i64::try_from(files).expect("count"));
    stores[3]
        .ensure_project("demo", "alice")
        .await
        .expect("works");
}

#[tokio::test]
async fn the_pool_size_is_configurable() {
    let url = fresh_database().await;
    let default = PostgresStore::connect(&url).await.expect("connect");
    assert_eq!(default.pool().options().get_max_connections(), 10);
    let small = PostgresStore::connect_with(
        &url,
        PostgresOptions {
            max_connections: 3,
            ..PostgresOptions::default()
        },
    )
    .await
    .expect("connect");
    assert_eq!(small.pool().options().get_max_connections(), 3);
}

/// No server: an error after the acquire timeout, not a hang and not a panic.
#[tokio::test]
async fn an_unreachable_server_is_a_database_error() {
    let options = PostgresOptions {
        acquire_timeout: std::time::Duration::from_secs(2),
        ..PostgresOptions::default()
    };
    let started = std::time::Instant::now();
    match PostgresStore::connect_with("postgres://runplane@127.0.0.1:1/nothing", options).await {
        Err(StoreError::Database(_)) => {}
        other => panic!("expected a database error, got {other:?}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(matches!(
        PostgresStore::connect("not a url").await,
        Err(StoreError::Database(_))
    ));
}

/// What PostgreSQL stores differently from SQLite: times keep microseconds (finer digits are
/// cut, as the store's own clock does), and free text loses NUL characters (PostgreSQL's TEXT
/// cannot hold them; a run must still be able to end with such a message).
#[tokio::test]
async fn times_keep_microseconds_and_text_loses_nul() {
    let stores = replicas(1).await;
    let store = as_dyn(&stores[0]);
    let run = stored_ready_run(store.as_ref()).await;
    let mut claim = request(&run, RunState::Ready, 1, RunState::Pending);
    claim.at = Utc::now().trunc_subsecs(6) + Duration::nanoseconds(789);
    let claimed = store.transition(claim.clone()).await.expect("claim");
    assert_eq!(claimed.metadata.updated, claim.at.trunc_subsecs(6));
    let events = all_events(store.as_ref()).await;
    let last = events.last().expect("an event");
    assert_eq!(last.at, claim.at.trunc_subsecs(6));
    assert_eq!(
        last.data["at"],
        json!(claim
            .at
            .trunc_subsecs(6)
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
    );

    store
        .transition(request(&run, RunState::Pending, 1, RunState::Running))
        .await
        .expect("start");
    let mut failed = request(&run, RunState::Running, 1, RunState::Error)
        .reason("failed")
        .message("boom\0after the NUL");
    failed.results = Some(json!({ "raw": "a\u{0}b" }));
    let ended = store.transition(failed).await.expect("the run can end");
    assert_eq!(
        ended.status.message.as_deref(),
        Some("boom\u{FFFD}after the NUL")
    );
    assert_eq!(
        ended.status.results,
        Some(json!({ "raw": "a\u{0}b" })),
        "JSON documents keep it (escaped)"
    );
}

#[tokio::test]
async fn corrupt_rows_are_database_errors_not_panics() {
    let stores = replicas(1).await;
    let store = &stores[0];
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    for (column, value) in [
        ("spec", "'{not json'"),
        ("state", "'SLEEPING'"),
        ("service", "'{\"replicas\": 3}'"),
        ("attempt", "-1"),
    ] {
        let fresh = RunBuilder::new("demo", "hello").build();
        store.create_run(fresh.clone(), None).await.expect("run");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE runs SET {column} = {value} WHERE id = $1"
        )))
        .bind(&fresh.metadata.id)
        .execute(store.pool())
        .await
        .expect("corrupt it");
        match store.get_run("demo", &fresh.metadata.id).await {
            Err(StoreError::Database(message)) => assert!(message.contains(column), "{message}"),
            other => panic!("{column}: expected a database error, got {other:?}"),
        }
        assert!(store
            .list_runs(&RunQuery {
                project: "demo".into(),
                ..RunQuery::default()
            })
            .await
            .is_err());
        sqlx::query("DELETE FROM runs WHERE id = $1")
            .bind(&fresh.metadata.id)
            .execute(store.pool())
            .await
            .expect("clean up");
    }
}

/// The same changes, made on a SQLite store and on a PostgreSQL store, tell the same events:
/// the two stores build their event documents separately, and clients must not tell them
/// apart. Times the stores stamp themselves differ; everything else must be equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_event_log_reads_like_the_sqlite_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&dir.path().join("runplane.db"))
            .await
            .expect("sqlite"),
    );
    let postgres = as_dyn(&replicas(1).await[0]);

    let function = function_version("demo", "hello", json!({ "handler": "main:run" }));
    let nightly = task("demo", "nightly", "hello");
    let run = RunBuilder::new("demo", "hello")
        .task("nightly")
        .ready()
        .build();
    let mut flow = RunBuilder::new("demo", "flow")
        .state(RunState::Running)
        .build();
    flow.kind = "pipeline+pipeline:run".into();
    let nodes = WorkflowStatus {
        nodes: vec![NodeStatus {
            name: "train".into(),
            step: "train".into(),
            index: None,
            state: NodeState::Succeeded,
            run_id: Some(run.metadata.id.clone()),
            reused_from: None,
            message: None,
        }],
    };
    let tick = now();
    let fired = RunBuilder::new("demo", "f").ready().build();
    let data = artifact("demo", "data", "ab", &run.metadata.id);

    let mut logs = Vec::new();
    for store in [sqlite, postgres] {
        store
            .ensure_project("demo", "alice")
            .await
            .expect("project");
        store
            .put_function_version(function.clone())
            .await
            .expect("function");
        store.put_task(nightly.clone()).await.expect("task");
        store.create_run(run.clone(), None).await.expect("run");
        let mut claim = request(&run, RunState::Ready, 1, RunState::Pending).reason("dispatched");
        claim.at = tick;
        store.transition(claim).await.expect("claim");
        store
            .put_service("demo", "api", &run.metadata.id)
            .await
            .expect("service");
        store
            .set_service_status(&run.metadata.id, 1, &service_status("demo", "api", 2, 1))
            .await
            .expect("replicas");
        store
            .delete_service("demo", "api", &run.metadata.id)
            .await
            .expect("release");
        store.create_run(flow.clone(), None).await.expect("flow");
        store
            .set_workflow_status(&flow.metadata.id, 1, &nodes)
            .await
            .expect("nodes");
        store
            .put_secret("demo", "token", b"sealed", "alice")
            .await
            .expect("secret");
        store
            .delete_secret("demo", "token")
            .await
            .expect("delete secret");
        store
            .put_trigger(&scheduler(tick), None)
            .await
            .expect("trigger");
        store
            .set_trigger_paused("demo", "tick", true, None)
            .await
            .expect("pause");
        store
            .fire_trigger(FireBatch {
                project: "demo".into(),
                trigger: "tick".into(),
                next_fire: None,
                fires: vec![(
                    fire("event-1", Some(&fired.metadata.id)),
                    Some(fired.clone()),
                )],
            })
            .await
            .expect("fire");
        store.put_artifact(data.clone()).await.expect("artifact");
        store
            .delete_artifact("demo", "data")
            .await
            .expect("delete artifact");
        store
            .delete_trigger("demo", "tick")
            .await
            .expect("delete trigger");

        let events = all_events(store.as_ref()).await;
        let told: Vec<(String, String, Value)> = events
            .into_iter()
            .map(|event| {
                let mut data = event.data;
                let stamped = matches!(event.kind.as_str(), "service" | "secret" | "trigger")
                    || data["change"].is_string()
                    || data["deleted"] == json!(true);
                if stamped {
                    // Stamped by the store's clock: present, but not comparable.
                    assert!(data["at"].is_string(), "{data}");
                    data["at"] = json!("stamped");
                }
                (event.kind, event.project, data)
            })
            .collect();
        logs.push(told);
    }
    assert_eq!(logs[0].len(), 22, "{:#?}", logs[0]);
    assert_eq!(logs[0], logs[1]);
}
