//! `status.workflow` of workflow runs: the node status the workflow engine records.

use super::codec::{now, to_json};
use super::events;
use super::services::{replace_run_document, RunDocument};
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
    let json = to_json("workflow", status)?;
    let Some(head) =
        replace_run_document(conn, run_id, attempt, RunDocument::Workflow, json, &at).await?
    else {
        return Ok(false);
    };
    events::run_workflow_changed(conn, &head, status, &at).await?;
    Ok(true)
}
