//! The `local` framework: each execution is an OS process on this machine, owned by a
//! `runplane supervise` process (see [`supervise_main`]) that the framework starts in its own
//! process group and follows through a control pipe.
//!
//! Division of labour:
//! - the framework ([`LocalFramework`], in the server) prepares the attempt folder, spawns the
//!   supervisor, turns its control messages into [`EventKind`]s, and collects the outcome;
//! - the supervisor runs the job, captures its output into the [`FileLogStore`], kills its
//!   whole process tree on stop or when it ends, and writes `exit.json`. For a service it
//!   keeps the replicas up (`service.rs`), publishes them in `service.json`, and scales when
//!   the framework rewrites `desired.json` and sends it SIGUSR1.
//!
//! Everything the two share is on disk ([`protocol`] describes the folder), so a supervisor and
//! its job keep going when the server stops, and a later server can find out what happened and
//! re-attach to what still runs (`recover.rs`, [`Framework::recover`]).
//!
//! [`FileLogStore`]: runplane_logstore::file::FileLogStore

pub(crate) mod capture;
pub(crate) mod monitor;
pub(crate) mod prepare;
mod probe;
mod procs;
pub mod protocol;
mod recover;
mod service;
mod spare;
mod standby;
mod supervise;
mod watch;

pub use standby::{ACK as STANDBY_ACK, ACK_PATIENCE as STANDBY_ACK_PATIENCE, STANDBY_ARG};
pub use supervise::supervise_main;

use crate::files::{describe, read_json, write_atomically};
use crate::{EventKind, EventSender, ExecutionId, Framework, FrameworkError};
use async_trait::async_trait;
use protocol::{
    DesiredFile, JobFile, ServiceFile, DESIRED_FILE, EXIT_FILE, JOB_FILE, OUTPUTS_DIR,
    SUPERVISOR_ERR_FILE, SUPERVISOR_PID_FILE, WORK_DIR,
};
use runplane_domain::Runnable;
use runplane_logstore::file::FileLogStore;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// Where the local framework keeps its state and how it starts supervisors.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Per-attempt state folders: `<runs_dir>/<run_id>/<attempt>/`.
    pub runs_dir: PathBuf,
    /// The [`FileLogStore`](runplane_logstore::file::FileLogStore) root the supervisors write
    /// logs to (the server must read logs from a store with the same root).
    pub logs_dir: PathBuf,
    /// The argv prefix that runs a supervisor, e.g. `[current_exe, "supervise"]`; the attempt
    /// folder's absolute path is appended.
    pub supervisor: Vec<String>,
    /// Other servers (replicas of a shared store) start executions in `runs_dir` too: a
    /// recovery then leaves alone the folders it was not handed (their owner cleans them up).
    pub shared_runs_dir: bool,
}

/// Runs jobs as local processes; see the module documentation.
pub struct LocalFramework {
    options: LocalOptions,
    events: EventSender,
    executions: Executions,
    /// Wakes the followers of re-attached executions when their log grows; made on the first
    /// recovery that needs it (`None` inside when inotify is unavailable: they tick instead).
    log_watcher: std::sync::OnceLock<Option<watch::LogWatcher>>,
    /// A supervisor started ahead of the next execution (`standby.rs`).
    standby: standby::Standby,
    /// An attempt folder made ahead of the next execution (`spare.rs`).
    spares: spare::Spares,
}

/// What the framework remembers about an execution it started.
struct Tracked {
    /// Requests for the execution's follower task (queued while it is starting).
    requests: mpsc::UnboundedSender<Request>,
    service: bool,
    ended: bool,
    /// The pipe to tell a supervisor that was a standby its end is recorded (`cleanup`).
    acks: Option<tokio::process::ChildStdin>,
}

/// What a follower task is asked to tell its supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// SIGTERM: stop the execution.
    Stop,
    /// SIGUSR1: `desired.json` changed.
    Scale,
}

/// The executions this framework instance started, shared with their follower tasks.
#[derive(Clone, Default)]
pub(crate) struct Executions(Arc<Mutex<HashMap<ExecutionId, Tracked>>>);

