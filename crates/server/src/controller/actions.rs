//! What people ask of runs after they are submitted: stop, resume, delete. Each is a
//! compare-and-set retried a few times if the run moves under it, persisted before the signal
//! that depends on it is sent.

use super::{Controller, ControllerError};
use runplane_domain::{reason, Run, RunState};
use runplane_frameworks::{ExecutionId, FrameworkError};
use runplane_store::{AttemptUpdate, StoreError, TransitionRequest};
use serde_json::Value;

/// How often an action re-reads a run that changed under it before giving up.
const CAS_RETRIES: usize = 8;

impl Controller {
    /// Stops a run. One that never started ends STOPPED at once; a running one goes to STOP
    /// and its framework is told; it ends STOPPED when its process is gone.
    pub async fn stop_run(
        &self,
        project: &str,
        id: &str,
        why: &str,
    ) -> Result<Run, ControllerError> {
        for _ in 0..CAS_RETRIES {
            let run = self.get_run(project, id).await?;
            let state = run.status.state;
            if state.is_terminal() {
                return Err(ControllerError::Conflict(format!(
                    "run {id} has already ended ({state})"
                )));
            }
            if matches!(state, RunState::Stop | RunState::Deleting) {
                return Ok(run);
            }
            let request =
                TransitionRequest::new(id, state, run.status.attempt, RunState::Stop).reason(why);
            let stopping = match self.transition(request).await {
                Ok(stopping) => stopping,
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            };
            if state.is_active() {
                self.stop_execution_of(&stopping, state == RunState::Pending)
                    .await;
                return self.get_run(project, id).await;
            }
            // Never handed to a framework: nothing to signal.
            let stopped = TransitionRequest::new(
                id,
                RunState::Stop,
                stopping.status.attempt,
                RunState::Stopped,
            )
            .reason(why);
            return match self.transition(stopped).await {
                Ok(run) => Ok(run),
                Err(StoreError::Conflict { .. }) => self.get_run(project, id).await,
                Err(error) => Err(error.into()),
            };
        }
        Err(ControllerError::Conflict(format!(
            "run {id} kept changing; try again"
        )))
    }

    /// STOPPED → READY as a new attempt.
    pub async fn resume_run(&self, project: &str, id: &str) -> Result<Run, ControllerError> {
        let run = self.get_run(project, id).await?;
        if run.status.state != RunState::Stopped {
            return Err(ControllerError::Conflict(format!(
                "only a STOPPED run can be resumed; run {id} is {}",
                run.status.state
            )));
        }
        let request = TransitionRequest {
            next_attempt: Some(run.status.attempt + 1),
            ..TransitionRequest::new(id, RunState::Stopped, run.status.attempt, RunState::Ready)
                .reason(reason::RESUMED)
        };
        match self.transition(request).await {
            Ok(run) => Ok(run),
            Err(StoreError::Conflict { current_state, .. }) => Err(ControllerError::Conflict(
                format!("run {id} changed to {current_state} meanwhile"),
            )),
            Err(error) => Err(error.into()),
        }
    }

    /// Deletes a run: stops what runs, purges its logs and results, and leaves a DELETED
    /// tombstone.
    pub async fn delete_run(&self, project: &str, id: &str) -> Result<Run, ControllerError> {
        for _ in 0..CAS_RETRIES {
            let run = self.get_run(project, id).await?;
            let state = run.status.state;
            if matches!(state, RunState::Deleting | RunState::Deleted) {
                return Ok(run);
            }
            let request = TransitionRequest::new(id, state, run.status.attempt, RunState::Deleting)
                .reason(reason::DELETED);
            let deleting = match self.transition(request).await {
                Ok(deleting) => deleting,
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            };
            if state.is_active() {
                // The reconciler purges when the execution has exited.
                self.stop_execution_of(&deleting, state == RunState::Pending)
                    .await;
                return self.get_run(project, id).await;
            }
            return self.purge(&deleting).await;
        }
        Err(ControllerError::Conflict(format!(
            "run {id} kept changing; try again"
        )))
    }

