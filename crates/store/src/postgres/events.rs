//! The event log: the events a write appends (the same documents as the SQLite store's,
//! inserted when the write commits, see [`Write::append`]) and paged reads.

use super::codec::{from_json, to_u64, ts_text, PgResult};
use super::services::RunHead;
use super::Write;
use crate::{StoredEvent, MAX_EVENTS_PAGE};
use chrono::{DateTime, Utc};
use runplane_domain::{FunctionVersion, Run, RunState, ServiceRecord, ServiceStatus, Task};
use serde_json::{json, Value};
use sqlx::{PgConnection, Postgres, QueryBuilder};

/// Page size when a reader asks for 0.
const DEFAULT_LIMIT: u32 = 100;

#[derive(sqlx::FromRow)]
struct EventRow {
    id: i64,
    at: DateTime<Utc>,
    project: String,
    kind: String,
    data: String,
}

impl EventRow {
    fn into_event(self) -> PgResult<StoredEvent> {
        Ok(StoredEvent {
            id: to_u64("events.id", self.id)?,
            at: self.at,
            project: self.project,
            kind: self.kind,
            data: from_json("events.data", &self.data)?,
        })
    }
}

/// A run entered `state` (one event per stored transition, including those a run is created
/// with), so that a reader of the log sees the run's whole history as the store recorded it.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_changed(
    w: &mut Write,
    run: &Run,
    from: Option<RunState>,
    state: RunState,
    attempt: u32,
    reason: Option<&str>,
    at: &DateTime<Utc>,
) {
    let data = json!({
        "type": "run",
        "project": run.metadata.project,
        "id": run.metadata.id,
        "kind": run.kind,
        "function": run.spec.function_name,
        "from": from,
        "state": state,
        "attempt": attempt,
        "reason": reason,
        "at": ts_text(at),
    });
    w.append(*at, &run.metadata.project, "run", data);
}

/// A new function version was stored (not told when a put found an identical version).
pub(super) fn function_created(w: &mut Write, version: &FunctionVersion) {
    let meta = &version.metadata;
    let data = json!({
        "type": "function",
        "project": meta.project,
        "name": meta.name,
        "version": meta.version,
        "kind": version.kind,
        "at": ts_text(&meta.created),
    });
    w.append(meta.created, &meta.project, "function", data);
}

/// A task was created or replaced.
pub(super) fn task_put(w: &mut Write, task: &Task) {
    let meta = &task.metadata;
    let data = json!({
        "type": "task",
        "project": meta.project,
        "name": meta.name,
        "kind": task.kind,
        "function": task.spec.function,
        "at": ts_text(&meta.updated),
    });
    w.append(meta.updated, &meta.project, "task", data);
}

/// A run's replicas changed (not a transition: `change` tells readers that `from` and
/// `reason` are absent and `state` is the state the run stays in).
pub(super) fn run_service_changed(
    w: &mut Write,
    run: &RunHead,
    status: &ServiceStatus,
    at: &DateTime<Utc>,
) {
    let counts = json!({"ready": status.ready(), "desired": status.desired});
    run_document_changed(w, run, "service", counts, at);
}

/// A workflow run's node status was replaced.
pub(super) fn run_workflow_changed(
    w: &mut Write,
    run: &RunHead,
    status: &runplane_domain::workflow::WorkflowStatus,
    at: &DateTime<Utc>,
) {
    let done = status
        .nodes
        .iter()
        .filter(|n| n.state.is_terminal())
        .count();
    let counts = json!({"nodes": status.nodes.len(), "nodes_done": done});
    run_document_changed(w, run, "workflow", counts, at);
}

/// A `run` event for a change that is not a transition (`change` says which document), with
/// the run's head and the document's `counts`.
fn run_document_changed(
    w: &mut Write,
    run: &RunHead,
    change: &str,
    counts: Value,
    at: &DateTime<Utc>,
) {
    let mut data = json!({
        "type": "run",
        "project": run.project,
        "id": run.id,
        "kind": run.kind,
        "function": run.function,
        "state": run.state,
        "attempt": run.attempt,
        "change": change,
        "at": ts_text(at),
    });
    if let (Some(data), Value::Object(counts)) = (data.as_object_mut(), counts) {
        data.extend(counts);
    }
    w.append(*at, &run.project, "run", data);
}

