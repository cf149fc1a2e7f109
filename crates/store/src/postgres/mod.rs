//! The production [`Store`]: PostgreSQL, shared by any number of server processes.
//!
//! SQLite gets its correctness from having one writer at a time (`BEGIN IMMEDIATE`). Here many
//! transactions write at once, from several pools and processes, so every invariant of the
//! trait is held by the database itself:
//!
//! * **Compare-and-sets are guarded UPDATEs** in READ COMMITTED transactions: `transition`
//!   (`WHERE id AND state AND attempt`), `fire_trigger` (`next_fire IS NOT DISTINCT FROM` the
//!   expected tick), `set_wait_reason`, `set_service_status`, `set_workflow_status`,
//!   `delete_service` (`AND run_id`). A writer that finds the row locked waits for the other
//!   transaction to end, then re-checks its WHERE clause against the row as committed: of two
//!   racing claims exactly one matches, the other sees zero rows and reports the run's state.
//!   The UPDATE is the first statement, so everything after it runs under the row lock.
//! * **"At most once" is a UNIQUE constraint**, never a look-up followed by an insert:
//!   idempotency keys and content hashes insert with `ON CONFLICT DO NOTHING` (the loser
//!   waits for the winner's commit, then reads its row), fire dedup keys fail the whole fire.
//! * **Event ids become visible in increasing order.** An identity column alone would not
//!   do: a transaction that drew id 10 may commit after the one that drew 11, and a reader of
//!   `events_after` that saw 11 would resume past 10 and never see it. So a transaction
//!   collects its events while it works ([`Write::append`]) and inserts them only as the last
//!   thing before COMMIT, after taking the transaction-level advisory lock
//!   [`EVENT_LOG_LOCK`]: transactions that append events draw their ids one after another and
//!   commit in that order (the lock is released only once the commit is visible). Holding it
//!   for the few inserts and the commit, and waiting for nothing else once it is held, keeps
//!   the serialized part short and free of deadlocks.
//! * **Serialization failures and deadlocks are retried** (SQLSTATE 40001, 40P01): every write
//!   is a closure that runs in a fresh transaction up to [`MAX_ATTEMPTS`] times. None is
//!   expected from the statements above; the retry covers what the database may still decide
//!   (e.g. two lifecycle fires inserting the same two dedup keys in opposite orders).
//! * **Reads that span several statements** (a run with its transitions and attempts, a
//!   listing) run in a REPEATABLE READ, READ ONLY transaction: one snapshot, never blocking a
//!   writer, never failing to serialize.

mod artifacts;
mod catalog;
mod codec;
mod events;
mod replicas;
mod runs;
mod secrets;
mod services;
#[cfg(feature = "testing")]
pub mod testing;
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
use codec::{db, PgResult};
use runplane_domain::trigger::{Fire, Trigger};
use runplane_domain::workflow::WorkflowStatus;
use runplane_domain::{
    FunctionVersion, Project, Run, RunState, SecretMeta, ServiceRecord, ServiceStatus, Task,
};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// The key of the transaction-level advisory lock under which events are inserted (the bytes
/// of "runplan\x01"). Advisory locks are per database, so two runplane databases on one
/// server never contend for it.
pub const EVENT_LOG_LOCK: i64 = 0x7275_6e70_6c61_6e01;

/// How many times a write runs when the database asks for a retry (40001, 40P01).
pub const MAX_ATTEMPTS: u32 = 8;

/// Settings of a [`PostgresStore`]'s connection pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresOptions {
    /// The most connections the pool opens (default 10). Each server process has its own
    /// pool: the database's `max_connections` must cover all of them.
    pub max_connections: u32,
    /// Connections kept open while idle (default 0).
    pub min_connections: u32,
    /// How long a call waits for a free connection before failing (default 30 s).
    pub acquire_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(30),
        }
    }
}

