//! The workflow engine: drives workflow runs (`pipeline+pipeline:run`) by creating one run per
//! node of their DAG, event by event.
//!
//! One task evaluates workflow runs one at a time. It is woken by the event bus: a change of a
//! workflow run (started, asked to stop) or of one of its step runs queues that workflow run
//! for evaluation; nothing polls. An evaluation reads the workflow run and its step runs (by
//! `step_of`), lets `plan::decide` say what happens, creates the runs of the nodes that start,
//! records the node status, and ends the workflow run when the plan says so.
//!
//! No node runs twice: a node's run is created with an idempotency key derived from the
//! workflow run and the node, so an evaluation replayed after a crash finds the run the first
//! one created. After a restart every active workflow run is evaluated once (`resume_all`).
//!
//! To keep the path from one step to the next short, it keeps per workflow run the parsed plan
//! and the node runs (re-reading only those not ended), leaves the status write after an
//! evaluation that created runs to the next one (or a short timer), and creates a step run
//! already claimed when the dispatcher would claim it at once
//! (`Controller::claimable_at_creation`).

pub mod plan;

use super::actions::stop_reason;
use super::bus::BusEvent;
use super::submit::RunLinks;
use super::{Controller, ControllerError};
use plan::{Child, Decision, Inputs, Outcome, Plan};
use runplane_domain::workflow::{StepOf, WorkflowSpec, WORKFLOW_FRAMEWORK};
use runplane_domain::{reason, Run, RunState};
use runplane_store::{AttemptUpdate, RunQuery, StoreError, TransitionRequest};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// How long an evaluation that created node runs may leave the workflow's status unrecorded.
const STATUS_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// How many rounds of starts one evaluation makes at most (each round's new runs may let
/// more nodes start, e.g. a step skipped by its condition).
const MAX_ROUNDS: usize = 64;

/// The engine's handle, kept by the controller.
pub(crate) struct Workflows {
    queue: mpsc::UnboundedSender<String>,
    /// The workflow runs being driven, and the parent of each step run seen: which
    /// workflow a run change concerns, without a store read.
    known: Arc<Mutex<Known>>,
}

#[derive(Default)]
struct Known {
    workflows: BTreeSet<String>,
    parents: HashMap<String, String>,
    /// Node name → why its run could not be created, per workflow run.
    start_errors: HashMap<String, BTreeMap<String, String>>,
    /// The node runs of each workflow run as last read: an evaluation re-reads only those
    /// that had not ended (a run that ended never changes), instead of every node's run.
    children: HashMap<String, BTreeMap<String, Child>>,
    /// How many evaluations brought each workflow's status up to date: a status timer armed
    /// before the last one has nothing left to do.
    statuses_recorded: HashMap<String, u64>,
    /// The workflows with a status timer armed.
    status_timers: BTreeSet<String>,
    /// Each workflow run's spec, parsed and planned once: a run's spec never changes.
    plans: HashMap<String, Arc<Plan>>,
    /// Each workflow run as the last evaluation left it: the next one reads only its state
    /// and attempt, and takes this copy when they have not changed (nothing else of a running
    /// workflow run changes but the node status, which the engine alone writes).
    runs: HashMap<String, Run>,
}

fn lock(known: &Mutex<Known>) -> std::sync::MutexGuard<'_, Known> {
    known.lock().unwrap_or_else(|e| e.into_inner())
}

impl Workflows {
    pub(crate) fn channel() -> (Self, mpsc::UnboundedReceiver<String>) {
        let (queue, receiver) = mpsc::unbounded_channel();
        (
            Workflows {
                queue,
                known: Arc::new(Mutex::new(Known::default())),
            },
            receiver,
        )
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        lock(&self.known)
    }

    /// Queues an evaluation of the workflow run `id`.
    pub(crate) fn wake(&self, id: &str) {
        self.known().workflows.insert(id.to_string());
        let _ = self.queue.send(id.to_string());
    }

