//! The event log: appends made inside the writer's transaction, and paged reads.

use super::codec::{db, from_json, parse_ts, to_json, ts};
use super::services::RunHead;
use crate::{StoreError, StoreResult, StoredEvent, MAX_EVENTS_PAGE};
use chrono::{DateTime, Utc};
use runplane_domain::{FunctionVersion, Run, ServiceRecord, ServiceStatus, Task, Transition};
use serde_json::{json, Value};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

/// Page size when a reader asks for 0.
const DEFAULT_LIMIT: u32 = 100;

#[derive(sqlx::FromRow)]
struct EventRow {
    id: i64,
    at: String,
    project: String,
    kind: String,
    data: String,
}

impl EventRow {
    fn into_event(self) -> StoreResult<StoredEvent> {
        Ok(StoredEvent {
            id: u64::try_from(self.id).map_err(|e| {
                StoreError::Database(format!("corrupt value in column events.id: {e}"))
            })?,
            at: parse_ts("events.at", &self.at)?,
            project: self.project,
            kind: self.kind,
            data: from_json("events.data", &self.data)?,
        })
    }
}

/// Appends one event. Must run inside the write transaction of the change it describes: that
/// is what makes the log exact (nothing rolled back is told, nothing committed is missed).
pub(super) async fn append(
    conn: &mut SqliteConnection,
    at: &DateTime<Utc>,
    project: &str,
    kind: &str,
    data: &Value,
) -> StoreResult<()> {
    sqlx::query("INSERT INTO events (at, project, kind, data) VALUES (?, ?, ?, ?)")
        .bind(ts(at))
        .bind(project)
        .bind(kind)
        .bind(to_json("events.data", data)?)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(())
}

/// Who a run event is about: the fields of a run that never change.
pub(super) struct RunSubject<'a> {
    pub project: &'a str,
    pub id: &'a str,
    pub kind: &'a str,
    pub function: &'a str,
}

/// The `at` and `data` of the event of a run entering a state (one event per stored
/// transition, including those a run is created with), so that a reader of the log sees the
/// run's whole history as the store recorded it. Its kind is `run`.
pub(super) fn run_changed_row(
    subject: &RunSubject<'_>,
    transition: &Transition,
) -> StoreResult<(String, String)> {
    Ok((
        ts(&transition.at),
        to_json("events.data", &run_event(subject, transition))?,
    ))
}

/// Appends to `query` the statement inserting the events of a run's initial transitions
/// (CREATED, and BUILT/READY when it is created already built): one row each, ids in the
/// rows' order. Nothing when it has none.
pub(super) fn push_run_created(query: &mut QueryBuilder<Sqlite>, run: &Run) -> StoreResult<()> {
    let transitions = &run.status.transitions;
    if transitions.is_empty() {
        return Ok(());
    }
    let subject = RunSubject::of(run);
    let rows = transitions
        .iter()
        .map(|t| run_changed_row(&subject, t))
        .collect::<StoreResult<Vec<_>>>()?;
    query.push("INSERT INTO events (at, project, kind, data) ");
    query.push_values(rows, |mut row, (at, data)| {
        row.push_bind(at)
            .push_bind(&run.metadata.project)
            .push_bind("run")
            .push_bind(data);
    });
    query.push(";\n");
    Ok(())
}

impl<'a> RunSubject<'a> {
    pub(super) fn of(run: &'a Run) -> Self {
        RunSubject {
            project: &run.metadata.project,
            id: &run.metadata.id,
            kind: &run.kind,
            function: &run.spec.function_name,
        }
    }
}

/// The document of a run's event for one of its transitions.
fn run_event(subject: &RunSubject<'_>, t: &Transition) -> Value {
    json!({
        "type": "run",
        "project": subject.project,
        "id": subject.id,
        "kind": subject.kind,
        "function": subject.function,
        "from": t.from,
        "state": t.to,
        "attempt": t.attempt,
        "reason": t.reason,
        "at": ts(&t.at),
    })
}

/// A new function version was stored (not told when a put found an identical version).
pub(super) async fn function_created(
    conn: &mut SqliteConnection,
    version: &FunctionVersion,
) -> StoreResult<()> {
    let meta = &version.metadata;
    let data = json!({
        "type": "function",
        "project": meta.project,
        "name": meta.name,
        "version": meta.version,
        "kind": version.kind,
        "at": ts(&meta.created),
    });
    append(conn, &meta.created, &meta.project, "function", &data).await
}

/// A task was created or replaced.
pub(super) async fn task_put(conn: &mut SqliteConnection, task: &Task) -> StoreResult<()> {
    let meta = &task.metadata;
    let data = json!({
        "type": "task",
        "project": meta.project,
        "name": meta.name,
        "kind": task.kind,
        "function": task.spec.function,
        "at": ts(&meta.updated),
    });
    append(conn, &meta.updated, &meta.project, "task", &data).await
}

/// A run's replicas changed (not a transition: `change` tells readers that `from` and
/// `reason` are absent and `state` is the state the run stays in).
pub(super) async fn run_service_changed(
    conn: &mut SqliteConnection,
    run: &RunHead,
    status: &ServiceStatus,
    at: &DateTime<Utc>,
) -> StoreResult<()> {
    let counts = json!({"ready": status.ready(), "desired": status.desired});
    run_document_changed(conn, run, "service", counts, at).await
}

