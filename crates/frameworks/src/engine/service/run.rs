//! The task that keeps one service execution's replicas: its main loop, what its replicas'
//! followers and probes report, restarts with a backoff, scaling, stopping, readiness.

use super::{Command, ServiceFile, SERVICE_FILE};
use crate::engine::is_gone;
use crate::engine::replica::Report;
use crate::engine::service_log::ServiceLog;
use crate::exit_code::split_code;
use crate::files::{describe, write_atomically};
use crate::replica_policy::{ExitHistory, RestartBackoff};
use crate::{EventKind, EventSender, ExecutionId};
use bollard::query_parameters::StopContainerOptions;
use bollard::Docker;
use runplane_domain::{reason, ExitOutcome, Failure, ReplicaStatus, Service};
use runplane_logstore::file::FileLogStore;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

pub(super) struct Replica {
    pub(super) index: u32,
    pub(super) container: Option<String>,
    /// The published host port (HTTP services).
    pub(super) port: Option<u16>,
    /// The run of the container being followed; reports of older runs are stale.
    pub(super) generation: u64,
    pub(super) running: bool,
    pub(super) probe: Option<AbortHandle>,
    /// How far the container's log was copied (its runs' output accumulates).
    pub(super) cursor: crate::engine::follow::LogCursor,
    pub(super) ready_since: Option<Instant>,
    pub(super) ever_ready: bool,
    pub(super) restarts: u32,
    pub(super) last_exit: Option<String>,
    /// How its runs ended, for the `not_ready` message.
    pub(super) history: ExitHistory,
    pub(super) backoff: RestartBackoff,
    pub(super) restart_at: Option<Instant>,
    /// Being stopped and removed (scaled away, or the service stops).
    pub(super) retiring: bool,
    /// Its container is gone (after retiring): it leaves the list once its follower is done.
    pub(super) removed: bool,
}

impl Replica {
    pub(super) fn new(index: u32) -> Self {
        Replica {
            index,
            container: None,
            port: None,
            generation: 0,
            running: false,
            probe: None,
            cursor: Default::default(),
            ready_since: None,
            ever_ready: false,
            restarts: 0,
            last_exit: None,
            history: ExitHistory::default(),
            backoff: RestartBackoff::default(),
            restart_at: None,
            retiring: false,
            removed: false,
        }
    }

    fn status(&self, http: bool) -> ReplicaStatus {
        ReplicaStatus {
            index: self.index,
            endpoint: match (http, self.port) {
                (true, Some(port)) => format!("127.0.0.1:{port}"),
                _ => String::new(),
            },
            ready: self.ready_since.is_some(),
            restarts: self.restarts,
            pid: None,
            last_exit: self.last_exit.clone(),
        }
    }

    pub(super) fn not_ready(&mut self) {
        if let Some(probe) = self.probe.take() {
            probe.abort();
        }
        self.ready_since = None;
    }
}

pub(super) struct ServiceRun {
    pub(super) docker: Docker,
    pub(super) events: EventSender,
    pub(super) execution: ExecutionId,
    pub(super) home: String,
    pub(super) dir: PathBuf,
    pub(super) file: ServiceFile,
    pub(super) logs: FileLogStore,
    pub(super) log: Arc<ServiceLog>,
    pub(super) replicas: BTreeMap<u32, Replica>,
    pub(super) desired: u32,
    /// Every index below it must have been ready once for the service to count as started.
    pub(super) initial: u32,
    pub(super) started: bool,
    pub(super) ready_deadline: Instant,
    pub(super) stopping: bool,
    /// Followers, probes and removals; dropping the run aborts them.
    pub(super) tasks: JoinSet<()>,
    pub(super) reports_tx: mpsc::UnboundedSender<Report>,
    pub(super) reports: mpsc::UnboundedReceiver<Report>,
    pub(super) published: Option<Vec<ReplicaStatus>>,
    pub(super) generations: u64,
}

