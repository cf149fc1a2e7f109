//! Services (`docs/concepts.md`): the controller's side of long-running runs.
//!
//! - Every service run the dispatcher starts is registered here with the service it serves
//!   (`(project, function name)`) and the replica count it was asked for.
//! - The framework's `Replicas` events update the run's `status.service` in the store and the
//!   gateway's pool (only ready replicas of runs that are PENDING or RUNNING receive requests).
//! - A run that reaches RUNNING (every replica ready) takes the service's name over.
//! - **Rolling redeploys**: while a service has more than one live run, a rollout task retires
//!   the older runs' replicas one at a time, each only after one more replica of the newest run
//!   is ready: the replica leaves the gateway's rotation, its requests in flight finish
//!   (`Gateway::drain`), then the framework scales its run down. Once the newest run is
//!   RUNNING the older ones are stopped with reason `replaced`. If the newest run fails
//!   instead, the older run is scaled back to what it had.
//!
//! The registry is in memory; `server.rs` rebuilds it from the store after a restart
//! ([`Controller::adopt_service_run`]) and the framework's recovery re-sends `Replicas`.

use super::{Controller, ControllerError};
use crate::gateway::{Endpoint, Gateway};
use runplane_domain::{reason, service_url, ReplicaStatus, Run, RunState, ServiceStatus};
use runplane_frameworks::ExecutionId;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// The in-memory view of the service runs this server follows.
#[derive(Default)]
pub(crate) struct Services {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    runs: HashMap<String, ServiceRun>,
    /// Rollout tasks by service, each with the `Notify` that wakes it.
    rollouts: HashMap<ServiceKey, Arc<Notify>>,
}

type ServiceKey = (String, String);

#[derive(Debug, Clone)]
struct ServiceRun {
    key: ServiceKey,
    attempt: u32,
    framework: String,
    state: RunState,
    /// The replica count the run asked for when it started.
    wanted: u32,
    /// The replica count it is scaled to now (lower while a newer run takes over).
    desired: u32,
    replicas: Vec<ReplicaStatus>,
}

impl ServiceRun {
    fn live(&self) -> bool {
        matches!(self.state, RunState::Pending | RunState::Running)
    }

    fn ready(&self) -> u32 {
        self.replicas.iter().filter(|r| r.ready).count() as u32
    }

    fn status(&self) -> ServiceStatus {
        ServiceStatus {
            name: self.key.1.clone(),
            url: service_url(&self.key.0, &self.key.1),
            desired: self.desired,
            replicas: self.replicas.clone(),
        }
    }
}

impl Services {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, run_id: &str) -> Option<ServiceRun> {
        self.lock().runs.get(run_id).cloned()
    }
}

/// The service a run serves: its function's name, in its project.
fn service_key(run: &Run) -> ServiceKey {
    (run.metadata.project.clone(), run.spec.function_name.clone())
}

fn endpoints(run: &ServiceRun) -> Vec<Endpoint> {
    if !run.live() {
        return Vec::new();
    }
    run.replicas
        .iter()
        // Workers (`deploy`) have no endpoint: nothing routes to them.
        .filter(|replica| replica.ready && replica.index < run.desired)
        .filter(|replica| !replica.endpoint.is_empty())
        .filter_map(|replica| {
            let addr = replica.endpoint.parse::<SocketAddr>().ok()?;
            Some(Endpoint {
                replica: replica.index,
                addr,
            })
        })
        .collect()
}

impl Controller {
    fn services(&self) -> &Services {
        &self.inner.services
    }

    pub fn gateway(&self) -> &Gateway {
        &self.inner.gateway
    }

    /// Registers a service run the dispatcher is about to start with `replicas` replicas, and
    /// gives the service a name record if it has none (or a stale one).
    pub(crate) async fn register_service_run(&self, run: &Run, replicas: u32) {
        self.adopt_service_run(run, replicas, None);
        let (project, name) = service_key(run);
        let current = self.store().get_service(&project, &name).await;
        let holder_live = match &current {
            Ok(Some(record)) => self
                .services()
                .get(&record.run_id)
                .is_some_and(|r| r.live() && record.run_id != run.metadata.id),
            _ => false,
        };
        if !holder_live {
            if let Err(error) = self
                .store()
                .put_service(&project, &name, &run.metadata.id)
                .await
            {
                tracing::warn!(run = %run.metadata.id, %error, "cannot record the service");
            }
            self.inner.bus.events_appended();
        }
        self.wake_rollout(&(project, name));
    }

