//! The reconciler turns framework events into transitions. Events may repeat or arrive for a
//! run that moved on (stopped, deleted, retried): every step is a compare-and-set on the state
//! and attempt the event is about, so applying an event twice changes nothing.

use super::actions::stop_reason;
use super::bus::BusEvent;
use super::Controller;
use runplane_domain::{reason, ExitOutcome, Run, RunState};
use runplane_frameworks::{EventKind, ExecutionId, FrameworkEvent};
use runplane_store::{AttemptUpdate, StoreError, TransitionRequest};

pub(super) async fn run(controller: Controller, mut events: runplane_frameworks::EventReceiver) {
    while let Some(event) = events.recv().await {
        if let Err(error) = reconcile(&controller, event).await {
            tracing::error!(%error, "could not apply a framework event");
        }
    }
}

async fn reconcile(controller: &Controller, event: FrameworkEvent) -> Result<(), StoreError> {
    let FrameworkEvent { execution, kind } = event;
    if let EventKind::LogAppended { end_offset } = kind {
        controller.bus().publish(BusEvent::LogAppended {
            run_id: execution.run_id,
            attempt: execution.attempt,
            end_offset,
        });
        return Ok(());
    }
    let Some(run) = controller.store().get_run_by_id(&execution.run_id).await? else {
        tracing::warn!(run = %execution.run_id, "event for an unknown run");
        return Ok(());
    };
    if run.status.attempt != execution.attempt {
        tracing::debug!(run = %execution.run_id, attempt = execution.attempt, "event for an older attempt");
        return Ok(());
    }
    match kind {
        EventKind::LogAppended { .. } => Ok(()),
        EventKind::Started => {
            tracing::debug!(run = %run.metadata.id, "the framework says it started");
            started(controller, &run).await
        }
        EventKind::Replicas(replicas) => {
            controller.replicas_changed(&run, replicas).await;
            Ok(())
        }
        EventKind::Exited(outcome) => {
            crate::failpoints::hit("before_record_exit");
            exited(controller, &run, &outcome).await?;
            tracing::debug!(run = %run.metadata.id, "recorded the exit");
            crate::failpoints::hit("after_record_exit");
            cleanup(controller, &run, &execution).await;
            Ok(())
        }
        EventKind::NeverStarted { message } => {
            match requeue_request(&run, &message) {
                Some(request) => {
                    ignore_conflict(controller.transition(request).await)?;
                    cleanup(controller, &run, &execution).await;
                }
                None => lost(controller, &run, &execution, &message).await,
            }
            Ok(())
        }
        EventKind::Lost { message } => {
            lost(controller, &run, &execution, &message).await;
            Ok(())
        }
    }
}

/// Ends the run `lost` (or retries it, as its policy says) and cleans up the attempt.
async fn lost(controller: &Controller, run: &Run, execution: &ExecutionId, message: &str) {
    controller
        .finish_without_execution(
            &run.metadata.project,
            &run.metadata.id,
            reason::LOST,
            message,
        )
        .await;
    cleanup(controller, run, execution).await;
}

async fn started(controller: &Controller, run: &Run) -> Result<(), StoreError> {
    if run.status.state != RunState::Pending {
        return Ok(());
    }
    ignore_conflict(record_start(controller, run).await)
}

/// PENDING → RUNNING, with the attempt's start time.
async fn record_start(controller: &Controller, run: &Run) -> Result<Run, StoreError> {
    let request = TransitionRequest {
        attempt_update: Some(AttemptUpdate::Started),
        ..TransitionRequest::new(
            &run.metadata.id,
            RunState::Pending,
            run.status.attempt,
            RunState::Running,
        )
        .reason(reason::STARTED)
    };
    controller.transition(request).await
}

