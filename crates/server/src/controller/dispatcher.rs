//! The dispatcher: claims READY runs (READY → PENDING, a durable compare-and-set made before
//! anything starts) within the global and per-task concurrency limits, then hands each to its
//! framework. Runs held back stay READY with a reason saying why.
//!
//! It sleeps on a `Notify` until something may have changed: a run became READY, or one ended
//! and freed a slot. No timer, no polling.

use super::Controller;
use runplane_domain::{reason, Run, RunState};
use runplane_frameworks::ExecutionId;
use runplane_store::{AttemptUpdate, StoreError, TransitionRequest};

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
    for run in queue {
        let wait_reason = if active.total >= global_limit {
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
                    )
                    .await?;
            }
            continue;
        }
        let claim = TransitionRequest {
            reason: Some(reason::DISPATCHED.to_string()),
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
            Err(error) => return Err(error),
        };
        active.total += 1;
        if let Some(task) = &claimed.spec.task {
            *active
                .per_task
                .entry((claimed.metadata.project.clone(), task.clone()))
                .or_default() += 1;
        }
        start(controller, claimed).await;
    }
    Ok(())
}

/// Hands a claimed (PENDING) run to its framework. A failure to start ends the run in ERROR
/// (`start_failed`), or STOPPED if a stop came in meanwhile.
async fn start(controller: &Controller, run: Run) {
    let execution = ExecutionId {
        run_id: run.metadata.id.clone(),
        attempt: run.status.attempt,
    };
    let started = match controller.inner.runtimes.get(&run.spec.runtime) {
        None => Err(format!("this server has no runtime {:?}", run.spec.runtime)),
        Some(runtime) => match runtime.to_runnable(&run) {
            Err(error) => Err(error.to_string()),
            Ok(runnable) => match controller.inner.frameworks.get(&run.spec.framework) {
                None => Err(format!(
                    "framework {:?} is not enabled on this server",
                    run.spec.framework
                )),
                Some(framework) => framework
                    .start(execution.clone(), runnable)
                    .await
                    .map_err(|error| error.to_string()),
            },
        },
    };
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
        Err(message) => {
            tracing::warn!(run = %run.metadata.id, %message, "run could not start");
            controller
                .finish_without_execution(
                    &run.metadata.project,
                    &run.metadata.id,
                    reason::START_FAILED,
                    &message,
                )
                .await;
        }
    }
}
