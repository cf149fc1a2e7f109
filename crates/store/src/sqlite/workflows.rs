//! `status.workflow` of workflow runs: the node status the workflow engine records.

use super::codec::{db, now, parse_state, to_json, to_u32, ts};
use super::events;
use super::services::{RunHead, UpdatedRun};
use crate::StoreResult;
use runplane_domain::workflow::WorkflowStatus;
use sqlx::SqliteConnection;

pub(super) async fn set_workflow_status(
    conn: &mut SqliteConnection,
    run_id: &str,
    attempt: u32,
    status: &WorkflowStatus,
) -> StoreResult<bool> {
    let at = now();
    // Guarded by attempt only: nodes change while the run is RUNNING and while it is STOP.
    let updated = sqlx::query_as::<_, UpdatedRun>(
        "UPDATE runs SET workflow = ?, updated = ? WHERE id = ? AND attempt = ?
         RETURNING project, kind, function_name, state, attempt",
    )
    .bind(to_json("workflow", status)?)
    .bind(ts(&at))
    .bind(run_id)
    .bind(i64::from(attempt))
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    let Some(row) = updated else {
        return Ok(false);
    };
    let head = RunHead {
        state: parse_state("runs.state", &row.state)?,
        attempt: to_u32("runs.attempt", row.attempt)?,
        project: row.project,
        id: run_id.to_string(),
        kind: row.kind,
        function: row.function_name,
    };
    events::run_workflow_changed(conn, &head, status, &at).await?;
    Ok(true)
}
