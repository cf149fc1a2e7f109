//! The embedded default [`Store`]: one SQLite file in WAL mode.
//!
//! Writes run in `BEGIN IMMEDIATE` transactions: the write lock is taken up front, so two
//! writers queue on `busy_timeout` instead of one failing with `SQLITE_BUSY_SNAPSHOT` when it
//! upgrades a read to a write. Reads that span several statements run in a deferred
//! transaction, which in WAL mode is a consistent snapshot that never blocks writers.
//!
//! Each statement is a round trip to sqlx's connection thread, so the hot paths use few: a full
//! run (its transitions and attempts folded in as JSON arrays) is read by one statement, and a
//! transition is its guarded UPDATE followed by one batch (transition row, attempt, event, the
//! run re-read).

mod artifacts;
mod catalog;
mod codec;
mod events;
mod replicas;
mod runs;
mod secrets;
mod services;
mod transition;
mod triggers;
mod workflows;

use crate::{
    ActiveCounts, ArtifactStore, CatalogStore, EventStore, FireBatch, IdempotencyKey, Put,
    ReplicaStore, RunPage, RunQuery, RunStore, SecretStore, ServiceStore, StoreError, StoreResult,
    StoredEvent, TransitionRequest, TriggerStore,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use codec::db;
use runplane_domain::trigger::{Fire, Trigger};
use runplane_domain::workflow::WorkflowStatus;
use runplane_domain::{
    FunctionVersion, Project, Run, RunState, SecretMeta, ServiceRecord, ServiceStatus, Task,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use std::path::Path;
use std::time::Duration;

/// How long a writer waits for the write lock before giving up with a database error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// SQLite has one writer at a time; a few connections let reads proceed beside it.
const MAX_CONNECTIONS: u32 = 8;

/// A [`Store`] on a SQLite file. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it and its parent directory if needed) the database at `path` and
    /// migrates it to the current schema.
    ///
    /// The connection settings favour durability over write throughput: WAL journal with
    /// `synchronous=FULL`, so a transaction that returned is on disk even after a power loss.
    pub async fn open(path: &Path) -> StoreResult<SqliteStore> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                StoreError::Database(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            // A connection is a handle on a local file: it does not go stale the way a network
            // connection does, and the ping sqlx makes by default on every checkout is a round
            // trip to the connection's thread before each store call.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(db)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(format!("migration failed: {e}")))?;
        tracing::debug!(path = %path.display(), "opened SQLite store");
        Ok(SqliteStore { pool })
    }

    /// The underlying pool, for diagnostics and tests (e.g. checking `PRAGMA journal_mode`).
    /// Writing through it bypasses the store's invariants.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection (checkpointing the WAL); later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A write transaction holding SQLite's write lock from its first statement.
    async fn write(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)
    }
}

#[async_trait]
impl CatalogStore for SqliteStore {
    async fn ensure_project(&self, name: &str, created_by: &str) -> StoreResult<Project> {
        // Nearly always there already: a read spares a write transaction (and its fsync).
        if let Some(project) = self.get_project(name).await? {
            return Ok(project);
        }
        let mut tx = self.write().await?;
        let project = catalog::ensure_project(&mut tx, name, created_by).await?;
        tx.commit().await.map_err(db)?;
        Ok(project)
    }

