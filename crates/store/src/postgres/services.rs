//! Services: the names `(project, name)` and the run each points at, and `status.service` of
//! service runs (the `runs.service` column).

use super::codec::{is_foreign_key_violation, now, parse_state, to_json, to_u32, PgResult};
use super::{events, Write};
use crate::StoreError;
use chrono::{DateTime, Utc};
use runplane_domain::{RunState, ServiceRecord, ServiceStatus};
use sqlx::AssertSqlSafe;
use sqlx::PgConnection;

const SERVICE_COLUMNS: &str = "project, name, run_id, created, updated";

#[derive(sqlx::FromRow)]
struct ServiceRow {
    project: String,
    name: String,
    run_id: String,
    created: DateTime<Utc>,
    updated: DateTime<Utc>,
}

impl From<ServiceRow> for ServiceRecord {
    fn from(row: ServiceRow) -> Self {
        ServiceRecord {
            project: row.project,
            name: row.name,
            run_id: row.run_id,
            created: row.created,
            updated: row.updated,
        }
    }
}

/// What a run event tells about the run whose service or workflow status changed.
pub(super) struct RunHead {
    pub project: String,
    pub id: String,
    pub kind: String,
    pub function: String,
    pub state: RunState,
    pub attempt: u32,
}

pub(super) async fn put_service(
    w: &mut Write,
    project: &str,
    name: &str,
    run_id: &str,
) -> PgResult<ServiceRecord> {
    // Checked first so that the error names what is missing (the foreign key alone could only
    // say "project"). The run must be one of the project's: a name never points across
    // projects. FOR KEY SHARE keeps the run from being deleted until this transaction ends.
    let project_exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM projects WHERE name = $1")
        .bind(project)
        .fetch_optional(w.conn())
        .await?;
    if project_exists.is_none() {
        return Err(StoreError::NotFound(format!("project {project}")).into());
    }
    let run_exists: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM runs WHERE id = $1 AND project = $2 FOR KEY SHARE")
            .bind(run_id)
            .bind(project)
            .fetch_optional(w.conn())
            .await?;
    if run_exists.is_none() {
        return Err(StoreError::NotFound(format!("run {run_id}")).into());
    }

    let at = now();
    // On a takeover only `run_id` and `updated` change: `created` is when the name appeared.
    let upserted = sqlx::query_as::<_, ServiceRow>(AssertSqlSafe(format!(
        "INSERT INTO services ({SERVICE_COLUMNS}) VALUES ($1, $2, $3, $4, $4)
         ON CONFLICT (project, name) DO UPDATE SET
             run_id = EXCLUDED.run_id, updated = EXCLUDED.updated
         RETURNING {SERVICE_COLUMNS}"
    )))
    .bind(project)
    .bind(name)
    .bind(run_id)
    .bind(at)
    .fetch_one(w.conn())
    .await;
    let record = match upserted {
        Ok(row) => ServiceRecord::from(row),
        Err(e) if is_foreign_key_violation(&e) => {
            return Err(StoreError::NotFound(format!("project {project}")).into())
        }
        Err(e) => return Err(e.into()),
    };
    events::service_put(w, &record);
    Ok(record)
}

pub(super) async fn get_service(
    conn: &mut PgConnection,
    project: &str,
    name: &str,
) -> PgResult<Option<ServiceRecord>> {
    let row = sqlx::query_as::<_, ServiceRow>(AssertSqlSafe(format!(
        "SELECT {SERVICE_COLUMNS} FROM services WHERE project = $1 AND name = $2"
    )))
    .bind(project)
    .bind(name)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(ServiceRecord::from))
}

/// The services of `project`, or of every project when None, by (project, name).
pub(super) async fn list_services(
    conn: &mut PgConnection,
    project: Option<&str>,
) -> PgResult<Vec<ServiceRecord>> {
    let rows = match project {
        Some(project) => {
            sqlx::query_as::<_, ServiceRow>(AssertSqlSafe(format!(
                "SELECT {SERVICE_COLUMNS} FROM services WHERE project = $1 ORDER BY name"
            )))
            .bind(project)
            .fetch_all(conn)
            .await?
        }
        None => {
            sqlx::query_as::<_, ServiceRow>(AssertSqlSafe(format!(
                "SELECT {SERVICE_COLUMNS} FROM services ORDER BY project, name"
            )))
            .fetch_all(conn)
            .await?
        }
    };
    Ok(rows.into_iter().map(ServiceRecord::from).collect())
}

pub(super) async fn delete_service(
    w: &mut Write,
    project: &str,
    name: &str,
    run_id: &str,
) -> PgResult<bool> {
    // Guarded by run_id: a run that ends after another took its name over must not remove
    // the name from under the newer run.
    let deleted =
        sqlx::query("DELETE FROM services WHERE project = $1 AND name = $2 AND run_id = $3")
            .bind(project)
            .bind(name)
            .bind(run_id)
            .execute(w.conn())
            .await?;
    if deleted.rows_affected() == 0 {
        return Ok(false);
    }
    events::service_deleted(w, project, name, run_id, &now());
    Ok(true)
}

#[derive(sqlx::FromRow)]
struct UpdatedRun {
    project: String,
    kind: String,
    function_name: String,
    state: String,
    attempt: i64,
}

/// A document of a run's status that its reporter replaces whole.
#[derive(Debug, Clone, Copy)]
pub(super) enum RunDocument {
    /// `status.service`: a service run's replicas.
    Service,
    /// `status.workflow`: a workflow run's nodes.
    Workflow,
}

/// Replaces one status document of the run while its attempt is `attempt`; the run's head
/// (for the event the caller appends), or None when the run is gone or on another attempt.
///
/// Guarded by attempt only, not state: replicas and nodes are reported while the run is
/// PENDING, RUNNING and STOP alike; a report of an older attempt must not overwrite the
/// current one's. A transition that moves the attempt on concurrently is waited for, and the
/// guard re-checked against it. RETURNING gives the event its fields in the same statement.
pub(super) async fn replace_run_document(
    w: &mut Write,
    run_id: &str,
    attempt: u32,
    document: RunDocument,
    json: String,
    at: &DateTime<Utc>,
) -> PgResult<Option<RunHead>> {
    let sql = match document {
        RunDocument::Service => {
            "UPDATE runs SET service = $1, updated = $2 WHERE id = $3 AND attempt = $4
             RETURNING project, kind, function_name, state, attempt"
        }
        RunDocument::Workflow => {
            "UPDATE runs SET workflow = $1, updated = $2 WHERE id = $3 AND attempt = $4
             RETURNING project, kind, function_name, state, attempt"
        }
    };
    let updated = sqlx::query_as::<_, UpdatedRun>(sql)
        .bind(json)
        .bind(at)
        .bind(run_id)
        .bind(i64::from(attempt))
        .fetch_optional(w.conn())
        .await?;
    let Some(row) = updated else {
        return Ok(None);
    };
    Ok(Some(RunHead {
        state: parse_state("runs.state", &row.state)?,
        attempt: to_u32("runs.attempt", row.attempt)?,
        project: row.project,
        id: run_id.to_string(),
        kind: row.kind,
        function: row.function_name,
    }))
}

pub(super) async fn set_service_status(
    w: &mut Write,
    run_id: &str,
    attempt: u32,
    status: &ServiceStatus,
) -> PgResult<bool> {
    let at = now();
    let json = to_json("service", status)?;
    let Some(head) =
        replace_run_document(w, run_id, attempt, RunDocument::Service, json, &at).await?
    else {
        return Ok(false);
    };
    events::run_service_changed(w, &head, status, &at);
    Ok(true)
}