impl Executions {
    fn lock(&self) -> MutexGuard<'_, HashMap<ExecutionId, Tracked>> {
        // The map stays consistent across a panicking holder: every update is one statement.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn mark_ended(&self, execution: &ExecutionId) {
        if let Some(tracked) = self.lock().get_mut(execution) {
            tracked.ended = true;
        }
    }
}

fn busy(execution: &ExecutionId) -> FrameworkError {
    FrameworkError::Io(io::Error::new(
        io::ErrorKind::ResourceBusy,
        format!(
            "execution {}/{} is still running; stop it first",
            execution.run_id, execution.attempt
        ),
    ))
}

impl LocalFramework {
    pub fn new(options: LocalOptions, events: EventSender) -> Self {
        let absolute = |dir: &PathBuf| std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
        LocalFramework {
            spares: spare::Spares::new(
                absolute(&options.runs_dir),
                absolute(&options.logs_dir),
                !options.shared_runs_dir,
            ),
            options,
            events,
            executions: Executions::default(),
            log_watcher: std::sync::OnceLock::new(),
            standby: standby::Standby::default(),
        }
    }

    /// The folder holding an attempt's state (`job.json`, `exit.json`, `work/`, ...).
    pub fn attempt_dir(&self, execution: &ExecutionId) -> Result<PathBuf, FrameworkError> {
        crate::attempt::attempt_dir(&self.options.runs_dir, execution).map_err(|message| {
            FrameworkError::Io(io::Error::new(io::ErrorKind::InvalidInput, message))
        })
    }

    /// Everything after the execution was registered as starting; on error the caller
    /// unregisters it.
    async fn launch(
        &self,
        execution: &ExecutionId,
        (job, service): (runplane_domain::Job, Option<ServiceFile>),
        requests: mpsc::UnboundedReceiver<Request>,
    ) -> Result<(), String> {
        let is_service = service.is_some();
        let attempt_dir = crate::attempt::attempt_dir(&self.options.runs_dir, execution)?;
        let (dir, logs_dir, exec) = (
            attempt_dir.clone(),
            self.options.logs_dir.clone(),
            execution.clone(),
        );
        // Checked paths only: a spare makes them.
        let shape = spare::Shape::of(
            job.files
                .iter()
                .filter_map(|file| crate::attempt::check_file_path(&file.path).ok()),
        );
        let spare = self.spares.take();
        tokio::task::spawn_blocking(move || {
            prepare::prepare(&dir, &logs_dir, &exec, &job, service, spare)
        })
        .await
        .map_err(|e| format!("preparing the attempt folder failed: {e}"))??;

        tracing::debug!(?execution, "prepared the attempt folder");
        let (child, acks) = match self.start_supervisor(&attempt_dir).await {
            Ok(started) => started,
            Err(message) => {
                let _ = std::fs::remove_dir_all(&attempt_dir);
                return Err(message);
            }
        };
        if let Some(tracked) = self.executions.lock().get_mut(execution) {
            tracked.acks = acks;
        }
        if let Some(pid) = child.id() {
            let dir = attempt_dir.clone();
            let written = tokio::task::spawn_blocking(move || {
                write_atomically(
                    &dir,
                    SUPERVISOR_PID_FILE,
                    format!("{pid}\n").as_bytes(),
                    0o644,
                )
            })
            .await;
            if !matches!(written, Ok(Ok(()))) {
                tracing::warn!(
                    ?execution,
                    "cannot record the supervisor pid; a restarted server will not find it"
                );
            }
            tracing::info!(?execution, supervisor_pid = pid, attempt_dir = %attempt_dir.display(), "started a local execution");
        }
        // Made while this job runs, for the next start.
        self.spares.replenish(shape);
        let follow = monitor::Follow {
            reporter: monitor::Reporter {
                execution: execution.clone(),
                attempt_dir,
                events: self.events.clone(),
                executions: self.executions.clone(),
                service: is_service,
            },
            child,
            requests,
            replenish: Some(self.standby.later(&self.options.supervisor)),
        };
        tokio::spawn(follow.run());
        Ok(())
    }

