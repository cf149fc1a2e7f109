//! The controller: the only place that moves runs through the lifecycle (`docs/lifecycle.md`).
//!
//! - [`submit`]: accepts runs (CREATED → BUILT → READY in one transaction) and reruns.
//! - [`dispatcher`]: claims READY runs within the concurrency limits and starts them on their
//!   framework; woken by a `Notify`, never by a timer.
//! - [`reconciler`]: turns framework events into transitions, idempotently.
//! - [`actions`]: stop, resume, delete.
//! - `deadlines`: attempt timeouts and the ends of retry backoffs, one timer task.
//! - [`bus`]: publishes every change for waiters and followers.
//! - [`triggers`]: applying triggers; the scheduler, lifecycle and webhook fires.
//! - [`workflows`]: the workflow engine, which drives workflow runs by creating step runs.
//!
//! Every transition is a compare-and-set in the store, persisted before any side effect that
//! depends on it (the claim before the start, STOP before the signal).

pub mod actions;
mod builds;
pub mod bus;
mod deadlines;
pub mod dispatcher;
mod inputs;
pub mod reconciler;
pub mod replicas;
pub mod secrets;
mod services;
pub mod submit;
pub mod triggers;
pub mod workflows;

use crate::catalog::{Catalog, CatalogError};
use bus::{BusEvent, EventBus};
use runplane_domain::{Invalid, Run, RunState};
use runplane_frameworks::uploads::OutputsUploads;
use runplane_frameworks::Framework;
use runplane_logstore::LogStore;
use runplane_runtimes::Runtimes;
use runplane_store::{Store, StoreError, TransitionRequest};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0} not found")]
    NotFound(String),
    /// The request is valid but the entity's state does not allow it.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("log store: {0}")]
    Logs(#[from] runplane_logstore::LogError),
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
    /// The caller did not prove who it is (a webhook without its token).
    #[error("{0}")]
    Unauthorized(String),
    /// Something the server depends on cannot be used right now.
    #[error("{0}")]
    Unavailable(String),
}

impl From<CatalogError> for ControllerError {
    fn from(error: CatalogError) -> Self {
        match error {
            CatalogError::Invalid(invalid) => ControllerError::Invalid(invalid),
            CatalogError::NotFound(what) => ControllerError::NotFound(what),
            CatalogError::Store(error) => ControllerError::Store(error),
            CatalogError::Unavailable(detail) => ControllerError::Unavailable(detail),
        }
    }
}

/// The frameworks this server executes on, by name.
#[derive(Clone, Default)]
pub struct Frameworks {
    by_name: BTreeMap<&'static str, Arc<dyn Framework>>,
}

impl Frameworks {
    pub fn with(mut self, framework: Arc<dyn Framework>) -> Self {
        self.by_name.insert(framework.name(), framework);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Framework>> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.by_name.keys().copied().collect()
    }
}

pub struct ControllerOptions {
    pub max_concurrent_runs: u32,
    pub default_framework: String,
    pub gateway: crate::gateway::GatewayOptions,
    /// Encrypts secrets on their way into the store, decrypts them at dispatch.
    pub secrets: crate::secrets::SecretBox,
    /// Locks the dependencies of new function versions.
    pub resolver: crate::resolver::Resolver,
    /// Where logged artifacts are kept (`crate::artifacts`).
    pub artifacts: crate::artifacts::ArtifactStore,
    /// This server among the replicas of its store (`replicas.rs`).
    pub replica: replicas::ReplicaOptions,
    /// The framework whose jobs upload their outputs (`kubernetes`), when enabled: the
    /// outputs upload endpoint hands it uploads.
    pub outputs_uploads: Option<Arc<dyn OutputsUploads>>,
}

/// A cheap, cloneable handle on the controller.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    catalog: Catalog,
    runtimes: Runtimes,
    frameworks: Frameworks,
    logs: Arc<dyn LogStore>,
    bus: EventBus,
    dispatch_wanted: Notify,
    /// Attempt timeouts and retry backoffs (`deadlines.rs`).
    deadlines: deadlines::Deadlines,
    /// Service runs and rollouts (`services.rs`).
    services: services::Services,
    /// The build run of each missing prerequisite (`builds.rs`).
    builds: builds::Builds,
    /// The workflow engine's queue and what it knows (`workflows/`).
    workflows: workflows::Workflows,
    /// Wakes the scheduler when triggers change (`triggers.rs`).
    triggers: triggers::Triggers,
    gateway: crate::gateway::Gateway,
    gateway_options: crate::gateway::GatewayOptions,
    options: ControllerOptions,
}

