//! The dispatcher: claims READY runs (READY → PENDING, a durable compare-and-set made before
//! anything starts) within the global and per-task concurrency limits, then hands each to its
//! framework. Runs held back stay READY with a reason saying why.
//!
//! It sleeps on a `Notify` until something may have changed: a run became READY, or one ended
//! and freed a slot, or a retry's backoff ended (one wake-up at the earliest end, armed through
//! the deadlines task). No polling.

use super::builds::Gate;
use super::secrets::SecretsForRunError;
use super::Controller;
use chrono::{DateTime, Utc};
use runplane_domain::{reason, Attempt, Run, RunState, Runnable, Transition};
use runplane_frameworks::ExecutionId;
use runplane_store::{AttemptUpdate, StoreError, TaskLimit, TransitionRequest};

/// How many READY runs one round looks at. Runs past it wait for the next round, which the
/// end of any run triggers.
const QUEUE_WINDOW: u32 = 1000;

pub(super) async fn run(controller: Controller) {
    loop {
        controller.inner.dispatch_wanted.notified().await;
        if let Err(error) = dispatch_round(&controller).await {
            tracing::error!(%error, "dispatch round failed; will retry on the next wake-up");
        }
    }
}

async fn dispatch_round(controller: &Controller) -> Result<(), StoreError> {
    let store = controller.store().clone();
    let queue = store
        .runs_in_states(&[RunState::Ready], QUEUE_WINDOW)
        .await?;
    if queue.is_empty() {
        return Ok(());
    }
    let mut active = store.count_active().await?;
    let global_limit = u64::from(controller.inner.options.max_concurrent_runs);
    let now = Utc::now();
    // The earliest end of a backoff among the runs held back for one.
    let mut next_due: Option<DateTime<Utc>> = None;
    for run in queue {
        if super::workflows::is_workflow_run(&run) {
            // A workflow run holds no slot: only its step runs do.
            controller.start_workflow(&run).await?;
            continue;
        }
        match controller.prerequisite_gate(&run).await {
            Ok(Gate::Open) => {}
            Ok(Gate::Wait { build_run, key }) => {
                let message = format!("waits for build run {build_run} ({key})");
                if run.status.reason.as_deref() != Some(reason::WAITING_FOR_BUILD)
                    || run.status.message.as_deref() != Some(message.as_str())
                {
                    store
                        .set_wait_reason(
                            &run.metadata.id,
                            RunState::Ready,
                            run.status.attempt,
                            Some(reason::WAITING_FOR_BUILD),
                            Some(&message),
                        )
                        .await?;
                }
                continue;
            }
            Ok(Gate::Failed { build_run, message }) => {
                if let Err(error) = controller.fail_for_build(&run, &build_run, &message).await {
                    tracing::error!(run = %run.metadata.id, %error, "cannot end a run whose build failed");
                }
                continue;
            }
            Err(error) => {
                // The build could not even be submitted: the run cannot go on.
                tracing::error!(run = %run.metadata.id, %error, "cannot start the build a run needs");
                if let Err(error) = controller
                    .fail_for_build(&run, "(not started)", &error.to_string())
                    .await
                {
                    tracing::error!(run = %run.metadata.id, %error, "cannot end a run whose build failed");
                }
                continue;
            }
        }
        let due = retry_due(&run).filter(|due| *due > now);
        if let Some(due) = due {
            next_due = Some(next_due.map_or(due, |next| next.min(due)));
        }
        let wait_reason = if due.is_some() {
            Some(reason::RETRY_BACKOFF)
        } else if active.total >= global_limit {
            Some(reason::GLOBAL_CONCURRENCY_LIMIT)
        } else if let (Some(limit), Some(task)) =
            (run.spec.settings.max_concurrency, &run.spec.task)
        {
            let running = active
                .per_task
                .get(&(run.metadata.project.clone(), task.clone()))
                .copied()
                .unwrap_or(0);
            (running >= u64::from(limit)).then_some(reason::TASK_CONCURRENCY_LIMIT)
        } else {
            None
        };
        if let Some(wait_reason) = wait_reason {
            if run.status.reason.as_deref() != Some(wait_reason) {
                store
                    .set_wait_reason(
                        &run.metadata.id,
                        RunState::Ready,
                        run.status.attempt,
                        Some(wait_reason),
                        None,
                    )
                    .await?;
            }
            continue;
        }
        let claim = TransitionRequest {
            reason: Some(reason::DISPATCHED.to_string()),
            owner: Some(controller.replica_id().to_string()),
            // Checked again in the claim's transaction: other dispatchers (replicas) claim
            // runs of the same task meanwhile.
            task_limit: match (&run.spec.task, run.spec.settings.max_concurrency) {
                (Some(task), Some(max_active)) => Some(TaskLimit {
                    project: run.metadata.project.clone(),
                    task: task.clone(),
                    max_active,
                }),
                _ => None,
            },
            attempt_update: Some(AttemptUpdate::Dispatched {
                framework: run.spec.framework.clone(),
            }),
            ..TransitionRequest::new(
                &run.metadata.id,
                RunState::Ready,
                run.status.attempt,
                RunState::Pending,
            )
        };
        let claimed = match controller.transition(claim).await {
            Ok(claimed) => claimed,
            // Stopped, deleted or claimed by another dispatcher since we listed it.
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::TaskLimitReached { .. }) => {
                if run.status.reason.as_deref() != Some(reason::TASK_CONCURRENCY_LIMIT) {
                    store
                        .set_wait_reason(
                            &run.metadata.id,
                            RunState::Ready,
                            run.status.attempt,
                            Some(reason::TASK_CONCURRENCY_LIMIT),
                            None,
                        )
                        .await?;
                }
                continue;
            }
            Err(error) => return Err(error),
        };
        active.total += 1;
        if let Some(task) = &claimed.spec.task {
            *active
                .per_task
                .entry((claimed.metadata.project.clone(), task.clone()))
                .or_default() += 1;
        }
        controller.start_claimed(claimed).await;
    }
    if let Some(due) = next_due {
        controller.inner.deadlines.wake_dispatcher_at(due);
    }
    Ok(())
}