    fn log_watcher(&self) -> Option<watch::LogWatcher> {
        self.log_watcher
            .get_or_init(|| match watch::LogWatcher::new() {
                Ok(watcher) => Some(watcher),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch log files; re-attached executions follow their logs on a tick");
                    None
                }
            })
            .clone()
    }

    /// Starts following one recovered execution according to what its folder says.
    async fn take_over(
        &self,
        execution: ExecutionId,
        attempt_dir: PathBuf,
        (found, service): (recover::Found, bool),
    ) {
        let reporter = monitor::Reporter {
            execution: execution.clone(),
            attempt_dir,
            events: self.events.clone(),
            executions: self.executions.clone(),
            service,
        };
        match found {
            recover::Found::Ended => {
                tokio::spawn(async move { reporter.finish(false, None, None).await });
            }
            recover::Found::Gone(message) => {
                tracing::warn!(?execution, %message, "execution lost");
                reporter.emit(EventKind::Lost { message }).await;
            }
            recover::Found::NeverStarted(message) => {
                tracing::warn!(?execution, %message, "execution never started");
                reporter.emit(EventKind::NeverStarted { message }).await;
            }
            recover::Found::Live { pid, pidfd } => {
                let (request_tx, request_rx) = mpsc::unbounded_channel();
                {
                    let mut executions = self.executions.lock();
                    if executions.get(&execution).is_some_and(|t| !t.ended) {
                        return;
                    }
                    executions.insert(
                        execution,
                        Tracked {
                            requests: request_tx,
                            service,
                            ended: false,
                            acks: None,
                        },
                    );
                }
                let follow = recover::Reattached {
                    reporter,
                    pid,
                    pidfd,
                    requests: request_rx,
                    logs: FileLogStore::new(self.options.logs_dir.clone()),
                    watcher: self.log_watcher(),
                };
                tokio::spawn(follow.run());
            }
        }
    }

    /// The supervisor of the execution prepared in `attempt_dir`: the standby if one waits
    /// (with the pipe to acknowledge its end on), else one spawned now.
    async fn start_supervisor(
        &self,
        attempt_dir: &Path,
    ) -> Result<(tokio::process::Child, Option<tokio::process::ChildStdin>), String> {
        Ok(match self.standby.assign(attempt_dir).await {
            Some((child, acks)) => (child, Some(acks)),
            None => (self.spawn_supervisor(attempt_dir)?, None),
        })
    }

    fn spawn_supervisor(&self, attempt_dir: &Path) -> Result<tokio::process::Child, String> {
        let err_path = attempt_dir.join(SUPERVISOR_ERR_FILE);
        let err_file = std::fs::File::create(&err_path)
            .map_err(|e| format!("cannot create {}: {}", err_path.display(), describe(&e)))?;
        let (program, mut command) = supervisor_command(
            &self.options.supervisor,
            attempt_dir.as_os_str(),
            (Stdio::null(), Stdio::from(err_file)),
        )?;
        command
            .spawn()
            .map_err(|e| format!("cannot start the supervisor {program}: {}", describe(&e)))
    }
}