/// A [`Store`] on a PostgreSQL database. Cheap to clone: clones share one connection pool.
/// Any number of stores (in one process or many) may use the same database at once.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Bumped on every notification on [`EVENTS_CHANNEL`]; the listener starts with the first
    /// subscriber.
    appends: Arc<OnceLock<watch::Sender<u64>>>,
}

/// The `NOTIFY` channel every write that appended events signals at its commit.
pub const EVENTS_CHANNEL: &str = "runplane_events";

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`) with
    /// the default pool settings and migrates it to the current schema.
    pub async fn connect(url: &str) -> StoreResult<PostgresStore> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects with the given pool settings and migrates the database. Several processes may
    /// do this at once: the migrator holds an advisory lock while it migrates.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> StoreResult<PostgresStore> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Database(format!("invalid PostgreSQL URL: {e}")))?
            .application_name("runplane");
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .min_connections(options.min_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(db)?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(format!("migration failed: {e}")))?;
        tracing::debug!(
            max_connections = options.max_connections,
            "opened PostgreSQL store"
        );
        Ok(PostgresStore {
            pool,
            appends: Arc::new(OnceLock::new()),
        })
    }

    /// The underlying pool, for diagnostics and tests. Writing through it bypasses the store's
    /// invariants (events in particular must only be inserted under [`EVENT_LOG_LOCK`]).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Listens on [`EVENTS_CHANNEL`] (reconnecting after a lost connection) and bumps
    /// `appends` on every notification, and once after each reconnection, since
    /// notifications sent meanwhile are lost.
    fn start_listener(&self) -> watch::Sender<u64> {
        let (sender, _) = watch::channel(0_u64);
        let bump = sender.clone();
        let pool = self.pool.clone();
        tokio::spawn(async move {
            loop {
                let listener = async {
                    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
                    listener.listen(EVENTS_CHANNEL).await?;
                    bump.send_modify(|n| *n = n.wrapping_add(1));
                    loop {
                        listener.recv().await?;
                        bump.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), sqlx::Error>(())
                };
                if let Err(error) = listener.await {
                    if pool.is_closed() || bump.is_closed() {
                        return;
                    }
                    tracing::warn!(%error, "listening for other replicas' events failed; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        sender
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs `op` in a READ COMMITTED transaction and commits it (with the events it
    /// appended), starting over in a new transaction when the database reports a
    /// serialization failure or a deadlock. `args` are what `op` works on: passing them as an
    /// argument (not capturing them) lets the future borrow them.
    async fn write<A, T, F>(&self, what: &'static str, args: &A, mut op: F) -> StoreResult<T>
    where
        A: Sync + ?Sized,
        F: for<'w> FnMut(&'w mut Write, &'w A) -> BoxFuture<'w, PgResult<T>> + Send,
        T: Send,
    {
        let mut attempt = 1;
        loop {
            let outcome = self.write_once(args, &mut op).await;
            match outcome {
                Err(failure) if failure.is_retryable() && attempt < MAX_ATTEMPTS => {
                    tracing::debug!(what, attempt, error = ?failure, "retrying a write");
                    // A little later each time, so that the transactions that collided do not
                    // collide again in lockstep.
                    let pause = 2_u64.pow(attempt.min(6)) + u64::from(jitter());
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    attempt += 1;
                }
                Err(failure) => return Err(failure.into()),
                Ok(value) => return Ok(value),
            }
        }
    }

    async fn write_once<A, T, F>(&self, args: &A, op: &mut F) -> PgResult<T>
    where
        A: Sync + ?Sized,
        F: for<'w> FnMut(&'w mut Write, &'w A) -> BoxFuture<'w, PgResult<T>> + Send,
        T: Send,
    {
        let tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await?;
        let mut write = Write {
            tx,
            events: Vec::new(),
            discard: false,
        };
        // On an error the transaction is dropped, which rolls it back.
        let value = op(&mut write, args).await?;
        write.finish().await?;
        Ok(value)
    }

    /// A read-only snapshot for reads that take several statements.
    async fn read(&self) -> StoreResult<Transaction<'static, Postgres>> {
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(db)
    }

    /// Runs `op` on a read snapshot.
    async fn snapshot<A, T, F>(&self, args: &A, op: F) -> StoreResult<T>
    where
        A: Sync + ?Sized,
        F: for<'c> FnOnce(&'c mut PgConnection, &'c A) -> BoxFuture<'c, PgResult<T>>,
    {
        let mut tx = self.read().await?;
        let value = op(&mut tx, args).await?;
        tx.commit().await.map_err(db)?;
        Ok(value)
    }

    /// Runs the single statement of `op` on a pooled connection.
    async fn single<A, T, F>(&self, args: &A, op: F) -> StoreResult<T>
    where
        A: Sync + ?Sized,
        F: for<'c> FnOnce(&'c mut PgConnection, &'c A) -> BoxFuture<'c, PgResult<T>>,
    {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        Ok(op(&mut conn, args).await?)
    }
}

/// A few milliseconds of jitter, from the clock (no need for a random generator).
fn jitter() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 7)
        .unwrap_or(3)
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An event appended by a write, inserted when the write commits.
#[derive(Debug)]
pub(crate) struct NewEvent {
    at: DateTime<Utc>,
    project: String,
    kind: &'static str,
    data: Value,
}

/// A write transaction and the events it appends. Statements run on [`Write::conn`]; events
/// wait in [`Write::append`] until [`Write::finish`] inserts them under [`EVENT_LOG_LOCK`] and
/// commits.
pub(crate) struct Write {
    tx: Transaction<'static, Postgres>,
    events: Vec<NewEvent>,
    discard: bool,
}

impl Write {
    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Appends an event to the log, as part of this transaction: it is inserted (with its id)
    /// at commit, and never if the transaction rolls back.
    pub(crate) fn append(
        &mut self,
        at: DateTime<Utc>,
        project: &str,
        kind: &'static str,
        data: Value,
    ) {
        self.events.push(NewEvent {
            at: codec::micros(&at),
            project: project.to_string(),
            kind,
            data,
        });
    }

    /// Ends the transaction by rolling it back, whatever was done or appended (a fire that
    /// found its work already done).
    pub(crate) fn discard(&mut self) {
        self.discard = true;
    }

    async fn finish(mut self) -> PgResult<()> {
        if self.discard {
            self.tx.rollback().await?;
            return Ok(());
        }
        if !self.events.is_empty() {
            // Last statements of the transaction: from here it waits for nothing but this lock,
            // so a holder of the lock is never stuck behind a transaction that waits for it.
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(EVENT_LOG_LOCK)
                .execute(&mut *self.tx)
                .await?;
            // Delivered at commit, to every replica's listener.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(EVENTS_CHANNEL)
                .execute(&mut *self.tx)
                .await?;
            for event in std::mem::take(&mut self.events) {
                let data = codec::to_json("events.data", &event.data)?;
                sqlx::query("INSERT INTO events (at, project, kind, data) VALUES ($1, $2, $3, $4)")
                    .bind(event.at)
                    .bind(&event.project)
                    .bind(event.kind)
                    .bind(data)
                    .execute(&mut *self.tx)
                    .await?;
            }
        }
        // The advisory lock is released only after the commit is visible to new snapshots.
        self.tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl CatalogStore for PostgresStore {
    async fn ensure_project(&self, name: &str, created_by: &str) -> StoreResult<Project> {
        // Nearly always there already: a read spares a write transaction.
        if let Some(project) = self.get_project(name).await? {
            return Ok(project);
        }
        self.write("ensure_project", &(name, created_by), |w, (name, by)| {
            Box::pin(catalog::ensure_project(w, name, by))
        })
        .await
    }

    async fn get_project(&self, name: &str) -> StoreResult<Option<Project>> {
        self.single(name, |c, name| Box::pin(catalog::get_project(c, name)))
            .await
    }

    async fn list_projects(&self) -> StoreResult<Vec<Project>> {
        self.single(&(), |c, ()| Box::pin(catalog::list_projects(c)))
            .await
    }

    async fn put_function_version(
        &self,
        version: FunctionVersion,
    ) -> StoreResult<Put<FunctionVersion>> {
        self.write("put_function_version", &version, |w, version| {
            Box::pin(catalog::put_function_version(w, version))
        })
        .await
    }

    async fn get_function(
        &self,
        project: &str,
        name: &str,
        version: Option<&str>,
    ) -> StoreResult<Option<FunctionVersion>> {
        self.single(&(project, name, version), |c, (project, name, version)| {
            Box::pin(catalog::get_function(c, project, name, *version))
        })
        .await
    }

    async fn list_functions(&self, project: &str) -> StoreResult<Vec<FunctionVersion>> {
        self.single(project, |c, project| {
            Box::pin(catalog::list_functions(c, project))
        })
        .await
    }

    async fn list_function_versions(
        &self,
        project: &str,
        name: &str,
    ) -> StoreResult<Vec<FunctionVersion>> {
        self.single(&(project, name), |c, (project, name)| {
            Box::pin(catalog::list_function_versions(c, project, name))
        })
        .await
    }

    async fn delete_function(&self, project: &str, name: &str) -> StoreResult<bool> {
        self.write("delete_function", &(project, name), |w, (project, name)| {
            Box::pin(catalog::delete_function(w, project, name))
        })
        .await
    }

    async fn put_task(&self, task: Task) -> StoreResult<Task> {
        self.write("put_task", &task, |w, task| {
            Box::pin(catalog::put_task(w, task))
        })
        .await
    }

    async fn get_task(&self, project: &str, name: &str) -> StoreResult<Option<Task>> {
        self.single(&(project, name), |c, (project, name)| {
            Box::pin(catalog::get_task(c, project, name))
        })
        .await
    }

    async fn list_tasks(&self, project: &str) -> StoreResult<Vec<Task>> {
        self.single(project, |c, project| {
            Box::pin(catalog::list_tasks(c, project))
        })
        .await
    }

    async fn delete_task(&self, project: &str, name: &str) -> StoreResult<bool> {
        self.write("delete_task", &(project, name), |w, (project, name)| {
            Box::pin(catalog::delete_task(w, project, name))
        })
        .await
    }
}

#[async_trait]
impl RunStore for PostgresStore {
    async fn create_run(
        &self,
        run: Run,
        idempotency: Option<IdempotencyKey>,
    ) -> StoreResult<Put<Run>> {
        self.write("create_run", &(run, idempotency), |w, (run, key)| {
            Box::pin(runs::create_run(w, run, key.as_ref()))
        })
        .await
    }

    async fn get_run(&self, project: &str, id: &str) -> StoreResult<Option<Run>> {
        self.snapshot(&(project, id), |c, (project, id)| {
            Box::pin(runs::get_run(c, Some(project), id))
        })
        .await
    }

    async fn get_run_by_id(&self, id: &str) -> StoreResult<Option<Run>> {
        self.snapshot(id, |c, id| Box::pin(runs::get_run(c, None, id)))
            .await
    }

    async fn list_runs(&self, query: &RunQuery) -> StoreResult<RunPage> {
        self.snapshot(query, |c, query| Box::pin(runs::list_runs(c, query)))
            .await
    }

    async fn runs_in_states(&self, states: &[RunState], limit: u32) -> StoreResult<Vec<Run>> {
        self.snapshot(&(states, limit), |c, (states, limit)| {
            Box::pin(runs::runs_in_states(c, states, *limit))
        })
        .await
    }

    async fn count_active(&self) -> StoreResult<ActiveCounts> {
        self.single(&(), |c, ()| Box::pin(runs::count_active(c)))
            .await
    }

    async fn run_state(&self, id: &str) -> StoreResult<Option<(RunState, u32)>> {
        self.single(id, |c, id| Box::pin(runs::run_state(c, id)))
            .await
    }

    async fn transition(&self, request: TransitionRequest) -> StoreResult<Run> {
        // Refused before touching the database: an illegal move is a bug in the caller,
        // whatever the run's current state.
        runplane_domain::lifecycle::check_transition(request.from, request.to)?;
        self.write("transition", &request, |w, request| {
            Box::pin(transition::transition(w, request))
        })
        .await
    }

    async fn set_wait_reason(
        &self,
        run_id: &str,
        state: RunState,
        attempt: u32,
        reason: Option<&str>,
        message: Option<&str>,
    ) -> StoreResult<bool> {
        let args = (run_id, state, attempt, reason, message);
        self.write("set_wait_reason", &args, |w, args| {
            let (run_id, state, attempt, reason, message) = *args;
            Box::pin(transition::set_wait_reason(
                w, run_id, state, attempt, reason, message,
            ))
        })
        .await
    }

    async fn delete_run(&self, project: &str, id: &str) -> StoreResult<bool> {
        self.write("delete_run", &(project, id), |w, (project, id)| {
            Box::pin(runs::delete_run(w, project, id))
        })
        .await
    }

    async fn set_workflow_status(
        &self,
        run_id: &str,
        attempt: u32,
        status: &WorkflowStatus,
    ) -> StoreResult<bool> {
        self.write(
            "set_workflow_status",
            &(run_id, attempt, status),
            |w, (run_id, attempt, status)| {
                Box::pin(workflows::set_workflow_status(w, run_id, *attempt, status))
            },
        )
        .await
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn events_after(
        &self,
        after: u64,
        project: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<StoredEvent>> {
        self.single(&(after, project, limit), |c, (after, project, limit)| {
            Box::pin(events::events_after(c, *after, *project, *limit))
        })
        .await
    }

    async fn latest_event_id(&self) -> StoreResult<u64> {
        self.single(&(), |c, ()| Box::pin(events::latest_event_id(c)))
            .await
    }

    async fn get_cursor(&self, name: &str) -> StoreResult<Option<u64>> {
        self.single(name, |c, name| Box::pin(triggers::get_cursor(c, name)))
            .await
    }

    async fn set_cursor(&self, name: &str, position: u64) -> StoreResult<()> {
        self.write("set_cursor", &(name, position), |w, (name, position)| {
            Box::pin(triggers::set_cursor(w, name, *position))
        })
        .await
    }

    fn appends_elsewhere(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(
            self.appends
                .get_or_init(|| self.start_listener())
                .subscribe(),
        )
    }
}

#[async_trait]
impl TriggerStore for PostgresStore {
    async fn put_trigger(
        &self,
        trigger: &Trigger,
        token_hash: Option<&str>,
    ) -> StoreResult<Trigger> {
        self.write(
            "put_trigger",
            &(trigger, token_hash),
            |w, (trigger, token_hash)| Box::pin(triggers::put_trigger(w, trigger, *token_hash)),
        )
        .await
    }

    async fn get_trigger(&self, project: &str, name: &str) -> StoreResult<Option<Trigger>> {
        self.single(&(project, name), |c, (project, name)| {
            Box::pin(triggers::get_trigger(c, project, name))
        })
        .await
    }

    async fn list_triggers(&self, project: Option<&str>) -> StoreResult<Vec<Trigger>> {
        self.single(&project, |c, project| {
            Box::pin(triggers::list_triggers(c, *project))
        })
        .await
    }

    async fn delete_trigger(&self, project: &str, name: &str) -> StoreResult<bool> {
        self.write("delete_trigger", &(project, name), |w, (project, name)| {
            Box::pin(triggers::delete_trigger(w, project, name))
        })
        .await
    }

    async fn set_trigger_paused(
        &self,
        project: &str,
        name: &str,
        paused: bool,
        next_fire: Option<DateTime<Utc>>,
    ) -> StoreResult<Option<Trigger>> {
        self.write(
            "set_trigger_paused",
            &(project, name, paused, next_fire),
            |w, (project, name, paused, next_fire)| {
                Box::pin(triggers::set_paused(w, project, name, *paused, *next_fire))
            },
        )
        .await
    }

    async fn trigger_token_hash(&self, project: &str, name: &str) -> StoreResult<Option<String>> {
        self.single(&(project, name), |c, (project, name)| {
            Box::pin(triggers::token_hash(c, project, name))
        })
        .await
    }

    async fn fire_trigger(&self, batch: FireBatch) -> StoreResult<bool> {
        self.write("fire_trigger", &batch, |w, batch| {
            Box::pin(triggers::fire(w, batch))
        })
        .await
    }

    async fn list_fires(&self, project: &str, trigger: &str, limit: u32) -> StoreResult<Vec<Fire>> {
        self.single(
            &(project, trigger, limit),
            |c, (project, trigger, limit)| {
                Box::pin(triggers::list_fires(c, project, trigger, *limit))
            },
        )
        .await
    }
}

#[async_trait]
impl ServiceStore for PostgresStore {
    async fn put_service(
        &self,
        project: &str,
        name: &str,
        run_id: &str,
    ) -> StoreResult<ServiceRecord> {
        self.write(
            "put_service",
            &(project, name, run_id),
            |w, (project, name, run_id)| Box::pin(services::put_service(w, project, name, run_id)),
        )
        .await
    }

    async fn get_service(&self, project: &str, name: &str) -> StoreResult<Option<ServiceRecord>> {
        self.single(&(project, name), |c, (project, name)| {
            Box::pin(services::get_service(c, project, name))
        })
        .await
    }

    async fn list_services(&self, project: &str) -> StoreResult<Vec<ServiceRecord>> {
        self.single(project, |c, project| {
            Box::pin(services::list_services(c, Some(project)))
        })
        .await
    }

    async fn all_services(&self) -> StoreResult<Vec<ServiceRecord>> {
        self.single(&(), |c, ()| Box::pin(services::list_services(c, None)))
            .await
    }

    async fn delete_service(&self, project: &str, name: &str, run_id: &str) -> StoreResult<bool> {
        self.write(
            "delete_service",
            &(project, name, run_id),
            |w, (project, name, run_id)| {
                Box::pin(services::delete_service(w, project, name, run_id))
            },
        )
        .await
    }

    async fn set_service_status(
        &self,
        run_id: &str,
        attempt: u32,
        status: &ServiceStatus,
    ) -> StoreResult<bool> {
        self.write(
            "set_service_status",
            &(run_id, attempt, status),
            |w, (run_id, attempt, status)| {
                Box::pin(services::set_service_status(w, run_id, *attempt, status))
            },
        )
        .await
    }
}

#[async_trait]
impl SecretStore for PostgresStore {
    async fn put_secret(
        &self,
        project: &str,
        name: &str,
        ciphertext: &[u8],
        caller: &str,
    ) -> StoreResult<SecretMeta> {
        self.write(
            "put_secret",
            &(project, name, ciphertext, caller),
            |w, (project, name, ciphertext, caller)| {
                Box::pin(secrets::put_secret(w, project, name, ciphertext, caller))
            },
        )
        .await
    }

    async fn get_secret(&self, project: &str, name: &str) -> StoreResult<Option<SecretMeta>> {
        self.single(&(project, name), |c, (project, name)| {
            Box::pin(secrets::get_secret(c, project, name))
        })
        .await
    }

    async fn get_secret_ciphertext(
        &self,
        project: &str,
        name: &str,
    ) -> StoreResult<Option<Vec<u8>>> {
        self.single(&(project, name), |c, (project, name)| {
            Box::pin(secrets::get_secret_ciphertext(c, project, name))
        })
        .await
    }

    async fn list_secrets(&self, project: &str) -> StoreResult<Vec<SecretMeta>> {
        self.single(project, |c, project| {
            Box::pin(secrets::list_secrets(c, project))
        })
        .await
    }

    async fn delete_secret(&self, project: &str, name: &str) -> StoreResult<bool> {
        self.write("delete_secret", &(project, name), |w, (project, name)| {
            Box::pin(secrets::delete_secret(w, project, name))
        })
        .await
    }
}

#[async_trait]
impl ArtifactStore for PostgresStore {
    async fn put_artifact(
        &self,
        artifact: runplane_domain::Artifact,
    ) -> StoreResult<Put<runplane_domain::Artifact>> {
        self.write("put_artifact", &artifact, |w, artifact| {
            Box::pin(artifacts::put_artifact(w, artifact))
        })
        .await
    }

    async fn get_artifact(
        &self,
        project: &str,
        name: &str,
        version: Option<&str>,
    ) -> StoreResult<Option<runplane_domain::Artifact>> {
        self.single(&(project, name, version), |c, (project, name, version)| {
            Box::pin(artifacts::get_artifact(c, project, name, *version))
        })
        .await
    }

    async fn list_artifacts(
        &self,
        project: &str,
        produced_by: Option<&str>,
    ) -> StoreResult<Vec<runplane_domain::Artifact>> {
        self.single(&(project, produced_by), |c, (project, produced_by)| {
            Box::pin(artifacts::list_artifacts(c, project, *produced_by))
        })
        .await
    }

    async fn artifact_versions(
        &self,
        project: &str,
        name: &str,
    ) -> StoreResult<Vec<runplane_domain::Artifact>> {
        self.single(&(project, name), |c, (project, name)| {
            Box::pin(artifacts::artifact_versions(c, project, name))
        })
        .await
    }

    async fn delete_artifact(
        &self,
        project: &str,
        name: &str,
    ) -> StoreResult<Vec<runplane_domain::Artifact>> {
        self.write("delete_artifact", &(project, name), |w, (project, name)| {
            Box::pin(artifacts::delete_artifact(w, project, name))
        })
        .await
    }

    async fn put_run_inputs(
        &self,
        project: &str,
        run_id: &str,
        inputs: &std::collections::BTreeMap<String, String>,
    ) -> StoreResult<()> {
        self.write(
            "put_run_inputs",
            &(project, run_id, inputs),
            |w, (project, run_id, inputs)| {
                Box::pin(artifacts::put_run_inputs(w, project, run_id, inputs))
            },
        )
        .await
    }

    async fn artifact_consumers(&self, key: &str) -> StoreResult<Vec<String>> {
        self.single(key, |c, key| {
            Box::pin(artifacts::artifact_consumers(c, key))
        })
        .await
    }
}

#[async_trait]
impl ReplicaStore for PostgresStore {
    fn is_shared(&self) -> bool {
        true
    }

    async fn renew_replica_lease(&self, id: &str, lease_until: DateTime<Utc>) -> StoreResult<()> {
        let until = codec::micros(&lease_until);
        self.write("renew_replica_lease", &(id, until), |w, (id, until)| {
            Box::pin(replicas::renew_lease(w, id, *until))
        })
        .await
    }

    async fn list_replicas(&self) -> StoreResult<Vec<(String, DateTime<Utc>)>> {
        self.single(&(), |c, ()| Box::pin(replicas::list(c))).await
    }

    async fn adopt_orphaned_runs(
        &self,
        to: &str,
        expired_before: DateTime<Utc>,
    ) -> StoreResult<Vec<Run>> {
        self.write(
            "adopt_orphaned_runs",
            &(to, expired_before),
            |w, (to, expired_before)| Box::pin(replicas::adopt(w, to, *expired_before)),
        )
        .await
    }

    async fn runs_owned_by(&self, owner: &str) -> StoreResult<Vec<Run>> {
        self.snapshot(owner, |c, owner| Box::pin(replicas::owned_by(c, owner)))
            .await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_event_lock_key_spells_runplan() {
        assert_eq!(&super::EVENT_LOG_LOCK.to_be_bytes()[..7], b"runplan");
    }
}