impl Controller {
    /// Builds the controller and starts its dispatcher and reconciler tasks. `framework_events`
    /// is the receiving end of the channel every framework was built with.
    pub fn start(
        store: Arc<dyn Store>,
        runtimes: Runtimes,
        frameworks: Frameworks,
        logs: Arc<dyn LogStore>,
        framework_events: runplane_frameworks::EventReceiver,
        options: ControllerOptions,
    ) -> (Controller, Vec<JoinHandle<()>>) {
        let (deadlines, deadline_receiver) = deadlines::Deadlines::channel();
        let (workflows, workflow_queue) = workflows::Workflows::channel();
        let bus = EventBus::new();
        let controller = Controller {
            inner: Arc::new(Inner {
                catalog: Catalog::new(
                    store.clone(),
                    runtimes.clone(),
                    bus.clone(),
                    options.resolver.clone(),
                ),
                store,
                runtimes,
                frameworks,
                logs,
                bus,
                dispatch_wanted: Notify::new(),
                deadlines,
                services: services::Services::default(),
                builds: builds::Builds::default(),
                workflows,
                triggers: triggers::Triggers::default(),
                gateway: crate::gateway::Gateway::new(options.gateway.clone()),
                gateway_options: options.gateway.clone(),
                options,
            }),
        };
        let dispatcher = tokio::spawn(dispatcher::run(controller.clone()));
        let reconciler = tokio::spawn(reconciler::run(controller.clone(), framework_events));
        let timers = tokio::spawn(deadlines::run(controller.clone(), deadline_receiver));
        let engine = tokio::spawn(workflows::run(controller.clone(), workflow_queue));
        let scheduler = tokio::spawn(triggers::run_scheduler(controller.clone()));
        let lifecycle = tokio::spawn(triggers::run_lifecycle(controller.clone()));
        let mut tasks = vec![dispatcher, reconciler, timers, engine, scheduler, lifecycle];
        if controller.store().is_shared() {
            tasks.push(tokio::spawn(replicas::run_leases(controller.clone())));
            tasks.push(tokio::spawn(replicas::run_pump(controller.clone())));
        }
        // Runs may already be READY in the store.
        controller.wake_dispatcher();
        (controller, tasks)
    }

    /// Where jobs' outputs uploads go, when an enabled framework takes them.
    pub fn outputs_uploads(&self) -> Option<&Arc<dyn OutputsUploads>> {
        self.inner.options.outputs_uploads.as_ref()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub fn logs(&self) -> &Arc<dyn LogStore> {
        &self.inner.logs
    }

    pub fn bus(&self) -> &EventBus {
        &self.inner.bus
    }

    pub fn artifacts(&self) -> &crate::artifacts::ArtifactStore {
        &self.inner.options.artifacts
    }

    pub fn framework_names(&self) -> Vec<&'static str> {
        self.inner.frameworks.names()
    }

    pub(crate) fn wake_dispatcher(&self) {
        self.inner.dispatch_wanted.notify_one();
    }

    pub async fn get_run(&self, project: &str, id: &str) -> Result<Run, ControllerError> {
        self.inner
            .store
            .get_run(project, id)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("run {id} in project {project}")))
    }

    /// Applies a transition and publishes it.
    pub(crate) async fn transition(&self, request: TransitionRequest) -> Result<Run, StoreError> {
        let run = self.inner.store.transition(request).await?;
        // Services first: whoever the publication wakes (`run --wait` on a service) finds the
        // gateway and the service's name already up to date.
        self.service_run_moved(&run).await;
        self.published(&run);
        Ok(run)
    }

    pub(crate) fn published(&self, run: &Run) {
        if run.status.state.is_terminal() {
            // Before the bus event that wakes the workflow's evaluation.
            self.inner.workflows.step_ended(run);
        }
        // Every stored run change appended to the event log in its transaction.
        self.inner.bus.events_appended();
        self.inner.bus.publish(BusEvent::RunChanged {
            project: run.metadata.project.clone(),
            run_id: run.metadata.id.clone(),
            state: run.status.state,
        });
        if matches!(run.status.state, RunState::Ready) || run.status.state.is_terminal() {
            self.wake_dispatcher();
        }
    }

    /// Waits until the run reaches a terminal state or `timeout` passes; returns it as it is then.
    pub async fn wait_for_run(
        &self,
        project: &str,
        id: &str,
        timeout: std::time::Duration,
        until: impl Fn(RunState) -> bool,
    ) -> Result<Run, ControllerError> {
        let mut events = self.inner.bus.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let run = self.get_run(project, id).await?;
            if until(run.status.state) {
                return Ok(run);
            }
            loop {
                let next = tokio::select! {
                    next = tokio::time::timeout_at(deadline, events.recv()) => next,
                    _ = self.inner.bus.closing() => return self.get_run(project, id).await,
                };
                match next {
                    Err(_elapsed) => return self.get_run(project, id).await,
                    Ok(Ok(BusEvent::RunChanged { run_id, .. })) if run_id == id => break,
                    Ok(Ok(_)) => continue,
                    // Lagged: we may have missed our run's change; re-read.
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                        return self.get_run(project, id).await
                    }
                }
            }
        }
    }
}