    /// Makes sure the status of the workflow run `id` is recorded within `delay`: queues an
    /// evaluation then, unless one recorded it meanwhile. One timer per workflow at a time.
    fn status_within(&self, id: &str, delay: std::time::Duration) {
        let armed_at = {
            let mut known = self.known();
            if !known.status_timers.insert(id.to_string()) {
                return;
            }
            known.statuses_recorded.get(id).copied().unwrap_or(0)
        };
        let queue = self.queue.clone();
        let known = Arc::clone(&self.known);
        let id = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let due = {
                let mut known = lock(&known);
                known.status_timers.remove(&id);
                known.statuses_recorded.get(&id).copied().unwrap_or(0) == armed_at
            };
            if due {
                let _ = queue.send(id);
            }
        });
    }

    /// The status of the workflow run `id` is up to date (recorded, or unchanged).
    fn status_recorded(&self, id: &str) {
        *self
            .known()
            .statuses_recorded
            .entry(id.to_string())
            .or_default() += 1;
    }

    /// A step run just ended (`run` as stored by that change): the cached node runs of its
    /// workflow take it as it is, so the evaluation its end wakes need not read it again. A
    /// run that ended never changes, so the cache cannot go stale; without a cache (an
    /// evaluation holds it, or none ran yet) the evaluation reads the store as before.
    pub(crate) fn step_ended(&self, run: &Run) {
        let Some(step_of) = &run.status.step_of else {
            return;
        };
        let mut known = self.known();
        let Some(children) = known.children.get_mut(&step_of.run_id) else {
            return;
        };
        if let Some(child) = children.get_mut(&node_of(step_of)) {
            if child.run_id == run.metadata.id {
                *child = child_of(run);
            }
        }
    }

    /// The workflow run a changed run concerns, if any.
    fn concerned(&self, run_id: &str) -> Option<String> {
        let known = self.known();
        if known.workflows.contains(run_id) {
            return Some(run_id.to_string());
        }
        known.parents.get(run_id).cloned()
    }

    fn forget(&self, id: &str) {
        let mut known = self.known();
        known.workflows.remove(id);
        known.parents.retain(|_, parent| parent != id);
        known.start_errors.remove(id);
        known.children.remove(id);
        known.statuses_recorded.remove(id);
        known.plans.remove(id);
        known.runs.remove(id);
    }

    /// The plan of the workflow run `run`, parsed from its spec the first time.
    fn plan(&self, run: &Run) -> Result<Arc<Plan>, serde_json::Error> {
        if let Some(plan) = self.known().plans.get(&run.metadata.id) {
            return Ok(Arc::clone(plan));
        }
        let spec: WorkflowSpec = serde_json::from_value(run.spec.function_spec.clone())?;
        let plan = Arc::new(Plan::new(spec));
        self.known()
            .plans
            .insert(run.metadata.id.clone(), Arc::clone(&plan));
        Ok(plan)
    }
}

pub(crate) fn is_workflow_run(run: &Run) -> bool {
    run.spec.framework == WORKFLOW_FRAMEWORK
}

