//! Several server replicas on one shared store (PostgreSQL).
//!
//! Each replica has an id and a lease it renews in the store. A replica *owns* the runs it
//! claims (the claim's compare-and-set records it, so exactly one replica claims a READY run)
//! and is the only one that talks to their executions: it follows them, stops them, ends them.
//! Every other replica only writes to the store.
//!
//! - `run_leases`: renews this replica's lease, and adopts the active runs of replicas whose
//!   lease ended (one store transaction decides which replica adopts a run), taking over their
//!   executions as a restarted server would (`take_over`).
//! - `run_pump`: what other replicas append to the event log reaches this replica's bus (SSE
//!   `/events`, lifecycle triggers, `?wait=`, the workflow engine, the dispatcher); a stop
//!   recorded elsewhere for a run this replica owns is delivered to its execution here.
//!
//! On a store that only one process opens (SQLite), neither task runs: start-up adopts every
//! active run, whoever owned it before.

use super::Controller;
use crate::controller::bus::BusEvent;
use crate::controller::Frameworks;
use chrono::{DateTime, TimeDelta, Utc};
use runplane_domain::workflow::WORKFLOW_FRAMEWORK;
use runplane_domain::{reason, Run, RunState};
use runplane_frameworks::{ExecutionId, FrameworkError};
use runplane_store::{Store, StoreError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Who this server is among the replicas of a store.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// Stable across restarts of the same replica (a pod's name), unique among live ones.
    pub id: String,
    /// How long a replica counts as alive after its last renewal. It renews every third of it.
    pub lease: Duration,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            id: default_replica_id(),
            lease: Duration::from_secs(15),
        }
    }
}

/// The host's name (a pod's name on Kubernetes), else `runplane`.
pub fn default_replica_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "runplane".to_string())
}

/// The lease end of a renewal made now.
fn lease_until(lease: Duration) -> DateTime<Utc> {
    Utc::now() + TimeDelta::from_std(lease).unwrap_or(TimeDelta::seconds(15))
}

/// At start-up, before any controller task runs: renews this replica's lease, adopts the
/// runs nobody follows any more and returns every active run this replica owns now. On a
/// store only this process opens, every active run is adopted at once (no other server can be
/// alive); on a shared one, only those whose owner's lease ended.
pub async fn adopt_at_startup(
    store: &Arc<dyn Store>,
    options: &ReplicaOptions,
) -> Result<Vec<Run>, StoreError> {
    store
        .renew_replica_lease(&options.id, lease_until(options.lease))
        .await?;
    let expired_before = if store.is_shared() {
        Utc::now()
    } else {
        DateTime::<Utc>::MAX_UTC
    };
    let adopted = store
        .adopt_orphaned_runs(&options.id, expired_before)
        .await?;
    if !adopted.is_empty() {
        tracing::info!(runs = adopted.len(), replica = %options.id, "adopted runs nobody followed");
    }
    store.runs_owned_by(&options.id).await
}

/// Hands the executions of `runs` (owned by this replica, active) to their frameworks: those
/// that ended meanwhile report their real outcome, live ones are followed again, vanished
/// ones end as `lost` (an attempt is never started twice). Stops recorded for them (STOP,
/// DELETING) are delivered again. Workflow runs are left to the workflow engine.
pub async fn take_over(
    store: &Arc<dyn Store>,
    frameworks: &Frameworks,
    runs: Vec<Run>,
) -> Result<(), StoreError> {
    let mut by_framework: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    for run in runs {
        by_framework
            .entry(run.spec.framework.clone())
            .or_default()
            .push(run);
    }
    for (name, runs) in by_framework {
        if name == WORKFLOW_FRAMEWORK {
            continue;
        }
        let Some(framework) = frameworks.get(&name) else {
            for run in runs {
                end_run_without_framework(store, &run).await?;
            }
            continue;
        };
        let execution = |run: &Run| ExecutionId {
            run_id: run.metadata.id.clone(),
            attempt: run.status.attempt,
        };
        if let Err(error) = framework
            .recover(runs.iter().map(execution).collect())
            .await
        {
            // Nothing is lost by leaving the runs active: a later take-over tries again, and a
            // stop meanwhile ends those the framework does not know.
            tracing::error!(framework = %name, %error, "cannot take over executions");
            continue;
        }
        for run in runs
            .iter()
            .filter(|run| matches!(run.status.state, RunState::Stop | RunState::Deleting))
        {
            match framework.stop(&execution(run)).await {
                // Unknown: it was reported lost, which ends the run.
                Ok(()) | Err(FrameworkError::UnknownExecution(_)) => {}
                Err(error) => {
                    tracing::warn!(run = %run.metadata.id, %error, "cannot deliver a recorded stop")
                }
            }
        }
    }
    Ok(())
}

