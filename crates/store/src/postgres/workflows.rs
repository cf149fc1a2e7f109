//! `status.workflow` of workflow runs: the node status the workflow engine records.

use super::codec::{now, to_json, PgResult};
use super::services::{replace_run_document, RunDocument};
use super::{events, Write};
use runplane_domain::workflow::WorkflowStatus;

pub(super) async fn set_workflow_status(
    w: &mut Write,
    run_id: &str,
    attempt: u32,
    status: &WorkflowStatus,
) -> PgResult<bool> {
    let at = now();
    let json = to_json("workflow", status)?;
    let Some(head) =
        replace_run_document(w, run_id, attempt, RunDocument::Workflow, json, &at).await?
    else {
        return Ok(false);
    };
    events::run_workflow_changed(w, &head, status, &at);
    Ok(true)
}
