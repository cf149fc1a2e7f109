//! Timers of the controller: attempt timeouts and the end of retry backoffs.
//!
//! One task keeps the pending deadlines in a `BTreeMap` ordered by time and sleeps until the
//! earliest one, or until a new one arrives on its channel: no polling. Deadlines are derived
//! from stored times (an attempt's `dispatched`, a READY transition's `at`) and re-derived on
//! start-up — timeouts from the runs that are PENDING or RUNNING, backoffs by the dispatcher's
//! first round — so none is lost with a restart.
//!
//! A deadline that fires only *checks*: the timeout stops the run if it is still in the same
//! attempt and active (`Controller::stop_run` with reason `timeout`), the backoff wakes the
//! dispatcher, which decides again from the store. Firing late or twice is harmless.

use super::Controller;
use chrono::{DateTime, Utc};
use runplane_domain::{reason, Run, RunState};
use std::collections::BTreeMap;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How many active runs start-up loads timeouts for (one query; runs beyond it are still
/// stopped by their framework's end, just not timed).
const STARTUP_WINDOW: u32 = 100_000;

#[derive(Debug)]
enum Message {
    /// Stop `run_id` with reason `timeout` at `at` if it is still in `attempt`.
    Timeout {
        at: DateTime<Utc>,
        project: String,
        run_id: String,
        attempt: u32,
    },
    /// Wake the dispatcher at `at` (a retry's backoff ends).
    Dispatch { at: DateTime<Utc> },
}

/// The sending side, kept by the controller; cheap to clone.
#[derive(Clone)]
pub(crate) struct Deadlines {
    sender: mpsc::UnboundedSender<Message>,
}

impl Deadlines {
    /// The handle and the receiving end for [`run`].
    pub(crate) fn channel() -> (Deadlines, DeadlineReceiver) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Deadlines { sender }, DeadlineReceiver(receiver))
    }

    /// Arms the timeout of the run's current attempt, if its settings have one. Called after
    /// the dispatcher's claim (the attempt's `dispatched` is stored by then).
    pub(crate) fn watch_attempt(&self, run: &Run) {
        if let Some(at) = timeout_at(run) {
            // A closed channel means the server is shutting down: nothing left to time.
            let _ = self.sender.send(Message::Timeout {
                at,
                project: run.metadata.project.clone(),
                run_id: run.metadata.id.clone(),
                attempt: run.status.attempt,
            });
        }
    }

    /// Wakes the dispatcher at `at`. Only the earliest pending wake-up is kept: the round it
    /// starts arms the next one.
    pub(crate) fn wake_dispatcher_at(&self, at: DateTime<Utc>) {
        let _ = self.sender.send(Message::Dispatch { at });
    }
}

pub(crate) struct DeadlineReceiver(mpsc::UnboundedReceiver<Message>);

/// When the current attempt of `run` times out: its dispatch time plus `timeout_seconds`.
/// None without a timeout, before dispatch, or when the sum is out of range (never).
pub(crate) fn timeout_at(run: &Run) -> Option<DateTime<Utc>> {
    let seconds = i64::try_from(run.spec.settings.timeout_seconds?).ok()?;
    let attempt = run
        .status
        .attempts
        .iter()
        .find(|attempt| attempt.number == run.status.attempt)?;
    attempt
        .dispatched
        .checked_add_signed(chrono::TimeDelta::try_seconds(seconds)?)
}

/// Converts a wall-clock deadline into the monotonic clock tokio sleeps on; past ones are now.
fn instant_of(at: DateTime<Utc>) -> Instant {
    let now = Instant::now();
    match (at - Utc::now()).to_std() {
        Ok(ahead) => now.checked_add(ahead).unwrap_or_else(far_future),
        Err(_in_the_past) => now,
    }
}

/// Later than anything that will be waited for (about 30 years).
fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400 * 365 * 30)
}

/// The timer task: loads the timeouts of runs already active, then serves the channel.
pub(super) async fn run(controller: Controller, DeadlineReceiver(mut receiver): DeadlineReceiver) {
    // (when, run id, attempt) → project; the key makes a deadline armed twice one entry.
    let mut timeouts: BTreeMap<(Instant, String, u32), String> = BTreeMap::new();
    let mut dispatch_at: Option<Instant> = None;
    match controller
        .store()
        .runs_in_states(&[RunState::Pending, RunState::Running], STARTUP_WINDOW)
        .await
    {
        Ok(active) => {
            for run in active {
                if let Some(at) = timeout_at(&run) {
                    timeouts.insert(
                        (instant_of(at), run.metadata.id, run.status.attempt),
                        run.metadata.project,
                    );
                }
            }
        }
        Err(error) => tracing::error!(%error, "could not load the timeouts of active runs"),
    }
    loop {
        let next_timeout = timeouts.keys().next().map(|(at, _, _)| *at);
        let wake_at = match (next_timeout, dispatch_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = tokio::time::sleep_until(wake_at.unwrap_or_else(far_future));
        tokio::select! {
            message = receiver.recv() => match message {
                None => return,
                Some(Message::Timeout { at, project, run_id, attempt }) => {
                    timeouts.insert((instant_of(at), run_id, attempt), project);
                }
                Some(Message::Dispatch { at }) => {
                    let at = instant_of(at);
                    dispatch_at = Some(dispatch_at.map_or(at, |current| current.min(at)));
                }
            },
            () = sleep, if wake_at.is_some() => {
                let now = Instant::now();
                if dispatch_at.is_some_and(|at| at <= now) {
                    dispatch_at = None;
                    controller.wake_dispatcher();
                }
                while let Some(entry) = timeouts.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let ((_, run_id, attempt), project) = entry.remove_entry();
                    // Stopping talks to the store and the framework: not on the timer's task.
                    tokio::spawn(time_out(controller.clone(), project, run_id, attempt));
                }
            }
        }
    }
}

/// Stops the run with reason `timeout` if it is still active in the attempt that timed out.
async fn time_out(controller: Controller, project: String, run_id: String, attempt: u32) {
    let run = match controller.get_run(&project, &run_id).await {
        Ok(run) => run,
        Err(error) => {
            tracing::warn!(run = %run_id, %error, "cannot read a run whose attempt timed out");
            return;
        }
    };
    if run.status.attempt != attempt
        || !matches!(run.status.state, RunState::Pending | RunState::Running)
    {
        return;
    }
    tracing::info!(run = %run_id, attempt, "attempt timed out; stopping the run");
    if let Err(error) = controller
        .stop_run(&project, &run_id, reason::TIMEOUT)
        .await
    {
        tracing::warn!(run = %run_id, %error, "could not stop a run that timed out");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_deadlines_are_due_now_and_far_ones_do_not_overflow() {
        let before = Instant::now();
        let past = instant_of(Utc::now() - chrono::TimeDelta::seconds(10));
        assert!(past >= before && past <= Instant::now());
        let soon = instant_of(Utc::now() + chrono::TimeDelta::seconds(60));
        assert!(soon > Instant::now() + std::time::Duration::from_secs(50));
        // Does not panic.
        let _ = instant_of(DateTime::<Utc>::MAX_UTC);
    }
}