impl Controller {
    /// Whether a run about to be created may be created already claimed by this replica
    /// (PENDING, its first attempt dispatched): when a dispatch round would claim it at once.
    /// A workflow's step run then skips the claim's own transaction and the dispatcher's
    /// round trip, on the path from one step to the next. Runs with a task limit (checked in
    /// the claim's transaction), a prerequisite still to build, or no slot left go the usual way.
    pub(super) async fn claimable_at_creation(&self, run: &Run) -> Result<bool, StoreError> {
        if super::workflows::is_workflow_run(run)
            || run.status.state != RunState::Ready
            || run.spec.settings.max_concurrency.is_some()
            || self.inner.frameworks.get(&run.spec.framework).is_none()
        {
            return Ok(false);
        }
        if !self.prerequisite_ready(run) {
            return Ok(false);
        }
        let active = self.store().count_active().await?;
        Ok(active.total < u64::from(self.inner.options.max_concurrent_runs))
    }

    /// Makes a READY run about to be created PENDING, claimed by this replica, as the
    /// dispatcher's claim would (same transition, reason and attempt record).
    pub(super) fn mark_claimed(&self, run: &mut Run) {
        let at = run.metadata.created;
        run.status.transitions.push(Transition {
            from: Some(RunState::Ready),
            to: RunState::Pending,
            at,
            attempt: run.status.attempt,
            reason: Some(reason::DISPATCHED.to_string()),
            message: None,
        });
        run.status.attempts.push(Attempt {
            number: run.status.attempt,
            framework: run.spec.framework.clone(),
            dispatched: at,
            started: None,
            ended: None,
            exit_code: None,
            signal: None,
            reason: None,
        });
        run.status.state = RunState::Pending;
        run.status.reason = Some(reason::DISPATCHED.to_string());
        run.status.owner = Some(self.replica_id().to_string());
    }

    /// Starts a claimed (PENDING) run: by the dispatcher's claim, or created claimed (see
    /// `claimable_at_creation`).
    pub(super) async fn start_claimed(&self, run: Run) {
        tracing::debug!(run = %run.metadata.id, "claimed");
        self.inner.deadlines.watch_attempt(&run);
        crate::failpoints::hit("after_claim");
        start(self, run).await;
    }
}

/// When a READY run that went back to the queue for a retry may start: the time of that
/// transition (the failed attempt's end) plus the policy's delay before this attempt. Derived
/// from the stored run alone, so a restarted server holds it back just as long. None when the
/// run is not waiting for a retry (first attempt, resumed).
pub(super) fn retry_due(run: &Run) -> Option<DateTime<Utc>> {
    let retry = run.spec.settings.retry.as_ref()?;
    let queued = run
        .status
        .transitions
        .iter()
        .rev()
        .find(|transition| transition.to == RunState::Ready)?;
    if queued.reason.as_deref() != Some(reason::RETRYING) || queued.attempt != run.status.attempt {
        return None;
    }
    let delay = chrono::TimeDelta::from_std(retry.delay_before(run.status.attempt)).ok()?;
    queued.at.checked_add_signed(delay)
}