    async fn get_project(&self, name: &str) -> StoreResult<Option<Project>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        catalog::get_project(&mut conn, name).await
    }

    async fn list_projects(&self) -> StoreResult<Vec<Project>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        catalog::list_projects(&mut conn).await
    }

    async fn put_function_version(
        &self,
        version: FunctionVersion,
    ) -> StoreResult<Put<FunctionVersion>> {
        let mut tx = self.write().await?;
        let put = catalog::put_function_version(&mut tx, version).await?;
        tx.commit().await.map_err(db)?;
        Ok(put)
    }

    async fn get_function(
        &self,
        project: &str,
        name: &str,
        version: Option<&str>,
    ) -> StoreResult<Option<FunctionVersion>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        catalog::get_function(&mut conn, project, name, version).await
    }

    async fn list_functions(&self, project: &str) -> StoreResult<Vec<FunctionVersion>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        catalog::list_functions(&mut conn, project).await
    }

    async fn list_function_versions(
        &self,
        project: &str,
        name: &str,
    ) -> StoreResult<Vec<FunctionVersion>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        catalog::list_function_versions(&mut conn, project, name).await
    }

    async fn delete_function(&self, project: &str, name: &str) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let deleted = catalog::delete_function(&mut tx, project, name).await?;
        tx.commit().await.map_err(db)?;
        Ok(deleted)
    }

    async fn put_task(&self, task: Task) -> StoreResult<Task> {
        let mut tx = self.write().await?;
        let task = catalog::put_task(&mut tx, task).await?;
        tx.commit().await.map_err(db)?;
        Ok(task)
    }

    async fn get_task(&self, project: &str, name: &str) -> StoreResult<Option<Task>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        catalog::get_task(&mut conn, project, name).await
    }

    async fn list_tasks(&self, project: &str) -> StoreResult<Vec<Task>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        catalog::list_tasks(&mut conn, project).await
    }

    async fn delete_task(&self, project: &str, name: &str) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let deleted = catalog::delete_task(&mut tx, project, name).await?;
        tx.commit().await.map_err(db)?;
        Ok(deleted)
    }
}

#[async_trait]
impl RunStore for SqliteStore {
    async fn create_run(
        &self,
        run: Run,
        idempotency: Option<IdempotencyKey>,
    ) -> StoreResult<Put<Run>> {
        let mut tx = self.write().await?;
        let put = runs::create_run(&mut tx, run, idempotency).await?;
        tx.commit().await.map_err(db)?;
        Ok(put)
    }

    // The run reads below are one statement each (transitions and attempts are folded into
    // the row): SQLite runs a statement on one snapshot, so they need no transaction (whose
    // BEGIN and COMMIT would be two more round trips to the connection's thread).
    async fn get_run(&self, project: &str, id: &str) -> StoreResult<Option<Run>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        runs::get_run(&mut conn, Some(project), id).await
    }

    async fn get_run_by_id(&self, id: &str) -> StoreResult<Option<Run>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        runs::get_run(&mut conn, None, id).await
    }

    async fn list_runs(&self, query: &RunQuery) -> StoreResult<RunPage> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        runs::list_runs(&mut conn, query).await
    }

    async fn runs_in_states(&self, states: &[RunState], limit: u32) -> StoreResult<Vec<Run>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        runs::runs_in_states(&mut conn, states, limit).await
    }

    async fn count_active(&self) -> StoreResult<ActiveCounts> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        runs::count_active(&mut conn).await
    }

    async fn run_state(&self, id: &str) -> StoreResult<Option<(RunState, u32)>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        runs::run_state(&mut conn, id).await
    }

    async fn transition(&self, request: TransitionRequest) -> StoreResult<Run> {
        // Refused before touching the database: an illegal move is a bug in the caller,
        // whatever the run's current state.
        runplane_domain::lifecycle::check_transition(request.from, request.to)?;
        let mut tx = self.write().await?;
        let run = transition::transition(&mut tx, &request).await?;
        tx.commit().await.map_err(db)?;
        Ok(run)
    }

    async fn set_wait_reason(
        &self,
        run_id: &str,
        state: RunState,
        attempt: u32,
        reason: Option<&str>,
        message: Option<&str>,
    ) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let changed =
            transition::set_wait_reason(&mut tx, run_id, state, attempt, reason, message).await?;
        tx.commit().await.map_err(db)?;
        Ok(changed)
    }

    async fn delete_run(&self, project: &str, id: &str) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let deleted = runs::delete_run(&mut tx, project, id).await?;
        tx.commit().await.map_err(db)?;
        Ok(deleted)
    }

    async fn set_workflow_status(
        &self,
        run_id: &str,
        attempt: u32,
        status: &WorkflowStatus,
    ) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let changed = workflows::set_workflow_status(&mut tx, run_id, attempt, status).await?;
        tx.commit().await.map_err(db)?;
        Ok(changed)
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn events_after(
        &self,
        after: u64,
        project: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<StoredEvent>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        events::events_after(&mut conn, after, project, limit).await
    }

    async fn get_cursor(&self, name: &str) -> StoreResult<Option<u64>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        triggers::get_cursor(&mut conn, name).await
    }

    async fn set_cursor(&self, name: &str, position: u64) -> StoreResult<()> {
        let mut tx = self.write().await?;
        triggers::set_cursor(&mut tx, name, position).await?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn latest_event_id(&self) -> StoreResult<u64> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        events::latest_event_id(&mut conn).await
    }
}