/// Ends the attempt. Re-reads and retries when the run moved meanwhile (a stop came in), so
/// an exit is never dropped on a lost compare-and-set.
async fn exited(
    controller: &Controller,
    run: &Run,
    outcome: &ExitOutcome,
) -> Result<(), StoreError> {
    let mut run = run.clone();
    for _ in 0..8 {
        match end_attempt(controller, &run, outcome).await {
            Err(StoreError::Conflict { .. }) => {}
            other => return other,
        }
        match controller.store().get_run_by_id(&run.metadata.id).await? {
            Some(current) if current.status.attempt == run.status.attempt => run = current,
            _ => return Ok(()),
        }
    }
    tracing::error!(run = %run.metadata.id, "run kept changing; its exit was not recorded");
    Ok(())
}

async fn end_attempt(
    controller: &Controller,
    run: &Run,
    outcome: &ExitOutcome,
) -> Result<(), StoreError> {
    let state = run.status.state;
    if state == RunState::Deleting {
        if let Err(error) = controller.purge(run).await {
            tracing::error!(run = %run.metadata.id, %error, "purge failed");
        }
        return Ok(());
    }
    if !matches!(
        state,
        RunState::Pending | RunState::Running | RunState::Stop
    ) {
        return Ok(());
    }
    let interpretation = match (
        &outcome.failure,
        controller.inner.runtimes.get(&run.spec.runtime),
    ) {
        // The framework ended it for a reason of its own (a service never ready).
        (Some(failure), _) => runplane_runtimes::Interpretation {
            state: RunState::Error,
            reason: failure.reason.clone(),
            message: Some(failure.message.clone()),
            results: None,
            new_version: None,
        },
        (None, Some(runtime)) => runtime.interpret(run, outcome),
        (None, None) => runplane_runtimes::Interpretation {
            state: RunState::Error,
            reason: reason::FAILED.to_string(),
            message: Some(format!("this server has no runtime {:?}", run.spec.runtime)),
            results: None,
            new_version: None,
        },
    };
    let mut from = state;
    // A framework failure (a service never ready) means it never was RUNNING: a waiter for
    // RUNNING must not see it pass through.
    if state == RunState::Pending && outcome.failure.is_none() {
        // The process ended before its start was reported; record that it ran.
        record_start(controller, run).await?;
        from = RunState::Running;
    }
    let (to, to_reason) = if from == RunState::Stop && interpretation.state != RunState::Completed {
        let why = stop_reason(run);
        let to = if why == reason::TIMEOUT {
            RunState::Error
        } else {
            RunState::Stopped
        };
        (to, why)
    } else {
        (interpretation.state, interpretation.reason.clone())
    };
    if to == RunState::Error && from != RunState::Stop {
        if let Some(retry) = retry_request(
            run,
            from,
            &to_reason,
            interpretation.message.as_deref(),
            (outcome.exit_code, outcome.signal),
        ) {
            return controller.transition(retry).await.map(|_| ());
        }
    }
    let (mut to, mut to_reason) = (to, to_reason);
    let mut message = interpretation.message.clone();
    let mut results = interpretation.results.clone();
    if let (RunState::Completed, Some(spec)) = (to, &interpretation.new_version) {
        // Stored before the run says COMPLETED: a finished build always names its version
        // (storing it twice, after a replayed event, finds the same content hash).
        match controller.store_built_version(run, spec.clone()).await {
            Ok(version) => {
                let mut object = match results.take() {
                    Some(serde_json::Value::Object(object)) => object,
                    _ => serde_json::Map::new(),
                };
                object.insert("function".into(), version.status.key.clone().into());
                object.insert("version".into(), version.metadata.version.clone().into());
                results = Some(serde_json::Value::Object(object));
            }
            Err(error) => {
                to = RunState::Error;
                to_reason = reason::BUILD_FAILED.to_string();
                message = Some(format!("the built version cannot be stored: {error}"));
            }
        }
    }
    let artifacts = crate::artifacts::collect::at_exit(
        controller,
        run,
        outcome,
        (&mut to, &mut to_reason, &mut message),
    )
    .await;
    let request = TransitionRequest {
        reason: Some(to_reason.clone()),
        message,
        results,
        artifacts,
        attempt_update: Some(AttemptUpdate::Ended {
            exit_code: outcome.exit_code,
            signal: outcome.signal,
            reason: Some(to_reason),
        }),
        ..TransitionRequest::new(&run.metadata.id, from, run.status.attempt, to)
    };
    controller.transition(request).await.map(|_| ())
}