/// A run active under a previous owner whose framework this server does not enable: nothing
/// can follow it, so it ends (`lost`, or STOPPED if it was being stopped) rather than stay
/// active forever.
async fn end_run_without_framework(store: &Arc<dyn Store>, run: &Run) -> Result<(), StoreError> {
    let (to, why) = match run.status.state {
        RunState::Stop => (
            RunState::Stopped,
            crate::controller::actions::stop_reason(run),
        ),
        RunState::Pending | RunState::Running => (RunState::Error, reason::LOST.to_string()),
        // A DELETING run is purged by the controller once its execution has ended; with no
        // framework to tell, it stays until that framework is enabled again.
        _ => return Ok(()),
    };
    let request = runplane_store::TransitionRequest {
        message: Some(format!(
            "the server restarted without the {:?} framework this run executes on",
            run.spec.framework
        )),
        attempt_update: Some(runplane_store::AttemptUpdate::Ended {
            exit_code: None,
            signal: None,
            reason: Some(why.clone()),
        }),
        ..runplane_store::TransitionRequest::new(
            &run.metadata.id,
            run.status.state,
            run.status.attempt,
            to,
        )
        .reason(&why)
    };
    match store.transition(request).await {
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

impl Controller {
    pub fn replica_id(&self) -> &str {
        &self.inner.options.replica.id
    }

    /// Whether another replica follows this run's execution (only it may stop or end it).
    pub(crate) fn owned_elsewhere(&self, run: &Run) -> bool {
        self.store().is_shared()
            && run
                .status
                .owner
                .as_deref()
                .is_some_and(|owner| owner != self.replica_id())
    }

    /// The runs this replica adopted while running: followed from now on, timed, and the
    /// workflow runs among them driven.
    async fn adopted(&self, runs: Vec<Run>) {
        for run in &runs {
            if run.spec.framework == WORKFLOW_FRAMEWORK {
                self.inner.workflows.wake(&run.metadata.id);
            } else {
                self.inner.deadlines.watch_attempt(run);
            }
        }
        if let Err(error) = take_over(self.store(), &self.inner.frameworks, runs).await {
            tracing::error!(%error, "cannot take over adopted runs");
        }
    }
}

/// Renews the lease every third of it and adopts the runs of replicas whose lease ended.
pub(super) async fn run_leases(controller: Controller) {
    let options = controller.inner.options.replica.clone();
    let mut tick = tokio::time::interval(options.lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = controller.store();
        if let Err(error) = store
            .renew_replica_lease(&options.id, lease_until(options.lease))
            .await
        {
            tracing::warn!(%error, "cannot renew this replica's lease");
            continue;
        }
        match store.adopt_orphaned_runs(&options.id, Utc::now()).await {
            Ok(runs) if runs.is_empty() => {}
            Ok(runs) => {
                tracing::warn!(runs = runs.len(), replica = %options.id,
                    "adopted the runs of a replica whose lease ended");
                controller.adopted(runs).await;
            }
            Err(error) => tracing::warn!(%error, "cannot adopt orphaned runs"),
        }
    }
}

/// Feeds what other replicas append to the event log into this replica's bus.
pub(super) async fn run_pump(controller: Controller) {
    let Some(mut appended) = controller.store().appends_elsewhere() else {
        return;
    };
    let store = controller.store().clone();
    let mut cursor = match store.latest_event_id().await {
        Ok(id) => id,
        Err(error) => {
            tracing::error!(%error, "cannot read the event log; other replicas' changes will not wake this one");
            return;
        }
    };
    loop {
        appended.borrow_and_update();
        loop {
            let events = match store.events_after(cursor, None, 1000).await {
                Ok(events) => events,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the event log");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            };
            let Some(last) = events.last() else { break };
            cursor = last.id;
            controller.bus().events_appended();
            for event in &events {
                if event.kind != "run" {
                    continue;
                }
                let field = |name: &str| event.data.get(name).and_then(|v| v.as_str());
                let (Some(run_id), Some(state)) = (field("id"), field("state")) else {
                    continue;
                };
                let Ok(state) = state.parse::<RunState>() else {
                    continue;
                };
                controller.bus().publish(BusEvent::RunChanged {
                    project: event.project.clone(),
                    run_id: run_id.to_string(),
                    state,
                });
                if state == RunState::Ready || state.is_terminal() {
                    controller.wake_dispatcher();
                }
                if matches!(state, RunState::Stop | RunState::Deleting) {
                    controller
                        .deliver_stop_recorded_elsewhere(&event.project, run_id)
                        .await;
                }
            }
            if events.len() < 1000 {
                break;
            }
        }
        if appended.changed().await.is_err() {
            return;
        }
    }
}

impl Controller {
    /// A stop (or delete) another replica recorded for a run this one follows.
    async fn deliver_stop_recorded_elsewhere(&self, project: &str, run_id: &str) {
        let Ok(Some(run)) = self.store().get_run(project, run_id).await else {
            return;
        };
        if run.status.owner.as_deref() == Some(self.replica_id())
            && matches!(run.status.state, RunState::Stop | RunState::Deleting)
        {
            self.stop_execution_of(&run, false).await;
        }
    }
}