    /// DELETING → DELETED: logs and results go, the record stays as a tombstone.
    pub(crate) async fn purge(&self, run: &Run) -> Result<Run, ControllerError> {
        let logs = self.logs().clone();
        let run_id = run.metadata.id.clone();
        tokio::task::spawn_blocking(move || logs.delete(&run_id))
            .await
            .map_err(|error| ControllerError::Conflict(format!("log purge panicked: {error}")))??;
        let request = TransitionRequest {
            results: Some(Value::Null),
            ..TransitionRequest::new(
                &run.metadata.id,
                RunState::Deleting,
                run.status.attempt,
                RunState::Deleted,
            )
            .reason(reason::DELETED)
        };
        match self.transition(request).await {
            Ok(run) => Ok(run),
            Err(StoreError::Conflict { .. }) => {
                self.get_run(&run.metadata.project, &run.metadata.id).await
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Tells the framework to stop a run's current attempt. If the framework does not know it:
    /// a PENDING run is still being started (the dispatcher delivers the stop once the start
    /// returns); anything else has no execution left, so the run ends now.
    pub(crate) async fn stop_execution_of(&self, run: &Run, was_pending: bool) {
        if self.owned_elsewhere(run) {
            // Its owner follows the execution: it sees the stop in the event log and
            // delivers it (`replicas::run_pump`).
            return;
        }
        if super::workflows::is_workflow_run(run) {
            // No framework runs it: the workflow engine stops its steps, then ends it.
            self.workflow_stop_requested(run);
            return;
        }
        let execution = ExecutionId {
            run_id: run.metadata.id.clone(),
            attempt: run.status.attempt,
        };
        let Some(framework) = self.inner.frameworks.get(&run.spec.framework) else {
            self.finish_without_execution(
                &run.metadata.project,
                &run.metadata.id,
                reason::LOST,
                "its framework is not enabled",
            )
            .await;
            return;
        };
        match framework.stop(&execution).await {
            Ok(()) => {}
            Err(FrameworkError::UnknownExecution(_)) if was_pending => {}
            Err(FrameworkError::UnknownExecution(_)) => {
                self.finish_without_execution(
                    &run.metadata.project,
                    &run.metadata.id,
                    reason::LOST,
                    "no execution of this run was found",
                )
                .await;
            }
            Err(error) => tracing::error!(run = %run.metadata.id, %error, "stop failed"),
        }
    }

    /// Ends a run whose current attempt has no execution (it failed to start, or it was lost):
    /// PENDING/RUNNING → ERROR(`why`) — or READY as the next attempt when its retry policy
    /// retries `why` —, STOP → STOPPED (ERROR for a timeout's stop), DELETING → purged.
    pub(crate) async fn finish_without_execution(
        &self,
        project: &str,
        id: &str,
        why: &str,
        message: &str,
    ) {
        for _ in 0..CAS_RETRIES {
            let run = match self.get_run(project, id).await {
                Ok(run) => run,
                Err(error) => {
                    tracing::error!(run = %id, %error, "cannot read run to end it");
                    return;
                }
            };
            let state = run.status.state;
            let retry =
                super::reconciler::retry_request(&run, state, why, Some(message), (None, None));
            if let Some(retry) = retry {
                match self.transition(retry).await {
                    Ok(_) => return,
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(error) => {
                        tracing::error!(run = %id, %error, "cannot retry run");
                        return;
                    }
                }
            }
            let (to, to_reason) = match state {
                RunState::Pending | RunState::Running => (RunState::Error, why.to_string()),
                // A timeout's stop ends in ERROR, as when the process exits (reconciler).
                RunState::Stop => match stop_reason(&run) {
                    timeout if timeout == reason::TIMEOUT => (RunState::Error, timeout),
                    other => (RunState::Stopped, other),
                },
                RunState::Deleting => {
                    if let Err(error) = self.purge(&run).await {
                        tracing::error!(run = %id, %error, "purge failed");
                    }
                    return;
                }
                _ => return,
            };
            let request = TransitionRequest {
                reason: Some(to_reason.clone()),
                message: Some(message.to_string()),
                attempt_update: Some(AttemptUpdate::Ended {
                    exit_code: None,
                    signal: None,
                    reason: Some(to_reason),
                }),
                ..TransitionRequest::new(id, state, run.status.attempt, to)
            };
            match self.transition(request).await {
                Ok(_) => return,
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => {
                    tracing::error!(run = %id, %error, "cannot end run");
                    return;
                }
            }
        }
    }
}

/// The reason the run was asked to stop (`user`, `timeout`...), from its STOP transition.
pub(crate) fn stop_reason(run: &Run) -> String {
    run.status
        .transitions
        .iter()
        .rev()
        .find(|t| t.to == RunState::Stop)
        .and_then(|t| t.reason.clone())
        .unwrap_or_else(|| reason::USER.to_string())
}