#[async_trait]
impl TriggerStore for SqliteStore {
    async fn put_trigger(
        &self,
        trigger: &Trigger,
        token_hash: Option<&str>,
    ) -> StoreResult<Trigger> {
        let mut tx = self.write().await?;
        let stored = triggers::put_trigger(&mut tx, trigger, token_hash).await?;
        tx.commit().await.map_err(db)?;
        Ok(stored)
    }

    async fn get_trigger(&self, project: &str, name: &str) -> StoreResult<Option<Trigger>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        triggers::get_trigger(&mut conn, project, name).await
    }

    async fn list_triggers(&self, project: Option<&str>) -> StoreResult<Vec<Trigger>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        triggers::list_triggers(&mut conn, project).await
    }

    async fn delete_trigger(&self, project: &str, name: &str) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let deleted = triggers::delete_trigger(&mut tx, project, name).await?;
        tx.commit().await.map_err(db)?;
        Ok(deleted)
    }

    async fn set_trigger_paused(
        &self,
        project: &str,
        name: &str,
        paused: bool,
        next_fire: Option<DateTime<Utc>>,
    ) -> StoreResult<Option<Trigger>> {
        let mut tx = self.write().await?;
        let trigger = triggers::set_paused(&mut tx, project, name, paused, next_fire).await?;
        tx.commit().await.map_err(db)?;
        Ok(trigger)
    }

    async fn trigger_token_hash(&self, project: &str, name: &str) -> StoreResult<Option<String>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        triggers::token_hash(&mut conn, project, name).await
    }

    async fn fire_trigger(&self, batch: FireBatch) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        if triggers::fire(&mut tx, batch).await? {
            tx.commit().await.map_err(db)?;
            Ok(true)
        } else {
            tx.rollback().await.map_err(db)?;
            Ok(false)
        }
    }

    async fn list_fires(&self, project: &str, trigger: &str, limit: u32) -> StoreResult<Vec<Fire>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        triggers::list_fires(&mut conn, project, trigger, limit).await
    }
}

#[async_trait]
impl ServiceStore for SqliteStore {
    async fn put_service(
        &self,
        project: &str,
        name: &str,
        run_id: &str,
    ) -> StoreResult<ServiceRecord> {
        let mut tx = self.write().await?;
        let record = services::put_service(&mut tx, project, name, run_id).await?;
        tx.commit().await.map_err(db)?;
        Ok(record)
    }

    async fn get_service(&self, project: &str, name: &str) -> StoreResult<Option<ServiceRecord>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        services::get_service(&mut conn, project, name).await
    }

    async fn list_services(&self, project: &str) -> StoreResult<Vec<ServiceRecord>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        services::list_services(&mut conn, Some(project)).await
    }

    async fn all_services(&self) -> StoreResult<Vec<ServiceRecord>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        services::list_services(&mut conn, None).await
    }

    async fn delete_service(&self, project: &str, name: &str, run_id: &str) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let deleted = services::delete_service(&mut tx, project, name, run_id).await?;
        tx.commit().await.map_err(db)?;
        Ok(deleted)
    }

    async fn set_service_status(
        &self,
        run_id: &str,
        attempt: u32,
        status: &ServiceStatus,
    ) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let changed = services::set_service_status(&mut tx, run_id, attempt, status).await?;
        tx.commit().await.map_err(db)?;
        Ok(changed)
    }
}