/// The command that starts a supervisor: the configured argv prefix, then `last` (the attempt
/// folder, or the standby argument), with the given stdin and stderr and the control pipe as
/// stdout. Also returns the program, for messages.
fn supervisor_command<'a>(
    supervisor: &'a [String],
    last: &std::ffi::OsStr,
    (stdin, stderr): (Stdio, Stdio),
) -> Result<(&'a str, tokio::process::Command), String> {
    let Some((program, prefix)) = supervisor.split_first() else {
        return Err("no supervisor command is configured".into());
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(prefix)
        .arg(last)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(stderr)
        // The supervisor must outlive this server process (and its runtime).
        .kill_on_drop(false)
        // Its own process group: a Ctrl-C on the server's terminal goes to the server's
        // foreground process group and never reaches runs. A process group rather than a
        // session (setsid in a pre_exec hook) lets std spawn it with posix_spawn, which
        // does not copy the server's page tables as fork does (the largest cost of a
        // start).
        .process_group(0);
    Ok((program, command))
}

#[async_trait]
impl Framework for LocalFramework {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn start(
        &self,
        execution: ExecutionId,
        runnable: Runnable,
    ) -> Result<(), FrameworkError> {
        let (job, service) = match runnable {
            Runnable::Job(job) => (job, None),
            Runnable::Build(_) => {
                return Err(FrameworkError::StartFailed {
                    execution,
                    message: "the local framework cannot build images: run builds on a \
                              framework with an image builder (engine)"
                        .into(),
                })
            }
            Runnable::Service(service) => {
                if service.port.is_some() || !service.http {
                    return Err(FrameworkError::StartFailed {
                        execution,
                        message: "the local framework runs host processes: it cannot give \
                                  them a fixed port or run workers without HTTP; use a \
                                  container framework (engine)"
                            .into(),
                    });
                }
                if let Err(message) = crate::attempt::check_readiness_path(&service.readiness_path)
                {
                    return Err(FrameworkError::StartFailed { execution, message });
                }
                let file = ServiceFile {
                    replicas: service.replicas,
                    readiness_path: service.readiness_path,
                    ready_timeout_seconds: service.ready_timeout_seconds,
                };
                (service.replica, Some(file))
            }
        };
        let (request_tx, request_rx) = mpsc::unbounded_channel();
        {
            let mut executions = self.executions.lock();
            if executions
                .get(&execution)
                .is_some_and(|tracked| !tracked.ended)
            {
                return Err(FrameworkError::StartFailed {
                    execution,
                    message: "it is already running".into(),
                });
            }
            executions.insert(
                execution.clone(),
                Tracked {
                    requests: request_tx,
                    service: service.is_some(),
                    ended: false,
                    acks: None,
                },
            );
        }
        match self.launch(&execution, (job, service), request_rx).await {
            Ok(()) => Ok(()),
            Err(message) => {
                self.executions.lock().remove(&execution);
                tracing::warn!(?execution, %message, "cannot start a local execution");
                Err(FrameworkError::StartFailed { execution, message })
            }
        }
    }

    async fn recover(&self, executions: Vec<ExecutionId>) -> Result<(), FrameworkError> {
        // Executions this instance already follows need nothing.
        let (todo, active): (Vec<ExecutionId>, std::collections::HashSet<ExecutionId>) = {
            let tracked = self.executions.lock();
            let active = tracked.keys().chain(&executions).cloned().collect();
            let todo = executions
                .into_iter()
                .filter(|execution| !tracked.contains_key(execution))
                .collect();
            (todo, active)
        };
        let runs_dir = self.options.runs_dir.clone();
        let shared_runs_dir = self.options.shared_runs_dir;
        let inspected = tokio::task::spawn_blocking(move || {
            // Attempts that ended under a server that died before cleaning them up.
            let cleaned = if shared_runs_dir {
                0
            } else {
                recover::clean_ended_attempts(&runs_dir, &active)
            };
            if cleaned > 0 {
                tracing::info!(cleaned, "cleaned up attempts that ended before a crash");
            }
            todo.into_iter()
                .map(|execution| {
                    let found = crate::attempt::attempt_dir(&runs_dir, &execution).map(|dir| {
                        let found = recover::inspect(&dir);
                        let service = recover::is_service(&dir);
                        (dir, (found, service))
                    });
                    (execution, found)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| FrameworkError::Io(io::Error::other(e.to_string())))?;
        let (mut live, mut ended, mut lost, mut never_started) = (0, 0, 0, 0);
        for (execution, found) in inspected {
            match found {
                Ok((dir, found)) => {
                    match found.0 {
                        recover::Found::Live { .. } => live += 1,
                        recover::Found::Ended => ended += 1,
                        recover::Found::Gone(_) => lost += 1,
                        recover::Found::NeverStarted(_) => never_started += 1,
                    }
                    self.take_over(execution, dir, found).await;
                }
                Err(message) => {
                    lost += 1;
                    let event = crate::FrameworkEvent {
                        execution,
                        kind: EventKind::Lost { message },
                    };
                    let _ = self.events.send(event).await;
                }
            }
        }
        tracing::info!(
            live,
            ended,
            lost,
            never_started,
            "recovered the executions of a previous server"
        );
        Ok(())
    }

    async fn stop(&self, execution: &ExecutionId) -> Result<(), FrameworkError> {
        {
            let executions = self.executions.lock();
            if let Some(tracked) = executions.get(execution) {
                if !tracked.ended {
                    // The follower signals the supervisor; if it already finished, the
                    // execution has ended and there is nothing to stop.
                    let _ = tracked.requests.send(Request::Stop);
                }
                return Ok(());
            }
        }
        // Not started by this instance: fine if it is known to have ended.
        if self.attempt_dir(execution)?.join(EXIT_FILE).exists() {
            return Ok(());
        }
        Err(FrameworkError::UnknownExecution(execution.clone()))
    }

    async fn scale(&self, execution: &ExecutionId, replicas: u32) -> Result<(), FrameworkError> {
        let attempt_dir = self.attempt_dir(execution)?;
        let tracked = self
            .executions
            .lock()
            .get(execution)
            .map(|tracked| (tracked.service, tracked.ended));
        match tracked {
            Some((false, _)) => return Err(FrameworkError::NotAService(execution.clone())),
            // Ended meanwhile: there is nothing left to scale.
            Some((true, true)) => return Ok(()),
            Some((true, false)) => {}
            None => {
                let dir = attempt_dir.clone();
                let job =
                    tokio::task::spawn_blocking(move || read_json::<JobFile>(&dir.join(JOB_FILE)))
                        .await
                        .map_err(|e| FrameworkError::Io(io::Error::other(e.to_string())))?;
                return match job {
                    Some(job) if job.service.is_none() => {
                        Err(FrameworkError::NotAService(execution.clone()))
                    }
                    _ if attempt_dir.join(EXIT_FILE).exists() => Ok(()),
                    _ => Err(FrameworkError::UnknownExecution(execution.clone())),
                };
            }
        }
        // The file first: a supervisor that is not up yet reads it when it starts, one that
        // is up reads it on SIGUSR1.
        let json = serde_json::to_vec(&DesiredFile { replicas })
            .map_err(|e| FrameworkError::Io(io::Error::other(e.to_string())))?;
        let dir = attempt_dir.clone();
        tokio::task::spawn_blocking(move || write_atomically(&dir, DESIRED_FILE, &json, 0o644))
            .await
            .map_err(|e| FrameworkError::Io(io::Error::other(e.to_string())))??;
        if let Some(tracked) = self.executions.lock().get(execution) {
            let _ = tracked.requests.send(Request::Scale);
        }
        tracing::info!(?execution, replicas, "asked a service to scale");
        Ok(())
    }

    async fn cleanup(&self, execution: &ExecutionId) -> Result<(), FrameworkError> {
        let attempt_dir = self.attempt_dir(execution)?;
        let acks = {
            let mut executions = self.executions.lock();
            match executions.get(execution) {
                Some(tracked) if !tracked.ended => return Err(busy(execution)),
                Some(_) => executions
                    .remove(execution)
                    .and_then(|tracked| tracked.acks),
                None => {
                    if !attempt_dir.exists() {
                        return Err(FrameworkError::UnknownExecution(execution.clone()));
                    }
                    // A supervisor that wrote exit.json is past its job, only finishing (its
                    // fsyncs, or waiting for the acknowledgement): the execution has ended.
                    if !attempt_dir.join(EXIT_FILE).exists()
                        && prepare::live_supervisor(&attempt_dir).is_some()
                    {
                        return Err(busy(execution));
                    }
                    None
                }
            }
        };
        if let Some(acks) = acks {
            standby::acknowledge(acks).await;
        }
        // job.json goes too: it holds the job's environment, secrets included. Emptied, the
        // working state may make the next spare (`spare.rs`) instead of being removed.
        let spares = self.spares.clone();
        tokio::task::spawn_blocking(move || match spares.recycle(&attempt_dir) {
            true => Ok(()),
            false => remove_working_state(&attempt_dir),
        })
        .await
        .map_err(|e| FrameworkError::Io(io::Error::other(e.to_string())))??;
        Ok(())
    }
}

/// Removes what a finished attempt no longer needs, keeping `exit.json`, the pid files and
/// `supervisor.err` for post-mortems. Missing pieces are fine: cleanup is idempotent.
fn remove_working_state(attempt_dir: &Path) -> io::Result<()> {
    for dir in [WORK_DIR, OUTPUTS_DIR] {
        match std::fs::remove_dir_all(attempt_dir.join(dir)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    match std::fs::remove_file(attempt_dir.join(JOB_FILE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
