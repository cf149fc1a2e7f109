//! Services: the names `(project, name)` and the run each points at, and `status.service` of
//! service runs (the `runs.service` column).

use super::codec::{db, is_foreign_key_violation, now, parse_state, parse_ts, to_json, to_u32, ts};
use super::events;
use crate::{StoreError, StoreResult};
use chrono::{DateTime, Utc};
use runplane_domain::{RunState, ServiceRecord, ServiceStatus};
use sqlx::AssertSqlSafe;
use sqlx::SqliteConnection;

const SERVICE_COLUMNS: &str = "project, name, run_id, created, updated";

#[derive(sqlx::FromRow)]
struct ServiceRow {
    project: String,
    name: String,
    run_id: String,
    created: String,
    updated: String,
}

impl ServiceRow {
    fn into_record(self) -> StoreResult<ServiceRecord> {
        Ok(ServiceRecord {
            created: parse_ts("services.created", &self.created)?,
            updated: parse_ts("services.updated", &self.updated)?,
            project: self.project,
            name: self.name,
            run_id: self.run_id,
        })
    }
}

/// What a run event tells about the run whose service status changed.
pub(super) struct RunHead {
    pub project: String,
    pub id: String,
    pub kind: String,
    pub function: String,
    pub state: RunState,
    pub attempt: u32,
}

pub(super) async fn put_service(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
    run_id: &str,
) -> StoreResult<ServiceRecord> {
    // Checked first, under the caller's write lock, so that the error names what is missing
    // (the foreign key alone could only say "project"). The run must be one of the project's:
    // a name never points across projects.
    let project_exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM projects WHERE name = ?")
        .bind(project)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
    if project_exists.is_none() {
        return Err(StoreError::NotFound(format!("project {project}")));
    }
    let run_exists: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM runs WHERE id = ? AND project = ?")
            .bind(run_id)
            .bind(project)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
    if run_exists.is_none() {
        return Err(StoreError::NotFound(format!("run {run_id}")));
    }

    let at = now();
    // On a takeover only `run_id` and `updated` change: `created` is when the name appeared.
    let upserted = sqlx::query_as::<_, ServiceRow>(AssertSqlSafe(format!(
        "INSERT INTO services ({SERVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (project, name) DO UPDATE SET
             run_id = excluded.run_id, updated = excluded.updated
         RETURNING {SERVICE_COLUMNS}"
    )))
    .bind(project)
    .bind(name)
    .bind(run_id)
    .bind(ts(&at))
    .bind(ts(&at))
    .fetch_one(&mut *conn)
    .await;
    let record = match upserted {
        Ok(row) => row.into_record()?,
        Err(e) if is_foreign_key_violation(&e) => {
            return Err(StoreError::NotFound(format!("project {project}")))
        }
        Err(e) => return Err(db(e)),
    };
    events::service_put(conn, &record).await?;
    Ok(record)
}

pub(super) async fn get_service(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
) -> StoreResult<Option<ServiceRecord>> {
    sqlx::query_as::<_, ServiceRow>(AssertSqlSafe(format!(
        "SELECT {SERVICE_COLUMNS} FROM services WHERE project = ? AND name = ?"
    )))
    .bind(project)
    .bind(name)
    .fetch_optional(conn)
    .await
    .map_err(db)?
    .map(ServiceRow::into_record)
    .transpose()
}

/// The services of `project`, or of every project when None, by (project, name).
pub(super) async fn list_services(
    conn: &mut SqliteConnection,
    project: Option<&str>,
) -> StoreResult<Vec<ServiceRecord>> {
    let rows = match project {
        Some(project) => {
            sqlx::query_as::<_, ServiceRow>(AssertSqlSafe(format!(
                "SELECT {SERVICE_COLUMNS} FROM services WHERE project = ? ORDER BY name"
            )))
            .bind(project)
            .fetch_all(conn)
            .await
        }
        None => {
            sqlx::query_as::<_, ServiceRow>(AssertSqlSafe(format!(
                "SELECT {SERVICE_COLUMNS} FROM services ORDER BY project, name"
            )))
            .fetch_all(conn)
            .await
        }
    };
    rows.map_err(db)?
        .into_iter()
        .map(ServiceRow::into_record)
        .collect()
}

pub(super) async fn delete_service(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
    run_id: &str,
) -> StoreResult<bool> {
    // Guarded by run_id: a run that ends after another took its name over must not remove
    // the name from under the newer run.
    let deleted = sqlx::query("DELETE FROM services WHERE project = ? AND name = ? AND run_id = ?")
        .bind(project)
        .bind(name)
        .bind(run_id)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    if deleted.rows_affected() == 0 {
        return Ok(false);
    }
    events::service_deleted(conn, project, name, run_id, &now()).await?;
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
/// current one's. RETURNING gives the event its fields in the same statement.
pub(super) async fn replace_run_document(
    conn: &mut SqliteConnection,
    run_id: &str,
    attempt: u32,
    document: RunDocument,
    json: String,
    at: &DateTime<Utc>,
) -> StoreResult<Option<RunHead>> {
    let sql = match document {
        RunDocument::Service => {
            "UPDATE runs SET service = ?, updated = ? WHERE id = ? AND attempt = ?
             RETURNING project, kind, function_name, state, attempt"
        }
        RunDocument::Workflow => {
            "UPDATE runs SET workflow = ?, updated = ? WHERE id = ? AND attempt = ?
             RETURNING project, kind, function_name, state, attempt"
        }
    };
    let updated = sqlx::query_as::<_, UpdatedRun>(sql)
        .bind(json)
        .bind(ts(at))
        .bind(run_id)
        .bind(i64::from(attempt))
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
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
    conn: &mut SqliteConnection,
    run_id: &str,
    attempt: u32,
    status: &ServiceStatus,
) -> StoreResult<bool> {
    let at = now();
    let json = to_json("service", status)?;
    let Some(head) =
        replace_run_document(conn, run_id, attempt, RunDocument::Service, json, &at).await?
    else {
        return Ok(false);
    };
    events::run_service_changed(conn, &head, status, &at).await?;
    Ok(true)
}