/// A workflow run's node status was replaced.
pub(super) async fn run_workflow_changed(
    conn: &mut SqliteConnection,
    run: &RunHead,
    status: &runplane_domain::workflow::WorkflowStatus,
    at: &DateTime<Utc>,
) -> StoreResult<()> {
    let done = status
        .nodes
        .iter()
        .filter(|n| n.state.is_terminal())
        .count();
    let counts = json!({"nodes": status.nodes.len(), "nodes_done": done});
    run_document_changed(conn, run, "workflow", counts, at).await
}

/// A `run` event for a change that is not a transition (`change` says which document), with
/// the run's head and the document's `counts`.
async fn run_document_changed(
    conn: &mut SqliteConnection,
    run: &RunHead,
    change: &str,
    counts: Value,
    at: &DateTime<Utc>,
) -> StoreResult<()> {
    let mut data = json!({
        "type": "run",
        "project": run.project,
        "id": run.id,
        "kind": run.kind,
        "function": run.function,
        "state": run.state,
        "attempt": run.attempt,
        "change": change,
        "at": ts(at),
    });
    if let (Some(data), Value::Object(counts)) = (data.as_object_mut(), counts) {
        data.extend(counts);
    }
    append(conn, at, &run.project, "run", &data).await
}

/// A service name was created or pointed at another run.
pub(super) async fn service_put(
    conn: &mut SqliteConnection,
    service: &ServiceRecord,
) -> StoreResult<()> {
    let data = json!({
        "type": "service",
        "project": service.project,
        "name": service.name,
        "run_id": service.run_id,
        "at": ts(&service.updated),
    });
    append(conn, &service.updated, &service.project, "service", &data).await
}

/// A service name was removed (it pointed at `run_id` until then).
pub(super) async fn service_deleted(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
    run_id: &str,
    at: &DateTime<Utc>,
) -> StoreResult<()> {
    let data = json!({
        "type": "service",
        "project": project,
        "name": name,
        "run_id": run_id,
        "deleted": true,
        "at": ts(at),
    });
    append(conn, at, project, "service", &data).await
}

/// A trigger was applied, paused or resumed, or (`deleted`) removed.
pub(super) async fn trigger_changed(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
    change: &str,
    at: &DateTime<Utc>,
) -> StoreResult<()> {
    let data = json!({
        "type": "trigger",
        "project": project,
        "name": name,
        "change": change,
        "at": ts(at),
    });
    append(conn, at, project, "trigger", &data).await
}

/// A secret was created, given a new value, or (`deleted`) removed. Names only: an event
/// never carries a secret's value, encrypted or not.
pub(super) async fn secret_changed(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
    deleted: bool,
    at: &DateTime<Utc>,
) -> StoreResult<()> {
    let mut data = json!({
        "type": "secret",
        "project": project,
        "name": name,
        "at": ts(at),
    });
    if deleted {
        data["deleted"] = json!(true);
    }
    append(conn, at, project, "secret", &data).await
}

pub(super) async fn events_after(
    conn: &mut SqliteConnection,
    after: u64,
    project: Option<&str>,
    limit: u32,
) -> StoreResult<Vec<StoredEvent>> {
    let limit = match limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_EVENTS_PAGE),
    };
    // Ids beyond i64 cannot exist in SQLite: nothing comes after them.
    let Ok(after) = i64::try_from(after) else {
        return Ok(Vec::new());
    };
    let mut query =
        QueryBuilder::<Sqlite>::new("SELECT id, at, project, kind, data FROM events WHERE id > ");
    query.push_bind(after);
    if let Some(project) = project {
        query.push(" AND project = ").push_bind(project.to_string());
    }
    query
        .push(" ORDER BY id LIMIT ")
        .push_bind(i64::from(limit));
    query
        .build_query_as::<EventRow>()
        .fetch_all(conn)
        .await
        .map_err(db)?
        .into_iter()
        .map(EventRow::into_event)
        .collect()
}

pub(super) async fn latest_event_id(conn: &mut SqliteConnection) -> StoreResult<u64> {
    let (latest,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) FROM events")
        .fetch_one(conn)
        .await
        .map_err(db)?;
    u64::try_from(latest)
        .map_err(|e| StoreError::Database(format!("corrupt value in column events.id: {e}")))
}

/// A new artifact version was stored (a re-logged identical content appends nothing).
pub(super) async fn artifact_created(
    conn: &mut SqliteConnection,
    artifact: &runplane_domain::Artifact,
) -> StoreResult<()> {
    let at = &artifact.metadata.created;
    let data = json!({
        "type": "artifact",
        "project": artifact.metadata.project,
        "name": artifact.metadata.name,
        "version": artifact.metadata.version,
        "key": artifact.status.key,
        "produced_by": artifact.status.produced_by,
        "at": ts(at),
    });
    append(conn, at, &artifact.metadata.project, "artifact", &data).await
}

/// Every version of an artifact was removed.
pub(super) async fn artifact_deleted(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
) -> StoreResult<()> {
    let at = super::codec::now();
    let data = json!({
        "type": "artifact",
        "project": project,
        "name": name,
        "deleted": true,
        "at": ts(&at),
    });
    append(conn, &at, project, "artifact", &data).await
}