    /// Follows a service run that asked for `replicas` and is scaled to `desired` (when a
    /// rollout scaled it down before a restart), without any other side effect.
    pub(crate) fn adopt_service_run(&self, run: &Run, replicas: u32, desired: Option<u32>) {
        let key = service_key(run);
        let desired = desired.filter(|d| *d > 0).unwrap_or(replicas);
        let entry = ServiceRun {
            key: key.clone(),
            attempt: run.status.attempt,
            framework: run.spec.framework.clone(),
            state: run.status.state,
            wanted: replicas,
            desired,
            replicas: run
                .status
                .service
                .as_ref()
                .map(|s| s.replicas.clone())
                .unwrap_or_default(),
        };
        self.services()
            .lock()
            .runs
            .insert(run.metadata.id.clone(), entry.clone());
        // Known but not ready yet: the gateway answers 503 rather than 404.
        self.gateway()
            .set_endpoints(&key.0, &key.1, &run.metadata.id, endpoints(&entry));
    }

    /// A `Replicas` event: the run's replicas as its framework sees them now.
    pub(crate) async fn replicas_changed(&self, run: &Run, replicas: Vec<ReplicaStatus>) {
        if self.services().get(&run.metadata.id).is_none() {
            // A run a previous server process started, re-attached by its framework.
            let Some(wanted) = self.wanted_replicas(run) else {
                return;
            };
            let desired = run.status.service.as_ref().map(|s| s.desired);
            self.adopt_service_run(run, wanted, desired);
        }
        let updated = {
            let mut state = self.services().lock();
            let Some(entry) = state.runs.get_mut(&run.metadata.id) else {
                return;
            };
            if entry.attempt != run.status.attempt {
                return;
            }
            entry.replicas = replicas;
            entry.clone()
        };
        let (project, name) = &updated.key;
        // A run being stopped reports its replicas going away: it must not rejoin the pool.
        if updated.live() {
            self.gateway()
                .set_endpoints(project, name, &run.metadata.id, endpoints(&updated));
        }
        self.store_service_status(&run.metadata.id, &updated).await;
        self.wake_rollout(&updated.key);
    }