/// The engine's task: evaluations queued by `wake` and by the bus, one at a time.
pub(super) async fn run(controller: Controller, mut queue: mpsc::UnboundedReceiver<String>) {
    let mut bus = controller.bus().subscribe();
    let mut pending: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::select! {
            next = queue.recv() => match next {
                Some(id) => { pending.insert(id); }
                None => return,
            },
            event = bus.recv() => match event {
                Ok(BusEvent::RunChanged { run_id, state, .. }) => {
                    if let Some(parent) = controller.inner.workflows.concerned(&run_id) {
                        // The workflow run's own changes are mostly the engine's own writes
                        // (its node status): only a stop or a delete needs an evaluation.
                        // Its start and stop requests wake the engine directly as well.
                        let own = parent == run_id;
                        let wanted = if own {
                            matches!(state, RunState::Stop | RunState::Deleting)
                        } else {
                            step_change_matters(state)
                        };
                        if wanted {
                            pending.insert(parent);
                        }
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Changes were missed: look at every workflow again, from the store.
                    let mut known = controller.inner.workflows.known();
                    known.children.clear();
                    pending.extend(known.workflows.iter().cloned());
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = controller.bus().closing() => return,
        }
        // Take everything queued meanwhile, so that a burst of changes is one evaluation.
        while let Ok(id) = queue.try_recv() {
            pending.insert(id);
        }
        while let Some(id) = pending.pop_first() {
            if let Err(error) = evaluate(&controller, &id).await {
                tracing::error!(run = %id, %error, "workflow evaluation failed");
            }
        }
    }
}

/// Whether a step run's move to `state` can change its workflow's plan or status. A node is
/// RUNNING from its run's creation to its end, so the queue and the claim (READY, PENDING)
/// change nothing. RUNNING does: for a service step, its URL, which dependents may wait for;
/// for any step, the status, which the evaluation that created it left to a later one (this
/// one, while the step's process starts, off the path from one step to the next).
fn step_change_matters(state: RunState) -> bool {
    !matches!(
        state,
        RunState::Created | RunState::Built | RunState::Ready | RunState::Pending
    )
}

impl Controller {
    /// Starts a READY workflow run: READY → PENDING → RUNNING at once (it holds no execution
    /// slot; its step runs do), then the engine drives it.
    pub(super) async fn start_workflow(&self, run: &Run) -> Result<(), StoreError> {
        let claim = TransitionRequest {
            attempt_update: Some(AttemptUpdate::Dispatched {
                framework: WORKFLOW_FRAMEWORK.to_string(),
            }),
            owner: Some(self.replica_id().to_string()),
            ..TransitionRequest::new(
                &run.metadata.id,
                RunState::Ready,
                run.status.attempt,
                RunState::Pending,
            )
            .reason(reason::DISPATCHED)
        };
        let claimed = match self.transition(claim).await {
            Ok(claimed) => claimed,
            Err(StoreError::Conflict { .. }) => return Ok(()),
            Err(error) => return Err(error),
        };
        self.inner.deadlines.watch_attempt(&claimed);
        self.mark_workflow_started(&claimed).await?;
        self.inner.workflows.wake(&run.metadata.id);
        Ok(())
    }

    async fn mark_workflow_started(&self, run: &Run) -> Result<(), StoreError> {
        let started = TransitionRequest {
            attempt_update: Some(AttemptUpdate::Started),
            ..TransitionRequest::new(
                &run.metadata.id,
                RunState::Pending,
                run.status.attempt,
                RunState::Running,
            )
            .reason(reason::STARTED)
        };
        match self.transition(started).await {
            Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// A stop or delete of a workflow run: the engine stops its steps, then ends it.
    pub(crate) fn workflow_stop_requested(&self, run: &Run) {
        self.inner.workflows.wake(&run.metadata.id);
    }

    /// After a restart: every workflow run that has not ended is evaluated once.
    pub(crate) async fn resume_workflows(&self) -> Result<(), StoreError> {
        let active = self
            .store()
            .runs_in_states(
                &[
                    RunState::Pending,
                    RunState::Running,
                    RunState::Stop,
                    RunState::Deleting,
                ],
                u32::MAX,
            )
            .await?;
        for run in active.iter().filter(|run| is_workflow_run(run)) {
            self.inner.workflows.wake(&run.metadata.id);
        }
        Ok(())
    }
}

/// The workflow's parameters: the run's over the spec's defaults.
fn parameters(spec: &WorkflowSpec, given: &Map<String, Value>) -> Map<String, Value> {
    let mut params: Map<String, Value> = spec
        .parameters
        .iter()
        .filter_map(|(name, p)| p.default.clone().map(|d| (name.clone(), d)))
        .collect();
    params.extend(given.clone());
    params
}

/// The runs of the workflow's nodes, by node name.
async fn children(
    controller: &Controller,
    run: &Run,
) -> Result<BTreeMap<String, Child>, StoreError> {
    let mut children = BTreeMap::new();
    let mut cursor = None;
    loop {
        let page = controller
            .store()
            .list_runs(&RunQuery {
                project: run.metadata.project.clone(),
                step_of: Some(run.metadata.id.clone()),
                limit: 1000,
                cursor,
                ..RunQuery::default()
            })
            .await?;
        for child in page.runs {
            let Some(step_of) = &child.status.step_of else {
                continue;
            };
            let name = node_of(step_of);
            // Oldest first wins: a node has one run (ids grow with creation time).
            children.entry(name).or_insert_with(|| child_of(&child));
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(children)
}

/// The name of the node a step run is the run of: its step, and its index in a fan-out.
fn node_of(step_of: &StepOf) -> String {
    plan::node_name(&step_of.step, step_of.index)
}

fn child_of(run: &Run) -> Child {
    Child {
        run_id: run.metadata.id.clone(),
        state: run.status.state,
        results: run.status.results.clone(),
        artifacts: run.status.artifacts.clone(),
        message: run.status.message.clone(),
        service_url: run.status.service.as_ref().map(|s| s.url.clone()),
    }
}

/// The node runs of a workflow run: from the engine's cache when it has them, re-reading only
/// those that had not ended; else all of them from the store.
async fn current_children(
    controller: &Controller,
    run: &Run,
) -> Result<BTreeMap<String, Child>, StoreError> {
    let cached = controller
        .inner
        .workflows
        .known()
        .children
        .remove(&run.metadata.id);
    let Some(mut cached) = cached else {
        return children(controller, run).await;
    };
    let mut gone = Vec::new();
    for (node, child) in cached.iter_mut() {
        if child.state.is_terminal() {
            continue;
        }
        match controller.store().get_run_by_id(&child.run_id).await? {
            Some(current) => *child = child_of(&current),
            None => gone.push(node.clone()),
        }
    }
    for node in gone {
        cached.remove(&node);
    }
    Ok(cached)
}

/// The earlier runs a rerun from failure reuses, by node name.
async fn reused(controller: &Controller, run: &Run) -> Result<BTreeMap<String, Child>, StoreError> {
    let mut reused = BTreeMap::new();
    for (node, run_id) in &run.spec.reuse {
        // A reused run deleted since leaves its node to run again.
        if let Some(earlier) = controller.store().get_run_by_id(run_id).await? {
            reused.insert(
                node.clone(),
                Child {
                    run_id: earlier.metadata.id,
                    state: earlier.status.state,
                    results: earlier.status.results,
                    artifacts: earlier.status.artifacts,
                    message: None,
                    service_url: earlier.status.service.map(|s| s.url),
                },
            );
        }
    }
    Ok(reused)
}

/// The workflow run `id`: the engine's copy if the store still has it in the same state and
/// attempt, else as stored.
async fn current_run(controller: &Controller, id: &str) -> Result<Option<Run>, StoreError> {
    let kept = controller.inner.workflows.known().runs.remove(id);
    if let Some(run) = kept {
        match controller.store().run_state(id).await? {
            None => return Ok(None),
            Some(now) if now == (run.status.state, run.status.attempt) => return Ok(Some(run)),
            Some(_) => {}
        }
    }
    controller.store().get_run_by_id(id).await
}

async fn evaluate(controller: &Controller, id: &str) -> Result<(), ControllerError> {
    tracing::debug!(run = %id, "evaluating the workflow");
    let Some(mut run) = current_run(controller, id).await? else {
        controller.inner.workflows.forget(id);
        return Ok(());
    };
    match run.status.state {
        RunState::Pending => {
            // Claimed by a server that stopped before it recorded the start.
            controller.mark_workflow_started(&run).await?;
            run = controller.get_run(&run.metadata.project, id).await?;
        }
        RunState::Running | RunState::Stop | RunState::Deleting => {}
        state if state.is_terminal() || state == RunState::Deleted => {
            controller.inner.workflows.forget(id);
            return Ok(());
        }
        _ => return Ok(()),
    }
    let plan = match controller.inner.workflows.plan(&run) {
        Ok(plan) => plan,
        Err(error) => {
            return end(
                controller,
                &run,
                Outcome::Failed(format!("not a workflow spec: {error}")),
            )
            .await
        }
    };
    let params = parameters(plan.spec(), &run.spec.parameters);
    let stopping = matches!(run.status.state, RunState::Stop | RunState::Deleting);
    let mut children = current_children(controller, &run).await?;
    let reused = reused(controller, &run).await?;
    {
        let mut known = controller.inner.workflows.known();
        for child in children.values() {
            known.parents.insert(child.run_id.clone(), id.to_string());
        }
    }
    let mut decision: Decision;
    let mut rounds = 0;
    let mut created_runs = false;
    loop {
        let start_errors = controller
            .inner
            .workflows
            .known()
            .start_errors
            .get(id)
            .cloned()
            .unwrap_or_default();
        decision = plan::decide(&Inputs {
            workflow_run_id: id,
            plan: &plan,
            params: &params,
            children: &children,
            reused: &reused,
            start_errors: &start_errors,
            stopping,
        });
        rounds += 1;
        if decision.starts.is_empty() || rounds > MAX_ROUNDS {
            break;
        }
        for start in std::mem::take(&mut decision.starts) {
            match start_node(controller, &run, &start).await {
                Ok(child) => {
                    created_runs = true;
                    controller
                        .inner
                        .workflows
                        .known()
                        .parents
                        .insert(child.run_id.clone(), id.to_string());
                    children.insert(start.node.clone(), child);
                }
                Err(message) => {
                    controller
                        .inner
                        .workflows
                        .known()
                        .start_errors
                        .entry(id.to_string())
                        .or_default()
                        .insert(start.node.clone(), message);
                }
            }
        }
    }
    controller
        .inner
        .workflows
        .known()
        .children
        .insert(id.to_string(), children);
    if stopping {
        let why = stop_reason(&run);
        for child in &decision.active_runs {
            match controller
                .stop_run(&run.metadata.project, child, &why)
                .await
            {
                Ok(_) | Err(ControllerError::Conflict(_)) => {}
                Err(error) => tracing::warn!(run = %child, %error, "cannot stop a step run"),
            }
        }
    }
    // Node runs just created are about to be claimed: recording the status now would hold
    // the store's write lock against that claim, on the path from one step to the next. The
    // status is a view the next evaluation rewrites (the new runs' start or end wakes it; a
    // timer makes sure one comes soon even if they wait in the queue).
    let defer_status = created_runs && !stopping && decision.outcome.is_none();
    if defer_status {
        controller.inner.workflows.status_within(id, STATUS_DELAY);
    } else {
        if run.status.workflow.as_ref() != Some(&decision.status) {
            controller
                .store()
                .set_workflow_status(id, run.status.attempt, &decision.status)
                .await?;
            tracing::debug!(run = %id, "recorded the workflow's status");
            controller.published(&run);
            run.status.workflow = Some(decision.status);
        }
        controller.inner.workflows.status_recorded(id);
    }
    match decision.outcome {
        Some(outcome) => end(controller, &run, outcome).await?,
        None => {
            controller
                .inner
                .workflows
                .known()
                .runs
                .insert(id.to_string(), run);
        }
    }
    Ok(())
}

/// Creates a node's run; Err is why it could not be (the node then fails).
async fn start_node(
    controller: &Controller,
    run: &Run,
    start: &plan::Start,
) -> Result<Child, String> {
    let key = format!("workflow:{}:{}", run.metadata.id, start.node);
    let links = RunLinks {
        step_of: Some(StepOf {
            run_id: run.metadata.id.clone(),
            step: start.step.clone(),
            index: start.index,
        }),
        produced_by: None,
    };
    let created = controller
        .submit_step(
            &run.metadata.project,
            start.request.clone(),
            &run.metadata.created_by,
            key,
            links,
        )
        .await;
    let child = match created {
        Ok(put) => put.value,
        // A replayed evaluation that renders another request (a newer function version
        // appeared meanwhile): the node's run is the one created first.
        Err(ControllerError::Store(StoreError::IdempotencyMismatch { run_id, .. })) => controller
            .get_run(&run.metadata.project, &run_id)
            .await
            .map_err(|error| error.to_string())?,
        Err(error) => return Err(error.to_string()),
    };
    Ok(child_of(&child))
}

/// Ends the workflow run as the plan says.
async fn end(controller: &Controller, run: &Run, outcome: Outcome) -> Result<(), ControllerError> {
    let from = run.status.state;
    if from == RunState::Deleting {
        controller.purge(run).await?;
        controller.inner.workflows.forget(&run.metadata.id);
        return Ok(());
    }
    let (to, why, message, results) = match outcome {
        Outcome::Completed(results) if from == RunState::Running => (
            RunState::Completed,
            reason::SUCCEEDED.to_string(),
            None,
            Some(results),
        ),
        Outcome::Failed(message) if from == RunState::Running => (
            RunState::Error,
            reason::FAILED.to_string(),
            Some(message),
            None,
        ),
        // Stopping: however the nodes ended, the stop decides.
        _ if from == RunState::Stop => {
            let why = stop_reason(run);
            let to = if why == reason::TIMEOUT {
                RunState::Error
            } else {
                RunState::Stopped
            };
            (to, why, None, None)
        }
        _ => return Ok(()),
    };
    let request = TransitionRequest {
        reason: Some(why.clone()),
        message,
        results,
        attempt_update: Some(AttemptUpdate::Ended {
            exit_code: None,
            signal: None,
            reason: Some(why),
        }),
        ..TransitionRequest::new(&run.metadata.id, from, run.status.attempt, to)
    };
    match controller.transition(request).await {
        Ok(_) => {
            controller.inner.workflows.forget(&run.metadata.id);
            Ok(())
        }
        // Moved meanwhile (a stop came in): the next evaluation sees it.
        Err(StoreError::Conflict { .. }) => {
            controller.inner.workflows.wake(&run.metadata.id);
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}