/// When the run's retry policy retries an attempt that ended in ERROR with `why`: the
/// transition `from` → READY as the next attempt (reason `retrying`), which ends the attempt
/// record with its real outcome. The dispatcher holds the run back until its backoff passed.
/// None when the policy does not retry it (or there is none): the run then ends in ERROR.
pub(super) fn retry_request(
    run: &Run,
    from: RunState,
    why: &str,
    message: Option<&str>,
    (exit_code, signal): (Option<i32>, Option<i32>),
) -> Option<TransitionRequest> {
    let attempt = run.status.attempt;
    let retry = run.spec.settings.retry.as_ref()?;
    if !matches!(from, RunState::Pending | RunState::Running) || !retry.retries(why, attempt) {
        return None;
    }
    let next = attempt.checked_add(1)?;
    let failure = match message {
        Some(message) => format!("{why}: {message}"),
        None => why.to_string(),
    };
    let delay = retry.delay_before(next);
    Some(TransitionRequest {
        next_attempt: Some(next),
        attempt_update: Some(AttemptUpdate::Ended {
            exit_code,
            signal,
            reason: Some(why.to_string()),
        }),
        ..TransitionRequest::new(&run.metadata.id, from, attempt, RunState::Ready)
            .reason(reason::RETRYING)
            .message(format!(
                "attempt {attempt} failed ({failure}); retrying in {}s",
                seconds(delay)
            ))
    })
}

/// How many times one run goes back to the queue because its attempt never started, before
/// such an attempt counts as lost: a server that dies each time it starts this very run must
/// not loop on it.
const MAX_REQUEUES: usize = 3;

/// A PENDING run whose attempt never ran its code goes back to the queue as the next attempt
/// (reason `requeued`): nothing ran, so nothing runs twice. None once it was requeued
/// [`MAX_REQUEUES`] times, or when the run is no longer PENDING.
fn requeue_request(run: &Run, message: &str) -> Option<TransitionRequest> {
    if run.status.state != RunState::Pending {
        return None;
    }
    let requeues = run
        .status
        .transitions
        .iter()
        .filter(|transition| transition.reason.as_deref() == Some(reason::REQUEUED))
        .count();
    if requeues >= MAX_REQUEUES {
        return None;
    }
    let attempt = run.status.attempt;
    let next = attempt.checked_add(1)?;
    Some(TransitionRequest {
        next_attempt: Some(next),
        attempt_update: Some(AttemptUpdate::Ended {
            exit_code: None,
            signal: None,
            reason: Some(reason::LOST.to_string()),
        }),
        ..TransitionRequest::new(
            &run.metadata.id,
            RunState::Pending,
            attempt,
            RunState::Ready,
        )
        .reason(reason::REQUEUED)
        .message(format!(
            "attempt {attempt} never started ({message}); back in the queue"
        ))
    })
}

/// `1.5`, `2`, `0.001`: seconds for people, to the millisecond.
fn seconds(delay: std::time::Duration) -> String {
    let text = format!("{:.3}", delay.as_secs_f64());
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

async fn cleanup(controller: &Controller, run: &Run, execution: &ExecutionId) {
    if let Some(framework) = controller.inner.frameworks.get(&run.spec.framework) {
        if let Err(error) = framework.cleanup(execution).await {
            tracing::warn!(run = %run.metadata.id, %error, "cleanup failed");
        }
    }
}

/// A lost compare-and-set means someone else already moved the run: nothing to do.
fn ignore_conflict(result: Result<Run, StoreError>) -> Result<(), StoreError> {
    match result {
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::seconds;
    use std::time::Duration;

    #[test]
    fn delays_read_as_short_decimals() {
        assert_eq!(seconds(Duration::ZERO), "0");
        assert_eq!(seconds(Duration::from_secs(2)), "2");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5");
        assert_eq!(seconds(Duration::from_secs(10)), "10");
        assert_eq!(seconds(Duration::from_micros(1200)), "0.001");
    }
}