    /// Deletes a service: stops every run that serves it (reason `user`) and removes the
    /// name. The runs stay, STOPPED, with their logs.
    pub async fn delete_service(&self, project: &str, name: &str) -> Result<(), ControllerError> {
        let record = self
            .store()
            .get_service(project, name)
            .await?
            .ok_or_else(|| {
                ControllerError::NotFound(format!("service {name} in project {project}"))
            })?;
        let key = (project.to_string(), name.to_string());
        let mut serving: Vec<String> = self
            .services()
            .lock()
            .runs
            .iter()
            .filter(|(_, run)| run.key == key && run.live())
            .map(|(id, _)| id.clone())
            .collect();
        if !serving.contains(&record.run_id) {
            serving.push(record.run_id.clone());
        }
        for run_id in serving {
            match self.stop_run(project, &run_id, reason::USER).await {
                Ok(_) | Err(ControllerError::Conflict(_)) | Err(ControllerError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        self.store()
            .delete_service(project, name, &record.run_id)
            .await?;
        self.inner.bus.events_appended();
        Ok(())
    }

    /// How many replicas a run's runnable asks for; None when it is not a live service run.
    fn wanted_replicas(&self, run: &Run) -> Option<u32> {
        if !matches!(run.status.state, RunState::Pending | RunState::Running) {
            return None;
        }
        let runtime = self.inner.runtimes.get(&run.spec.runtime)?;
        match runtime.to_runnable(run) {
            Ok(runplane_domain::Runnable::Service(service)) => Some(service.replicas),
            _ => None,
        }
    }

    async fn store_service_status(&self, run_id: &str, entry: &ServiceRun) {
        match self
            .store()
            .set_service_status(run_id, entry.attempt, &entry.status())
            .await
        {
            Ok(true) => {
                self.inner.bus.events_appended();
                self.inner.bus.publish(super::bus::BusEvent::RunChanged {
                    project: entry.key.0.clone(),
                    run_id: run_id.to_string(),
                    state: entry.state,
                });
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(run = %run_id, %error, "cannot store the service status"),
        }
    }

    /// Called after every stored transition of any run: keeps the registry, the gateway and
    /// the name record in step with service runs' states.
    pub(crate) async fn service_run_moved(&self, run: &Run) {
        let Some(entry) = ({
            let mut state = self.services().lock();
            match state.runs.get_mut(&run.metadata.id) {
                Some(entry) => {
                    entry.state = run.status.state;
                    entry.attempt = run.status.attempt;
                    Some(entry.clone())
                }
                None => None,
            }
        }) else {
            return;
        };
        let (project, name) = entry.key.clone();
        match run.status.state {
            RunState::Running => {
                if let Err(error) = self
                    .store()
                    .put_service(&project, &name, &run.metadata.id)
                    .await
                {
                    tracing::warn!(run = %run.metadata.id, %error, "cannot record the service");
                }
                self.inner.bus.events_appended();
                self.gateway()
                    .set_endpoints(&project, &name, &run.metadata.id, endpoints(&entry));
            }
            RunState::Pending => {}
            state => {
                // STOP, DELETING and every end: no new request goes there; the ones in flight
                // finish while the replicas shut down gracefully.
                self.gateway().remove_run(&run.metadata.id);
                if state.is_terminal() || state == RunState::Ready {
                    self.services().lock().runs.remove(&run.metadata.id);
                }
                if state == RunState::Deleted {
                    match self
                        .store()
                        .delete_service(&project, &name, &run.metadata.id)
                        .await
                    {
                        Ok(true) => self.inner.bus.events_appended(),
                        Ok(false) => {}
                        Err(error) => {
                            tracing::warn!(run = %run.metadata.id, %error, "cannot remove the service")
                        }
                    }
                }
            }
        }
        self.wake_rollout(&entry.key);
    }

    /// Wakes (or starts) the rollout task of a service that has more than one run, or whose
    /// one run is scaled below what it asked for.
    fn wake_rollout(&self, key: &ServiceKey) {
        let notify = {
            let mut state = self.services().lock();
            let runs: Vec<&ServiceRun> = state
                .runs
                .values()
                .filter(|r| &r.key == key && r.live())
                .collect();
            let needed = runs.len() > 1 || runs.iter().any(|r| r.desired < r.wanted);
            match state.rollouts.get(key) {
                Some(notify) => notify.clone(),
                None if needed => {
                    let notify = Arc::new(Notify::new());
                    state.rollouts.insert(key.clone(), notify.clone());
                    tokio::spawn(rollout(self.clone(), key.clone(), notify.clone()));
                    notify
                }
                None => return,
            }
        };
        notify.notify_one();
    }

    async fn scale_service_run(&self, run_id: &str, entry: &ServiceRun, replicas: u32) -> bool {
        let Some(framework) = self.inner.frameworks.get(&entry.framework) else {
            return false;
        };
        let execution = ExecutionId {
            run_id: run_id.to_string(),
            attempt: entry.attempt,
        };
        match framework.scale(&execution, replicas).await {
            Ok(()) => {
                let updated = {
                    let mut state = self.services().lock();
                    match state.runs.get_mut(run_id) {
                        Some(current) => {
                            current.desired = replicas;
                            current.clone()
                        }
                        None => return false,
                    }
                };
                self.store_service_status(run_id, &updated).await;
                true
            }
            Err(error) => {
                tracing::warn!(run = %run_id, %error, replicas, "cannot scale the service run");
                false
            }
        }
    }
}

/// What a rollout does next, decided from the registry alone.
#[derive(Debug, PartialEq)]
enum Step {
    /// Take this replica of this run out of rotation, then scale the run down to it.
    Retire { run_id: String, replica: u32 },
    /// Every replica of this older run is retired or the newest run is RUNNING: stop it.
    Replace { run_id: String, project: String },
    /// The newest run is alone and scaled below what it asked for (a newer run failed).
    Restore { run_id: String, replicas: u32 },
    /// Nothing to do until something changes.
    Wait,
    /// The service has at most one live run, at its full size.
    Done,
}

fn next_step(runs: &BTreeMap<String, ServiceRun>) -> Step {
    // Run ids are UUIDv7: their order is their creation order.
    let mut live: Vec<(&String, &ServiceRun)> = runs.iter().filter(|(_, r)| r.live()).collect();
    let Some((newest_id, newest)) = live.pop() else {
        return Step::Done;
    };
    if live.is_empty() {
        if newest.desired < newest.wanted && newest.state == RunState::Running {
            return Step::Restore {
                run_id: newest_id.clone(),
                replicas: newest.wanted,
            };
        }
        return Step::Done;
    }
    let taken_over = newest.state == RunState::Running;
    let new_ready = newest.ready();
    for (old_id, old) in live {
        let target = if taken_over {
            0
        } else {
            old.wanted.saturating_sub(new_ready)
        };
        if old.desired > target.max(1) {
            return Step::Retire {
                run_id: old_id.clone(),
                replica: old.desired - 1,
            };
        }
        // The last old replica stays until the new run has taken the name over.
        if taken_over {
            return Step::Replace {
                run_id: old_id.clone(),
                project: old.key.0.clone(),
            };
        }
    }
    Step::Wait
}

async fn rollout(controller: Controller, key: ServiceKey, wake: Arc<Notify>) {
    let drain_timeout = controller.inner.gateway_options.drain_timeout;
    loop {
        let runs: BTreeMap<String, ServiceRun> = controller
            .services()
            .lock()
            .runs
            .iter()
            .filter(|(_, r)| r.key == key)
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect();
        let step = next_step(&runs);
        tracing::debug!(service = ?key, ?step, "rollout step");
        match step {
            Step::Retire { run_id, replica } => {
                let Some(entry) = runs.get(&run_id) else {
                    continue;
                };
                if !controller
                    .gateway()
                    .drain(&run_id, replica, drain_timeout)
                    .await
                {
                    tracing::warn!(run = %run_id, replica, "requests still in flight after the drain timeout; scaling down anyway");
                }
                if !controller.scale_service_run(&run_id, entry, replica).await {
                    // The run may have ended meanwhile; its state change wakes us.
                    wake.notified().await;
                }
            }
            Step::Replace { run_id, project } => {
                let Some(entry) = runs.get(&run_id) else {
                    continue;
                };
                for replica in (0..entry.desired).rev() {
                    controller
                        .gateway()
                        .drain(&run_id, replica, drain_timeout)
                        .await;
                }
                match controller
                    .stop_run(&project, &run_id, reason::REPLACED)
                    .await
                {
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(run = %run_id, %error, "cannot stop the replaced run")
                    }
                }
                // The stop moved the run out of the live set (service_run_moved).
                if controller.services().get(&run_id).is_some_and(|r| r.live()) {
                    wake.notified().await;
                }
            }
            Step::Restore { run_id, replicas } => {
                let Some(entry) = runs.get(&run_id) else {
                    continue;
                };
                if !controller.scale_service_run(&run_id, entry, replicas).await {
                    wake.notified().await;
                }
            }
            Step::Wait => wake.notified().await,
            Step::Done => {
                let mut state = controller.services().lock();
                // Decided under the lock: a run registered meanwhile finds no task and starts
                // a new one.
                let runs: BTreeMap<String, ServiceRun> = state
                    .runs
                    .iter()
                    .filter(|(_, r)| r.key == key)
                    .map(|(id, r)| (id.clone(), r.clone()))
                    .collect();
                if next_step(&runs) == Step::Done {
                    state.rollouts.remove(&key);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: RunState, wanted: u32, desired: u32, ready: u32) -> ServiceRun {
        ServiceRun {
            key: ("p".into(), "s".into()),
            attempt: 1,
            framework: "local".into(),
            state,
            wanted,
            desired,
            replicas: (0..desired)
                .map(|index| ReplicaStatus {
                    index,
                    endpoint: format!("127.0.0.1:{}", 9000 + index),
                    ready: index < ready,
                    restarts: 0,
                    pid: None,
                    last_exit: None,
                })
                .collect(),
        }
    }

    fn runs(list: Vec<(&str, ServiceRun)>) -> BTreeMap<String, ServiceRun> {
        list.into_iter()
            .map(|(id, r)| (id.to_string(), r))
            .collect()
    }

    #[test]
    fn a_lone_run_at_full_size_needs_nothing() {
        assert_eq!(
            next_step(&runs(vec![("a", run(RunState::Running, 2, 2, 2))])),
            Step::Done
        );
        assert_eq!(next_step(&runs(vec![])), Step::Done);
    }

    #[test]
    fn old_replicas_retire_one_per_ready_new_replica() {
        let old = run(RunState::Running, 3, 3, 3);
        // Nothing of the new run is ready: the old one keeps all three.
        assert_eq!(
            next_step(&runs(vec![
                ("a", old.clone()),
                ("b", run(RunState::Pending, 3, 3, 0))
            ])),
            Step::Wait
        );
        // One new replica ready: the old run's highest replica goes.
        assert_eq!(
            next_step(&runs(vec![
                ("a", old.clone()),
                ("b", run(RunState::Pending, 3, 3, 1))
            ])),
            Step::Retire {
                run_id: "a".into(),
                replica: 2
            }
        );
        // Two ready and the old run already down to two: one more.
        assert_eq!(
            next_step(&runs(vec![
                ("a", run(RunState::Running, 3, 2, 2)),
                ("b", run(RunState::Pending, 3, 3, 2))
            ])),
            Step::Retire {
                run_id: "a".into(),
                replica: 1
            }
        );
        // The new run is RUNNING: the old one (down to its last replica) is replaced.
        assert_eq!(
            next_step(&runs(vec![
                ("a", run(RunState::Running, 3, 1, 1)),
                ("b", run(RunState::Running, 3, 3, 3))
            ])),
            Step::Replace {
                run_id: "a".into(),
                project: "p".into()
            }
        );
    }

    #[test]
    fn a_failed_newer_run_gives_the_old_one_its_replicas_back() {
        assert_eq!(
            next_step(&runs(vec![
                ("a", run(RunState::Running, 3, 1, 1)),
                ("b", run(RunState::Error, 3, 3, 0))
            ])),
            Step::Restore {
                run_id: "a".into(),
                replicas: 3
            }
        );
    }

    #[test]
    fn scaling_down_through_a_redeploy_retires_the_extra_old_replicas_at_the_end() {
        // Old run had 3, new one wants 1: once the new one is ready and RUNNING, the old
        // run goes down to one replica, then is replaced.
        assert_eq!(
            next_step(&runs(vec![
                ("a", run(RunState::Running, 3, 3, 3)),
                ("b", run(RunState::Running, 1, 1, 1))
            ])),
            Step::Retire {
                run_id: "a".into(),
                replica: 2
            }
        );
    }

    #[test]
    fn only_ready_replicas_within_the_desired_count_of_live_runs_take_requests() {
        let mut entry = run(RunState::Running, 3, 2, 2);
        entry.replicas.push(ReplicaStatus {
            index: 2,
            endpoint: "127.0.0.1:9002".into(),
            ready: true,
            restarts: 0,
            pid: None,
            last_exit: None,
        });
        let listed: Vec<u32> = endpoints(&entry).iter().map(|e| e.replica).collect();
        assert_eq!(listed, vec![0, 1]);
        entry.state = RunState::Stop;
        assert!(endpoints(&entry).is_empty());
    }

    proptest::proptest! {
        /// A rollout from N1 to N2 replicas, with new replicas becoming ready one at a time
        /// whenever the rollout waits: serving capacity (old replicas still in rotation plus
        /// ready new ones) never drops below min(N1, N2), and it ends with only the new run,
        /// at full size.
        #[test]
        fn a_rollout_keeps_capacity_and_ends_with_the_new_run(n1 in 1u32..6, n2 in 1u32..6) {
            let mut all = runs(vec![
                ("a", run(RunState::Running, n1, n1, n1)),
                ("b", run(RunState::Pending, n2, n2, 0)),
            ]);
            for _ in 0..100 {
                let old = &all["a"];
                let new = &all["b"];
                let capacity = if old.live() { old.desired } else { 0 } + new.ready();
                proptest::prop_assert!(capacity >= n1.min(n2), "capacity {} of {}/{}", capacity, n1, n2);
                match next_step(&all) {
                    Step::Retire { run_id, replica } => {
                        let entry = all.get_mut(&run_id).unwrap();
                        proptest::prop_assert_eq!(replica, entry.desired - 1);
                        entry.desired = replica;
                    }
                    Step::Replace { run_id, .. } => {
                        all.get_mut(&run_id).unwrap().state = RunState::Stopped;
                    }
                    Step::Wait => {
                        let new = all.get_mut("b").unwrap();
                        match new.replicas.iter_mut().find(|r| !r.ready) {
                            Some(replica) => replica.ready = true,
                            None => new.state = RunState::Running,
                        }
                    }
                    Step::Restore { .. } => proptest::prop_assert!(false, "nothing failed"),
                    Step::Done => {
                        proptest::prop_assert!(!all["a"].live());
                        proptest::prop_assert_eq!(all["b"].ready(), n2);
                        return Ok(());
                    }
                }
            }
            proptest::prop_assert!(false, "the rollout never ended");
        }
    }
}
