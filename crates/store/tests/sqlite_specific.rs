//! What only the SQLite store promises: the file's settings, durability across reopening, and
//! refusing (rather than panicking on) rows it cannot decode.

use runplane_domain::RunState;
use runplane_store::conformance::{function_version, request, task, RunBuilder};
use runplane_store::sqlite::SqliteStore;
use runplane_store::{AttemptUpdate, Store, StoreError};
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
    ] {
        let fresh = RunBuilder::new("demo", "hello").build();
        store.create_run(fresh.clone(), None).await.expect("run");
        sqlx::query(&format!("UPDATE runs SET {column} = ? WHERE id = ?"))
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