#[async_trait]
impl SecretStore for SqliteStore {
    async fn put_secret(
        &self,
        project: &str,
        name: &str,
        ciphertext: &[u8],
        caller: &str,
    ) -> StoreResult<SecretMeta> {
        let mut tx = self.write().await?;
        let meta = secrets::put_secret(&mut tx, project, name, ciphertext, caller).await?;
        tx.commit().await.map_err(db)?;
        Ok(meta)
    }

    async fn get_secret(&self, project: &str, name: &str) -> StoreResult<Option<SecretMeta>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        secrets::get_secret(&mut conn, project, name).await
    }

    async fn get_secret_ciphertext(
        &self,
        project: &str,
        name: &str,
    ) -> StoreResult<Option<Vec<u8>>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        secrets::get_secret_ciphertext(&mut conn, project, name).await
    }

    async fn list_secrets(&self, project: &str) -> StoreResult<Vec<SecretMeta>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        secrets::list_secrets(&mut conn, project).await
    }

    async fn delete_secret(&self, project: &str, name: &str) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let deleted = secrets::delete_secret(&mut tx, project, name).await?;
        tx.commit().await.map_err(db)?;
        Ok(deleted)
    }
}

#[async_trait]
impl ArtifactStore for SqliteStore {
    async fn put_artifact(
        &self,
        artifact: runplane_domain::Artifact,
    ) -> StoreResult<Put<runplane_domain::Artifact>> {
        let mut tx = self.write().await?;
        let put = artifacts::put_artifact(&mut tx, artifact).await?;
        tx.commit().await.map_err(db)?;
        Ok(put)
    }

    async fn get_artifact(
        &self,
        project: &str,
        name: &str,
        version: Option<&str>,
    ) -> StoreResult<Option<runplane_domain::Artifact>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        artifacts::get_artifact(&mut conn, project, name, version).await
    }

    async fn list_artifacts(
        &self,
        project: &str,
        produced_by: Option<&str>,
    ) -> StoreResult<Vec<runplane_domain::Artifact>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        artifacts::list_artifacts(&mut conn, project, produced_by).await
    }

    async fn artifact_versions(
        &self,
        project: &str,
        name: &str,
    ) -> StoreResult<Vec<runplane_domain::Artifact>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        artifacts::artifact_versions(&mut conn, project, name).await
    }

    async fn delete_artifact(
        &self,
        project: &str,
        name: &str,
    ) -> StoreResult<Vec<runplane_domain::Artifact>> {
        let mut tx = self.write().await?;
        let deleted = artifacts::delete_artifact(&mut tx, project, name).await?;
        tx.commit().await.map_err(db)?;
        Ok(deleted)
    }

    async fn put_run_inputs(
        &self,
        project: &str,
        run_id: &str,
        inputs: &std::collections::BTreeMap<String, String>,
    ) -> StoreResult<()> {
        let mut tx = self.write().await?;
        artifacts::put_run_inputs(&mut tx, project, run_id, inputs).await?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn artifact_consumers(&self, key: &str) -> StoreResult<Vec<String>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        artifacts::artifact_consumers(&mut conn, key).await
    }
}

#[async_trait]
impl ReplicaStore for SqliteStore {
    async fn renew_replica_lease(&self, id: &str, lease_until: DateTime<Utc>) -> StoreResult<()> {
        let mut tx = self.write().await?;
        replicas::renew_lease(&mut tx, id, &lease_until).await?;
        tx.commit().await.map_err(db)
    }

    async fn list_replicas(&self) -> StoreResult<Vec<(String, DateTime<Utc>)>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        replicas::list(&mut conn).await
    }

    async fn adopt_orphaned_runs(
        &self,
        to: &str,
        expired_before: DateTime<Utc>,
    ) -> StoreResult<Vec<Run>> {
        let mut tx = self.write().await?;
        let runs = replicas::adopt(&mut tx, to, &expired_before).await?;
        tx.commit().await.map_err(db)?;
        Ok(runs)
    }

    async fn runs_owned_by(&self, owner: &str) -> StoreResult<Vec<Run>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        replicas::owned_by(&mut conn, owner).await
    }
}