/// Hands a claimed (PENDING) run to its framework. A failure to start ends the run in ERROR
/// (`start_failed`), or STOPPED if a stop came in meanwhile.
async fn start(controller: &Controller, run: Run) {
    let execution = ExecutionId {
        run_id: run.metadata.id.clone(),
        attempt: run.status.attempt,
    };
    let started = match runnable_of(controller, &run).await {
        Err(failed) => Err(failed),
        Ok(runnable) => match controller.inner.frameworks.get(&run.spec.framework) {
            None => Err(format!(
                "framework {:?} is not enabled on this server",
                run.spec.framework
            )),
            Some(framework) => {
                // Known to the gateway (503 until ready) before its replicas start.
                if let Runnable::Service(service) = &runnable {
                    controller
                        .register_service_run(&run, service.replicas)
                        .await;
                }
                framework
                    .start(execution.clone(), runnable)
                    .await
                    .map_err(|error| error.to_string())
            }
        }
        .map_err(|message| (reason::START_FAILED, message)),
    };
    crate::failpoints::hit("after_start");
    match started {
        Ok(()) => {
            // A stop may have arrived while the framework was starting the process, when the
            // framework did not know the execution yet: deliver it now.
            if let Ok(Some(current)) = controller
                .store()
                .get_run(&run.metadata.project, &run.metadata.id)
                .await
            {
                if matches!(current.status.state, RunState::Stop | RunState::Deleting) {
                    controller.stop_execution_of(&current, false).await;
                }
            }
        }
        Err((why, message)) => {
            tracing::warn!(run = %run.metadata.id, %message, "run could not start");
            controller
                .finish_without_execution(&run.metadata.project, &run.metadata.id, why, &message)
                .await;
        }
    }
}

/// The run's `Runnable`, with its secrets decrypted into the env (of the job, or of every
/// replica) and listed for redaction. The values live only here and in what the framework is
/// handed; the run's stored spec keeps the names.
async fn runnable_of(
    controller: &Controller,
    run: &Run,
) -> Result<Runnable, (&'static str, String)> {
    let runtime = controller
        .inner
        .runtimes
        .get(&run.spec.runtime)
        .ok_or_else(|| {
            (
                reason::START_FAILED,
                format!("this server has no runtime {:?}", run.spec.runtime),
            )
        })?;
    let mut runnable = if run.spec.inputs.is_empty() {
        runtime.to_runnable(run)
    } else {
        let runs_containers = controller
            .inner
            .frameworks
            .get(&run.spec.framework)
            .is_some_and(|framework| framework.runs_containers());
        let (parameters, volumes) = controller
            .materialize_inputs(run, runs_containers)
            .await
            .map_err(|message| (reason::INPUT_UNAVAILABLE, message))?;
        let mut with_inputs = run.clone();
        with_inputs.spec.parameters = parameters;
        runtime.to_runnable(&with_inputs).map(|mut runnable| {
            super::inputs::mount_inputs(&mut runnable, volumes);
            runnable
        })
    }
    .map_err(|error| (reason::START_FAILED, error.to_string()))?;
    let secrets = controller
        .secret_env(&run.metadata.project, &run.spec.settings.secrets)
        .await
        .map_err(|error| match error {
            SecretsForRunError::Missing { .. } => (reason::SECRET_MISSING, error.to_string()),
            SecretsForRunError::Other(error) => (reason::START_FAILED, error.to_string()),
        })?;
    let job = match &mut runnable {
        Runnable::Job(job) => job,
        Runnable::Service(service) => &mut service.replica,
        // A build's context is stored with the image: secrets never go into it.
        Runnable::Build(_) => return Ok(runnable),
    };
    job.env.extend(secrets.env);
    job.redact.extend(secrets.redact);
    Ok(runnable)
}

#[cfg(test)]
mod tests {
    use super::retry_due;
    use runplane_domain::Run;
    use serde_json::json;

    fn run(retry: serde_json::Value, attempt: u32, last_ready_reason: &str) -> Run {
        serde_json::from_value(json!({
            "kind": "python+job:run",
            "metadata": {"id": "r", "project": "p", "created": "2026-01-01T00:00:00Z",
                         "updated": "2026-01-01T00:00:00Z", "created_by": "t"},
            "spec": {"function": "f", "function_name": "f", "function_version": "v",
                     "runtime": "python", "action": "job", "framework": "local",
                     "parameters": {}, "function_spec": {},
                     "settings": {"stop_grace_seconds": 5, "retry": retry}},
            "status": {"state": "READY", "attempt": attempt, "attempts": [], "transitions": [
                {"to": "READY", "at": "2026-01-01T00:00:00Z", "attempt": 1, "reason": "submitted"},
                {"from": "RUNNING", "to": "READY", "at": "2026-01-01T00:01:00Z",
                 "attempt": attempt, "reason": last_ready_reason},
            ]},
        }))
        .expect("a run")
    }

    #[test]
    fn a_retry_is_due_after_its_backoff_from_the_stored_transition() {
        let policy = json!({"max_attempts": 5, "backoff_seconds": 10, "backoff_factor": 3});
        let due = |attempt| {
            retry_due(&run(policy.clone(), attempt, "retrying")).map(|at| at.to_rfc3339())
        };
        assert_eq!(due(2).as_deref(), Some("2026-01-01T00:01:10+00:00"));
        assert_eq!(due(3).as_deref(), Some("2026-01-01T00:01:30+00:00"));
        // Resumed runs and runs without a policy do not wait.
        assert_eq!(retry_due(&run(policy, 2, "resumed")), None);
        assert_eq!(
            retry_due(&run(serde_json::Value::Null, 2, "retrying")),
            None
        );
    }
}