enum End {
    Stopped,
    Failed(Failure),
    /// The framework went away: the containers go on, for a new instance to recover.
    Detached,
}

impl ServiceRun {
    pub(super) fn service(&self) -> &Service {
        &self.file.service
    }

    async fn emit(&self, kind: EventKind) {
        self.events.emit(&self.execution, kind).await;
    }

    pub(super) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let end = self.serve(&mut commands).await;
        let failure = match end {
            End::Detached => return,
            End::Stopped => None,
            End::Failed(failure) => {
                self.remove_all().await;
                Some(failure)
            }
        };
        // Nothing of the service writes to its log after `Exited`.
        self.tasks.shutdown().await;
        self.replicas.clear();
        self.publish().await;
        self.log.sync().await;
        self.emit(EventKind::Exited(ExitOutcome {
            failure,
            ..Default::default()
        }))
        .await;
    }

    /// The main loop, until stopped (every replica gone) or failed.
    async fn serve(&mut self, commands: &mut mpsc::UnboundedReceiver<Command>) -> End {
        if self.started {
            // Recovered after it had started once: say so again.
            self.emit(EventKind::Started).await;
        }
        loop {
            let now = Instant::now();
            if self.stopping && self.replicas.is_empty() {
                return End::Stopped;
            }
            if !self.stopping {
                self.restart_due(now).await;
                self.reconcile(now).await;
                self.check_started().await;
                if !self.started && now >= self.ready_deadline {
                    return End::Failed(self.not_ready());
                }
            }
            self.publish().await;
            let wake = self.next_wake(now);
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Scale(replicas)) if !self.stopping => self.rescale(replicas),
                    Some(Command::Stop) if !self.stopping => self.stop().await,
                    Some(_) => {}
                    None => return End::Detached,
                },
                Some(report) = self.reports.recv() => self.report(report).await,
                Some(_) = self.tasks.join_next() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = now + Duration::from_secs(3600);
        for replica in self.replicas.values() {
            if let Some(at) = replica.restart_at {
                wake = wake.min(at);
            }
        }
        if !self.started && !self.stopping {
            wake = wake.min(self.ready_deadline);
        }
        wake
    }

    async fn report(&mut self, report: Report) {
        match report {
            Report::Ready { index, generation } => self.ready(index, generation),
            Report::Exited {
                index,
                generation,
                code,
                oom,
                cursor,
            } => self.exited(index, generation, code, oom, cursor),
            Report::Removed { index } => {
                if let Some(replica) = self.replicas.get_mut(&index) {
                    replica.removed = true;
                }
            }
        }
        // A retired replica leaves once its container is gone and its output copied.
        let gone: Vec<u32> = self
            .replicas
            .values()
            .filter(|r| r.retiring && r.removed && !r.running)
            .map(|r| r.index)
            .collect();
        for index in gone {
            self.replicas.remove(&index);
            self.log.system(&format!("replica {index} is gone"));
        }
    }

    fn ready(&mut self, index: u32, generation: u64) {
        let Some(replica) = self.replicas.get_mut(&index) else {
            return;
        };
        if replica.generation != generation || replica.retiring || !replica.running {
            return;
        }
        replica.probe = None;
        replica.ready_since = Some(Instant::now());
        replica.ever_ready = true;
        self.log.system(&format!("replica {index} is ready"));
    }

    fn exited(
        &mut self,
        index: u32,
        generation: u64,
        code: Result<i32, String>,
        oom: bool,
        cursor: crate::engine::follow::LogCursor,
    ) {
        let Some(replica) = self.replicas.get_mut(&index) else {
            return;
        };
        if replica.generation != generation {
            return;
        }
        replica.cursor = cursor;
        replica.running = false;
        let was_ready_for = replica.ready_since.map(|since| since.elapsed());
        replica.not_ready();
        let (last_exit, phrase) = match &code {
            _ if oom => (
                reason::OOM_KILLED.to_string(),
                "was killed for going past its memory limit".to_string(),
            ),
            Ok(raw) => match split_code(*raw) {
                (_, Some(signal)) => (
                    format!("signal {signal}"),
                    format!("was killed by signal {signal}"),
                ),
                (_, None) => (
                    format!("exit code {raw}"),
                    format!("exited with code {raw}"),
                ),
            },
            Err(why) => {
                replica.container = None;
                ("lost".to_string(), format!("vanished ({why})"))
            }
        };
        if replica.retiring {
            // Stopped by its own retirement: not news. Its log is read to the end: remove it.
            if code.is_ok() {
                self.log.system(&format!("replica {index} {phrase}"));
            }
            let container = replica.container.clone();
            let docker = self.docker.clone();
            let reports = self.reports_tx.clone();
            self.tasks.spawn(async move {
                if let Some(container) = container {
                    if let Err(e) = super::containers::remove(&docker, &container).await {
                        tracing::warn!("removing replica container {container}: {e}");
                    }
                }
                let _ = reports.send(Report::Removed { index });
            });
            return;
        }
        let delay = replica.backoff.after_exit(was_ready_for);
        replica.restart_at = Some(Instant::now() + delay);
        replica.last_exit = Some(last_exit);
        replica.history.record(phrase.clone());
        let restart = replica.restarts + 1;
        self.log.system(&format!(
            "replica {index} {phrase}; restarting in {}s (restart {restart})",
            delay.as_secs_f64()
        ));
    }

    async fn restart_due(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .replicas
            .values()
            .filter(|r| !r.retiring && r.restart_at.is_some_and(|at| at <= now))
            .map(|r| r.index)
            .collect();
        for index in due {
            if let Some(replica) = self.replicas.get_mut(&index) {
                replica.restart_at = None;
                replica.restarts += 1;
            }
            if let Err(why) = self.restart(index).await {
                self.log
                    .system(&format!("replica {index} could not be restarted: {why}"));
                if let Some(replica) = self.replicas.get_mut(&index) {
                    let delay = replica.backoff.delay();
                    replica.restart_at = Some(Instant::now() + delay);
                    replica.last_exit = Some("start failed".into());
                    replica
                        .history
                        .record(format!("could not be started ({why})"));
                }
            }
        }
    }

    /// Retires the indexes at or above `desired` and starts the missing ones below it.
    async fn reconcile(&mut self, now: Instant) {
        let retire: Vec<u32> = self
            .replicas
            .range(self.desired..)
            .filter(|(_, r)| !r.retiring)
            .map(|(index, _)| *index)
            .collect();
        // Highest first: with a long grace, the lower ones are still serving meanwhile.
        for index in retire.into_iter().rev() {
            self.retire(index, "is scaled away").await;
        }
        for index in 0..self.desired {
            if self.replicas.contains_key(&index) {
                // Possibly still retiring from an earlier scale-down: re-added once gone.
                continue;
            }
            if let Err(why) = self.launch(index, None).await {
                self.log
                    .system(&format!("replica {index} could not be started: {why}"));
                let replica = self
                    .replicas
                    .entry(index)
                    .or_insert_with(|| Replica::new(index));
                replica.restart_at = Some(now + replica.backoff.delay());
                replica.last_exit = Some("start failed".into());
                replica
                    .history
                    .record(format!("could not be started ({why})"));
            }
        }
    }

    /// Takes replica `index` out of the list of ready ones, then stops its container (SIGTERM,
    /// SIGKILL after the grace period) and removes it.
    async fn retire(&mut self, index: u32, why: &str) {
        let grace = self.service().replica.stop_grace_seconds;
        let Some(replica) = self.replicas.get_mut(&index) else {
            return;
        };
        replica.retiring = true;
        replica.restart_at = None;
        replica.not_ready();
        let container = replica.container.clone();
        // A followed container is removed only once its follower has read the end of its log
        // (`exited`): removing it earlier would lose the lines written since the last read.
        let followed = replica.running;
        if container.is_none() {
            replica.removed = true;
            replica.running = false;
        }
        // Readers of the list stop sending it traffic before it is asked to stop.
        self.publish().await;
        self.log.system(&format!(
            "replica {index} {why}: stopping it (SIGTERM, SIGKILL after {grace}s)"
        ));
        let docker = self.docker.clone();
        let reports = self.reports_tx.clone();
        self.tasks.spawn(async move {
            if let Some(container) = container {
                let options = StopContainerOptions {
                    t: Some(i32::try_from(grace).unwrap_or(i32::MAX)),
                    signal: None,
                };
                if let Err(e) = docker.stop_container(&container, Some(options)).await {
                    if !is_gone(&e) {
                        tracing::warn!("stopping replica container {container}: {e}");
                    }
                }
                if followed {
                    return;
                }
                if let Err(e) = super::containers::remove(&docker, &container).await {
                    tracing::warn!("removing replica container {container}: {e}");
                }
            }
            let _ = reports.send(Report::Removed { index });
        });
        // A replica without a container leaves at once.
        if self
            .replicas
            .get(&index)
            .is_some_and(|r| r.removed && !r.running)
        {
            self.replicas.remove(&index);
        }
    }

    fn rescale(&mut self, replicas: u32) {
        if replicas == self.desired {
            return;
        }
        self.log.system(&format!(
            "scaling from {} to {replicas} replica(s)",
            self.desired
        ));
        self.desired = replicas;
        self.file.desired = replicas;
        self.persist();
    }

    async fn stop(&mut self) {
        self.stopping = true;
        self.log.system("stop requested: stopping every replica");
        let indexes: Vec<u32> = self.replicas.keys().rev().copied().collect();
        for index in indexes {
            self.retire(index, "is stopping with the service").await;
        }
    }

    async fn check_started(&mut self) {
        if self.started {
            return;
        }
        let all_ready = (0..self.initial).all(|index| {
            self.replicas
                .get(&index)
                .is_some_and(|r| r.ever_ready && !r.retiring)
        });
        if !all_ready {
            return;
        }
        self.started = true;
        self.file.started = true;
        self.persist();
        // The list that says they are ready goes first.
        self.publish().await;
        self.emit(EventKind::Started).await;
        self.log.system(&format!(
            "service started: {} replica(s) ready",
            self.replicas.len()
        ));
    }

    fn not_ready(&self) -> Failure {
        let timeout = self.service().ready_timeout_seconds;
        let path = &self.service().readiness_path;
        let late: Vec<String> = (0..self.initial)
            .filter(|index| !self.replicas.get(index).is_some_and(|r| r.ever_ready))
            .map(|index| {
                let history = self
                    .replicas
                    .get(&index)
                    .map(|r| r.history.describe())
                    .unwrap_or_else(|| "it never started".into());
                format!("replica {index} did not answer GET {path} within {timeout}s ({history})")
            })
            .collect();
        let message = late.join("; ");
        self.log.system(&format!("{message}: stopping the service"));
        Failure {
            reason: reason::NOT_READY.to_string(),
            message,
        }
    }

    /// Sends `Replicas` when the list changed since the last time.
    pub(super) async fn publish(&mut self) {
        let http = self.service().http;
        let list: Vec<ReplicaStatus> = self.replicas.values().map(|r| r.status(http)).collect();
        if self.published.as_ref() == Some(&list) {
            return;
        }
        self.published = Some(list.clone());
        self.emit(EventKind::Replicas(list)).await;
    }

    pub(super) fn persist(&self) {
        let json = match serde_json::to_vec_pretty(&self.file) {
            Ok(json) => json,
            Err(e) => {
                tracing::warn!("cannot encode {SERVICE_FILE}: {e}");
                return;
            }
        };
        // 0600: the replica's env may hold secrets, like the local framework's job.json.
        if let Err(e) = write_atomically(&self.dir, SERVICE_FILE, &json, 0o600) {
            tracing::warn!("cannot write {SERVICE_FILE}: {}", describe(&e));
        }
    }
}