/// A service name was created or pointed at another run.
pub(super) fn service_put(w: &mut Write, service: &ServiceRecord) {
    let data = json!({
        "type": "service",
        "project": service.project,
        "name": service.name,
        "run_id": service.run_id,
        "at": ts_text(&service.updated),
    });
    w.append(service.updated, &service.project, "service", data);
}

/// A service name was removed (it pointed at `run_id` until then).
pub(super) fn service_deleted(
    w: &mut Write,
    project: &str,
    name: &str,
    run_id: &str,
    at: &DateTime<Utc>,
) {
    let data = json!({
        "type": "service",
        "project": project,
        "name": name,
        "run_id": run_id,
        "deleted": true,
        "at": ts_text(at),
    });
    w.append(*at, project, "service", data);
}

/// A trigger was applied, paused or resumed, or (`deleted`) removed.
pub(super) fn trigger_changed(
    w: &mut Write,
    project: &str,
    name: &str,
    change: &str,
    at: &DateTime<Utc>,
) {
    let data = json!({
        "type": "trigger",
        "project": project,
        "name": name,
        "change": change,
        "at": ts_text(at),
    });
    w.append(*at, project, "trigger", data);
}

/// A secret was created, given a new value, or (`deleted`) removed. Names only: an event
/// never carries a secret's value, encrypted or not.
pub(super) fn secret_changed(
    w: &mut Write,
    project: &str,
    name: &str,
    deleted: bool,
    at: &DateTime<Utc>,
) {
    let mut data = json!({
        "type": "secret",
        "project": project,
        "name": name,
        "at": ts_text(at),
    });
    if deleted {
        data["deleted"] = json!(true);
    }
    w.append(*at, project, "secret", data);
}

/// A new artifact version was stored (a re-logged identical content appends nothing).
pub(super) fn artifact_created(w: &mut Write, artifact: &runplane_domain::Artifact) {
    let at = &artifact.metadata.created;
    let data = json!({
        "type": "artifact",
        "project": artifact.metadata.project,
        "name": artifact.metadata.name,
        "version": artifact.metadata.version,
        "key": artifact.status.key,
        "produced_by": artifact.status.produced_by,
        "at": ts_text(at),
    });
    w.append(*at, &artifact.metadata.project, "artifact", data);
}

/// Every version of an artifact was removed.
pub(super) fn artifact_deleted(w: &mut Write, project: &str, name: &str) {
    let at = super::codec::now();
    let data = json!({
        "type": "artifact",
        "project": project,
        "name": name,
        "deleted": true,
        "at": ts_text(&at),
    });
    w.append(at, project, "artifact", data);
}

pub(super) async fn events_after(
    conn: &mut PgConnection,
    after: u64,
    project: Option<&str>,
    limit: u32,
) -> PgResult<Vec<StoredEvent>> {
    let limit = match limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_EVENTS_PAGE),
    };
    // Ids beyond i64 cannot exist in a BIGINT column: nothing comes after them.
    let Ok(after) = i64::try_from(after) else {
        return Ok(Vec::new());
    };
    let mut query =
        QueryBuilder::<Postgres>::new("SELECT id, at, project, kind, data FROM events WHERE id > ");
    query.push_bind(after);
    if let Some(project) = project {
        query.push(" AND project = ").push_bind(project.to_string());
    }
    query
        .push(" ORDER BY id LIMIT ")
        .push_bind(i64::from(limit));
    let rows = query.build_query_as::<EventRow>().fetch_all(conn).await?;
    rows.into_iter().map(EventRow::into_event).collect()
}

pub(super) async fn latest_event_id(conn: &mut PgConnection) -> PgResult<u64> {
    let latest: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0)::BIGINT FROM events")
        .fetch_one(conn)
        .await?;
    Ok(to_u64("events.id", latest)?)
}
