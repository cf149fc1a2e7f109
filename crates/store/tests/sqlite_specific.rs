//! What only the SQLite store promises: the file's settings, durability across reopening, and
//! refusing (rather than panicking on) rows it cannot decode.

use runplane_domain::RunState;
use runplane_store::conformance::{function_version, request, service_status, task, RunBuilder};
use runplane_store::prelude::*;
use runplane_store::sqlite::SqliteStore;
use runplane_store::{AttemptUpdate, StoreError};
use serde_json::json;

#[tokio::test]
async fn connections_use_wal_full_sync_and_foreign_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nested").join("deeper").join("runplane.db");
    let store = SqliteStore::open(&path)
        .await
        .expect("open creates parent directories");
    assert!(path.exists());

    let pool = store.pool();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .expect("journal_mode");
    assert_eq!(mode.to_lowercase(), "wal");
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(pool)
        .await
        .expect("synchronous");
    assert_eq!(synchronous, 2, "FULL");
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(pool)
        .await
        .expect("foreign_keys");
    assert_eq!(foreign_keys, 1);
    let busy_timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(pool)
        .await
        .expect("busy_timeout");
    assert_eq!(busy_timeout, 5000);
    store.close().await;
}

async fn reopen_sees_everything(close_first: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("runplane.db");
    let store = SqliteStore::open(&path).await.expect("open");
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let function = function_version("demo", "hello", json!({ "handler": "main:run" }));
    store
        .put_function_version(function.clone())
        .await
        .expect("function");
    let task = task("demo", "nightly", "hello");
    store.put_task(task.clone()).await.expect("task");
    let run = RunBuilder::new("demo", "hello")
        .task("nightly")
        .label("team", "data")
        .ready()
        .build();
    store.create_run(run.clone(), None).await.expect("run");
    let mut claim = request(&run, RunState::Ready, 1, RunState::Pending);
    claim.attempt_update = Some(AttemptUpdate::Dispatched {
        framework: "local".to_string(),
    });
    let run = store.transition(claim).await.expect("claim");
    if close_first {
        store.close().await;
    }
    drop(store);

    let reopened = SqliteStore::open(&path).await.expect("reopen");
    assert_eq!(reopened.list_projects().await.expect("projects").len(), 1);
    assert_eq!(
        reopened
            .get_function("demo", "hello", None)
            .await
            .expect("function"),
        Some(function)
    );
    assert_eq!(
        reopened.get_task("demo", "nightly").await.expect("task"),
        Some(task)
    );
    assert_eq!(
        reopened
            .get_run("demo", &run.metadata.id)
            .await
            .expect("run"),
        Some(run)
    );
    assert_eq!(reopened.count_active().await.expect("count").total, 1);
    reopened.close().await;
}

#[tokio::test]
async fn reopening_after_close_sees_all_data() {
    reopen_sees_everything(true).await;
}

/// Without a clean close the data is still in the WAL file; a new pool must replay it.
#[tokio::test]
async fn reopening_without_close_sees_all_data() {
    reopen_sees_everything(false).await;
}

#[tokio::test]
async fn corrupt_rows_are_database_errors_not_panics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("runplane.db"))
        .await
        .expect("open");
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let run = RunBuilder::new("demo", "hello").build();
    store.create_run(run.clone(), None).await.expect("run");

    for (column, value) in [
        ("spec", "{not json"),
        ("state", "SLEEPING"),
        ("created", "yesterday"),
        ("service", "{\"replicas\": 3}"),
    ] {
        let fresh = RunBuilder::new("demo", "hello").build();
        store.create_run(fresh.clone(), None).await.expect("run");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE runs SET {column} = ? WHERE id = ?"
        )))
        .bind(value)
        .bind(&fresh.metadata.id)
        .execute(store.pool())
        .await
        .expect("corrupt it");
        match store.get_run("demo", &fresh.metadata.id).await {
            Err(StoreError::Database(message)) => assert!(message.contains(column), "{message}"),
            other => panic!("{column}: expected a database error, got {other:?}"),
        }
        sqlx::query("DELETE FROM runs WHERE id = ?")
            .bind(&fresh.metadata.id)
            .execute(store.pool())
            .await
            .expect("clean up");
    }
    sqlx::query("UPDATE runs SET attempt = -1 WHERE id = ?")
        .bind(&run.metadata.id)
        .execute(store.pool())
        .await
        .expect("corrupt it");
    assert!(matches!(
        store.get_run("demo", &run.metadata.id).await,
        Err(StoreError::Database(_))
    ));
}

/// The trait has no way to delete a project yet; when one comes, a project's services must go
/// with it, like its runs (ON DELETE CASCADE).
#[tokio::test]
async fn services_go_with_their_project() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("runplane.db"))
        .await
        .expect("open");
    for project in ["demo", "other"] {
        store
            .ensure_project(project, "alice")
            .await
            .expect("project");
    }
    let run = RunBuilder::new("demo", "hello").build();
    store.create_run(run.clone(), None).await.expect("run");
    store
        .put_service("demo", "api", &run.metadata.id)
        .await
        .expect("put");
    let kept = RunBuilder::new("other", "hello").build();
    store.create_run(kept.clone(), None).await.expect("run");
    let other = store
        .put_service("other", "api", &kept.metadata.id)
        .await
        .expect("put");

    sqlx::query("DELETE FROM projects WHERE name = 'demo'")
        .execute(store.pool())
        .await
        .expect("delete the project");
    assert_eq!(store.get_service("demo", "api").await.expect("get"), None);
    assert_eq!(store.all_services().await.expect("all"), [other]);
}

/// A database made before services (migrations 0001 and 0002 only) opens, and its runs read
/// back with no `status.service`.
#[tokio::test]
async fn a_database_from_before_services_migrates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("runplane.db");
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = sqlx::SqlitePool::connect_with(options)
            .await
            .expect("connect");
        // The migrations as they were before services: the same files, the later ones left out.
        let old = dir.path().join("migrations");
        std::fs::create_dir(&old).expect("mkdir");
        for file in ["0001_init.sql", "0002_events.sql"] {
            std::fs::copy(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("migrations/sqlite")
                    .join(file),
                old.join(file),
            )
            .expect("copy migration");
        }
        sqlx::migrate::Migrator::new(old.as_path())
            .await
            .expect("read migrations")
            .run(&pool)
            .await
            .expect("migrate to 0002");
        let at = "2024-05-01T12:00:00.000000000Z";
        sqlx::query("INSERT INTO projects (name, created, created_by) VALUES ('demo', ?, 'alice')")
            .bind(at)
            .execute(&pool)
            .await
            .expect("project");
        let run = RunBuilder::new("demo", "hello").build();
        sqlx::query(
            "INSERT INTO runs (id, project, kind, function_name, state, attempt, labels, spec,
                 created, updated, created_by)
             VALUES ('old-run', 'demo', 'python+job', 'hello', 'CREATED', 1, '{}', ?, ?, ?, 'alice')",
        )
        .bind(serde_json::to_string(&run.spec).expect("spec"))
        .bind(at)
        .bind(at)
        .execute(&pool)
        .await
        .expect("run");
        pool.close().await;
    }

    let store = SqliteStore::open(&path).await.expect("open migrates");
    let old = store
        .get_run("demo", "old-run")
        .await
        .expect("get")
        .expect("the old run is there");
    assert_eq!(old.status.service, None);
    assert!(store
        .set_service_status("old-run", 1, &service_status("demo", "api", 1, 1))
        .await
        .expect("the new column takes a status"));
    store
        .put_service("demo", "api", "old-run")
        .await
        .expect("the new table takes a service");
    store.close().await;
}
