//! The supervisor's service mode: keeping `replicas` copies of the job up as HTTP servers.
//!
//! Each replica index owns a listening socket the supervisor binds (127.0.0.1, a free port)
//! and keeps for the index's whole life: the replica finds it on fd 3, and a restarted
//! replica serves on the same port (connections wait in the backlog meanwhile). Each replica
//! process leads its own process group, so that one replica's tree can be stopped or cleaned
//! up without touching the others.
//!
//! Everything happens on the main thread, woken by signals and by the readiness probes
//! (`probe.rs`): exits are reaped, restarts are scheduled with a backoff, scale requests
//! (`desired.json` + SIGUSR1) add or retire indexes, and every change is published in
//! `service.json` followed by a `replicas` hint on the control channel.

use super::capture::spawn_reader;
use super::probe::spawn_prober;
use super::procs;
use super::protocol::{
    ControlMessage, DesiredFile, ExitFile, ServiceFile, ServiceState, CHILD_PID_FILE, DESIRED_FILE,
    LISTEN_FD, SERVICE_FILE,
};
use super::supervise::{Supervisor, Wake, POLL};
use crate::files::{describe, read_json, write_atomically};
use crate::replica_policy::{ExitHistory, RestartBackoff};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use runplane_domain::{Failure, ReplicaStatus};
use runplane_logstore::Stream;
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How soon SIGKILL is sent again to what survived the last one.
const KILL_AGAIN: Duration = Duration::from_secs(10);
/// How often the process group of a retiring replica is checked for survivors.
const DRAIN_TICK: Duration = Duration::from_millis(20);
/// How soon a socket that could not be bound for a new replica is tried again.
const BIND_RETRY: Duration = Duration::from_secs(1);

/// Runs the service until it is stopped or fails; the outcome for `exit.json`.
pub(super) fn run(
    supervisor: &Supervisor,
    attempt_dir: &Path,
    spec: &ServiceFile,
) -> Result<ExitFile, String> {
    let job = &supervisor.job;
    if job.argv.is_empty() {
        return Err("the job has an empty command".into());
    }
    // A scale requested before we were up is not lost.
    let desired = read_json::<DesiredFile>(&attempt_dir.join(DESIRED_FILE))
        .map_or(spec.replicas, |d| d.replicas);
    let (done_tx, done) = mpsc::channel();
    let mut service = Service {
        supervisor,
        attempt_dir,
        spec,
        replicas: BTreeMap::new(),
        desired,
        initial: desired,
        started: false,
        stopping: None,
        changes: 0,
        published: None,
        readers: 0,
        done_tx,
        bind_retry_at: None,
    };
    let outcome = service.run();
    // Whatever happened, nothing may outlive the service.
    service.kill_all(Signal::SIGKILL);
    supervisor.kill_leftovers();
    service.replicas.clear();
    service.publish();
    supervisor.drain(&done, service.readers);
    let error = supervisor
        .sink
        .failure()
        .map(|why| format!("cannot write the log: {why}; the output is incomplete"));
    Ok(ExitFile {
        exit_code: None,
        signal: None,
        stopped: outcome.is_ok(),
        error,
        failure: outcome.err(),
    })
}

struct Service<'a> {
    supervisor: &'a Supervisor,
    attempt_dir: &'a Path,
    spec: &'a ServiceFile,
    replicas: BTreeMap<u32, Replica>,
    /// The replica count to work towards.
    desired: u32,
    /// The count the service started with: those indexes must all be ready once for the
    /// service to count as started, within the ready timeout.
    initial: u32,
    started: bool,
    /// When the grace period of a stop ends.
    stopping: Option<Instant>,
    changes: u64,
    published: Option<ServiceState>,
    /// Reader threads started (each reports on `done_tx` when its pipe closes).
    readers: usize,
    done_tx: mpsc::Sender<Stream>,
    bind_retry_at: Option<Instant>,
}

struct Replica {
    index: u32,
    /// Kept open for the index's whole life (the process inherits a copy on fd 3).
    listener: TcpListener,
    port: u16,
    process: Option<Process>,
    /// The process group of the latest process, until nothing of it is left.
    group: Option<Pid>,
    ready_since: Option<Instant>,
    ever_ready: bool,
    restarts: u32,
    last_exit: Option<String>,
    /// How its processes ended, for the `not_ready` message.
    history: ExitHistory,
    backoff: RestartBackoff,
    restart_at: Option<Instant>,
    /// Being retired (scaled away or stopped): SIGKILL at this time if still alive.
    retiring: Option<Instant>,
}

struct Process {
    pid: Pid,
    /// Tells its readiness probe to give up.
    probe_cancel: Arc<AtomicBool>,
}

/// `(last_exit for ReplicaStatus, phrase for messages)`.
fn describe_status(status: &WaitStatus) -> (String, String) {
    match status {
        WaitStatus::Exited(_, code) => (
            format!("exit code {code}"),
            format!("exited with code {code}"),
        ),
        WaitStatus::Signaled(_, signal, _) => (
            format!("signal {}", *signal as i32),
            format!(
                "was killed by signal {} ({})",
                *signal as i32,
                signal.as_str()
            ),
        ),
        other => (format!("{other:?}"), format!("ended ({other:?})")),
    }
}

fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}

impl Replica {
    fn status(&self) -> ReplicaStatus {
        ReplicaStatus {
            index: self.index,
            endpoint: format!("127.0.0.1:{}", self.port),
            ready: self.ready_since.is_some(),
            restarts: self.restarts,
            pid: self.process.as_ref().map(|p| p.pid.as_raw() as u32),
            last_exit: self.last_exit.clone(),
        }
    }

    /// The process is gone (exited or being retired): not ready, no probing.
    fn forget_process(&mut self) {
        if let Some(process) = self.process.take() {
            process.probe_cancel.store(true, Ordering::Relaxed);
        }
        self.ready_since = None;
    }
}

impl Service<'_> {
    fn sink(&self) -> &super::capture::LogSink {
        &self.supervisor.sink
    }

    /// The main loop: `Ok` once stopped, `Err` when the service failed.
    fn run(&mut self) -> Result<(), Failure> {
        let started_at = Instant::now();
        let ready_deadline = started_at + Duration::from_secs(self.spec.ready_timeout_seconds);
        // Every socket first: a port that cannot be had fails the start before anything runs.
        for index in 0..self.desired {
            let replica = bind(index).map_err(|why| Failure {
                reason: "start_failed".into(),
                message: format!("replica {index}: {why}"),
            })?;
            self.replicas.insert(index, replica);
        }
        for index in 0..self.desired {
            if let Err(why) = self.spawn(index) {
                return Err(Failure {
                    reason: "start_failed".into(),
                    message: format!("replica {index}: {why}"),
                });
            }
        }
        self.publish();

        loop {
            for status in self.supervisor.reap_all() {
                self.exited(&status);
            }
            let now = Instant::now();
            self.sweep_retired();
            if self.stopping.is_some() && self.replicas.is_empty() {
                return Ok(());
            }
            if self.stopping.is_none() {
                self.restart_due(now);
                self.reconcile(now);
                if !self.started {
                    self.check_started();
                }
                if !self.started && now >= ready_deadline {
                    return Err(self.not_ready());
                }
                if let Some(why) = self.supervisor.sink.failure() {
                    eprintln!(
                        "runplane supervise: stopping the service, its log cannot be written ({why})"
                    );
                    self.stop();
                }
            }
            self.kill_overdue(now);
            self.publish();

            let wait = self.next_wake(now, (!self.started).then_some(ready_deadline));
            match self.supervisor.wakes.recv_timeout(wait) {
                Ok(Wake::Signal(SIGTERM | SIGINT)) if self.stopping.is_none() => self.stop(),
                Ok(Wake::Signal(SIGUSR1)) if self.stopping.is_none() => self.rescale(),
                Ok(Wake::Ready { index, pid }) => self.ready(index, pid),
                // SIGCHLD: reaped at the top; a repeated stop or SIGHUP changes nothing.
                Ok(Wake::Signal(_)) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
            }
        }
    }

    /// How long the main loop may sleep.
    fn next_wake(&self, now: Instant, ready_deadline: Option<Instant>) -> Duration {
        let mut wait = POLL;
        let mut until = |at: Instant| wait = wait.min(at.saturating_duration_since(now));
        for replica in self.replicas.values() {
            if let Some(at) = replica.restart_at {
                until(at);
            }
            if let Some(at) = replica.retiring {
                until(at);
                if replica.process.is_none() {
                    until(now + DRAIN_TICK);
                }
            }
        }
        if let Some(at) = ready_deadline.filter(|_| self.stopping.is_none()) {
            until(at);
        }
        if let Some(at) = self.bind_retry_at {
            until(at);
        }
        wait
    }

    /// Starts the process of replica `index` (its socket is bound already).
    fn spawn(&mut self, index: u32) -> Result<(), String> {
        let job = &self.supervisor.job;
        let Some(replica) = self.replicas.get_mut(&index) else {
            return Err("no such replica".into());
        };
        let mut command = super::supervise::process_command(job)?;
        command
            .env("RUNPLANE_LISTEN_FD", LISTEN_FD.to_string())
            .env("RUNPLANE_PORT", replica.port.to_string())
            .env("RUNPLANE_REPLICA", index.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let fd = replica.listener.as_raw_fd();
        // SAFETY: the closure runs between fork and exec and only calls dup2/fcntl, which are
        // async-signal-safe. The socket is CLOEXEC in this process; dup2 gives the replica a
        // copy on fd 3 without that flag (when it already is fd 3, the flag is cleared).
        unsafe {
            command.pre_exec(move || {
                let result = if fd == LISTEN_FD {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, LISTEN_FD)
                };
                if result == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let why = match super::prepare::check_interpreter(&job.program) {
                    Err(interpreter) if e.kind() == std::io::ErrorKind::NotFound => interpreter,
                    _ => describe(&e),
                };
                return Err(format!("cannot start {}: {why}", job.program.display()));
            }
        };
        let pid = Pid::from_raw(child.id() as i32);
        for (pipe, stream) in [
            (
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
                Stream::Stdout,
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
                Stream::Stderr,
            ),
        ] {
            let Some(pipe) = pipe else { continue };
            match spawn_reader(
                pipe,
                stream,
                self.supervisor.sink.clone(),
                self.done_tx.clone(),
            ) {
                Ok(()) => self.readers += 1,
                Err(e) => eprintln!(
                    "runplane supervise: cannot start a {} reader for replica {index}: {}",
                    stream.as_str(),
                    describe(&e)
                ),
            }
        }
        // Reaped by the supervisor's waitpid(-1) loop, never by std's handle.
        drop(child);
        let cancel = Arc::new(AtomicBool::new(false));
        if let Err(e) = spawn_prober(
            index,
            pid.as_raw(),
            replica.port,
            self.spec.readiness_path.clone(),
            cancel.clone(),
            self.supervisor.waker.clone(),
        ) {
            eprintln!(
                "runplane supervise: cannot start the readiness probe of replica {index}: {}",
                describe(&e)
            );
        }
        replica.process = Some(Process {
            pid,
            probe_cancel: cancel,
        });
        replica.group = Some(pid);
        let port = replica.port;
        if index == 0 {
            // For a later server that has to find the service's processes without us.
            if let Err(e) = write_atomically(
                self.attempt_dir,
                CHILD_PID_FILE,
                format!("{pid}\n").as_bytes(),
                0o644,
            ) {
                eprintln!(
                    "runplane supervise: cannot write {CHILD_PID_FILE}: {}",
                    describe(&e)
                );
            }
        }
        self.sink()
            .system(&format!("replica {index} started (pid {pid}, port {port})"));
        Ok(())
    }

    /// A child was reaped: if it was a replica's process, the replica is down.
    fn exited(&mut self, status: &WaitStatus) {
        let Some(pid) = status.pid() else { return };
        let Some(replica) = self
            .replicas
            .values_mut()
            .find(|r| r.process.as_ref().is_some_and(|p| p.pid == pid))
        else {
            return;
        };
        let index = replica.index;
        let was_ready_for = replica.ready_since.map(|since| since.elapsed());
        replica.forget_process();
        // The rest of its tree goes with it: a restart starts from nothing.
        let _ = killpg(pid, Signal::SIGKILL);
        let (last_exit, phrase) = describe_status(status);
        if replica.retiring.is_some() {
            self.supervisor
                .sink
                .system(&format!("replica {index} {phrase}"));
            return;
        }
        let delay = replica.backoff.after_exit(was_ready_for);
        replica.restart_at = Some(Instant::now() + delay);
        replica.last_exit = Some(last_exit);
        replica.history.record(phrase.clone());
        let restart = replica.restarts + 1;
        self.supervisor.sink.system(&format!(
            "replica {index} {phrase}; restarting in {} (restart {restart})",
            seconds(delay)
        ));
    }

    fn restart_due(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .replicas
            .values()
            .filter(|r| r.retiring.is_none() && r.restart_at.is_some_and(|at| at <= now))
            .map(|r| r.index)
            .collect();
        for index in due {
            let Some(replica) = self.replicas.get_mut(&index) else {
                continue;
            };
            replica.restart_at = None;
            replica.restarts += 1;
            if let Err(why) = self.spawn(index) {
                self.sink()
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

    fn ready(&mut self, index: u32, pid: i32) {
        let Some(replica) = self.replicas.get_mut(&index) else {
            return;
        };
        let current = replica
            .process
            .as_ref()
            .is_some_and(|p| p.pid.as_raw() == pid);
        if !current || replica.retiring.is_some() || replica.ready_since.is_some() {
            return;
        }
        replica.ready_since = Some(Instant::now());
        replica.ever_ready = true;
        let port = replica.port;
        self.sink()
            .system(&format!("replica {index} is ready (port {port})"));
    }

    /// Sends `started` once every replica of the initial set has been ready.
    fn check_started(&mut self) {
        let all_ready = self
            .replicas
            .values()
            .filter(|r| r.index < self.initial && r.retiring.is_none())
            .all(|r| r.ever_ready);
        if !all_ready {
            return;
        }
        self.started = true;
        // service.json says so before the message does.
        self.publish();
        let pid = self
            .replicas
            .get(&0)
            .and_then(|r| r.process.as_ref())
            .map_or(0, |p| p.pid.as_raw() as u32);
        self.sink()
            .control()
            .send_patiently(&ControlMessage::Started { pid }, POLL);
        let count = self.replicas.len();
        self.sink()
            .system(&format!("service started: {count} replica(s) ready"));
    }

    fn not_ready(&self) -> Failure {
        let timeout = self.spec.ready_timeout_seconds;
        let path = &self.spec.readiness_path;
        let late: Vec<String> = self
            .replicas
            .values()
            .filter(|r| r.index < self.initial && r.retiring.is_none() && !r.ever_ready)
            .map(|r| {
                format!(
                    "replica {} did not answer GET {path} within {timeout}s ({})",
                    r.index,
                    r.history.describe()
                )
            })
            .collect();
        let message = late.join("; ");
        self.sink()
            .system(&format!("{message}: stopping the service"));
        Failure {
            reason: "not_ready".into(),
            message,
        }
    }

    /// SIGUSR1: `desired.json` changed.
    fn rescale(&mut self) {
        let path = self.attempt_dir.join(DESIRED_FILE);
        match read_json::<DesiredFile>(&path) {
            Some(DesiredFile { replicas }) if replicas != self.desired => {
                self.sink().system(&format!(
                    "scaling from {} to {replicas} replica(s)",
                    self.desired
                ));
                self.desired = replicas;
                self.bind_retry_at = None;
            }
            Some(_) => {}
            None => eprintln!(
                "runplane supervise: SIGUSR1 but {} is missing or unreadable",
                path.display()
            ),
        }
    }

    /// Adds the missing indexes below `desired` and retires those at or above it.
    fn reconcile(&mut self, now: Instant) {
        let retire: Vec<u32> = self
            .replicas
            .range(self.desired..)
            .filter(|(_, r)| r.retiring.is_none())
            .map(|(index, _)| *index)
            .collect();
        if !retire.is_empty() {
            let grace = Duration::from_secs(self.supervisor.job.stop_grace_seconds);
            for index in &retire {
                if let Some(replica) = self.replicas.get_mut(index) {
                    replica.retiring = Some(now + grace);
                    replica.restart_at = None;
                    if let Some(process) = &replica.process {
                        process.probe_cancel.store(true, Ordering::Relaxed);
                    }
                    replica.ready_since = None;
                }
            }
            // Readers of service.json stop sending it traffic before it is asked to stop.
            self.publish();
            for index in retire {
                if let Some(group) = self.replicas.get(&index).and_then(|r| r.group) {
                    let _ = killpg(group, Signal::SIGTERM);
                }
                self.sink().system(&format!(
                    "replica {index} is scaled away: SIGTERM, SIGKILL in {}",
                    seconds(grace)
                ));
            }
        }
        if self.bind_retry_at.is_some_and(|at| at > now) {
            return;
        }
        self.bind_retry_at = None;
        for index in 0..self.desired {
            if self.replicas.contains_key(&index) {
                // Possibly still retiring from an earlier scale-down: re-added once gone.
                continue;
            }
            match bind(index) {
                Ok(replica) => {
                    self.replicas.insert(index, replica);
                    if let Err(why) = self.spawn(index) {
                        self.sink()
                            .system(&format!("replica {index} could not be started: {why}"));
                        if let Some(replica) = self.replicas.get_mut(&index) {
                            replica.restart_at = Some(now + replica.backoff.delay());
                            replica.last_exit = Some("start failed".into());
                        }
                    }
                }
                Err(why) => {
                    self.sink()
                        .system(&format!("replica {index}: {why}; retrying"));
                    self.bind_retry_at = Some(now + BIND_RETRY);
                    return;
                }
            }
        }
    }

    /// A stop request: every replica retires (SIGTERM now, SIGKILL after the grace period),
    /// together with any other descendant.
    fn stop(&mut self) {
        let grace = Duration::from_secs(self.supervisor.job.stop_grace_seconds);
        let kill_at = Instant::now() + grace;
        self.stopping = Some(kill_at);
        for replica in self.replicas.values_mut() {
            replica.retiring = Some(kill_at);
            replica.restart_at = None;
            if let Some(process) = &replica.process {
                process.probe_cancel.store(true, Ordering::Relaxed);
            }
            replica.ready_since = None;
        }
        self.publish();
        self.sink().system(&format!(
            "stop requested: sending SIGTERM to every replica, SIGKILL in {}",
            seconds(grace)
        ));
        self.kill_all(Signal::SIGTERM);
    }

    /// Signals every replica's group and every other descendant.
    fn kill_all(&self, signal: Signal) {
        for replica in self.replicas.values() {
            if let Some(group) = replica.group {
                let _ = killpg(group, signal);
            }
        }
        for process in procs::descendants(self.supervisor.me.as_raw()) {
            if !process.zombie {
                let _ = kill(Pid::from_raw(process.pid), signal);
            }
        }
    }

    /// SIGKILL for retiring replicas whose grace period is over.
    fn kill_overdue(&mut self, now: Instant) {
        let mut killed = false;
        for replica in self.replicas.values_mut() {
            if replica.retiring.is_some_and(|at| at <= now) {
                replica.retiring = Some(now + KILL_AGAIN);
                if let Some(group) = replica.group {
                    let _ = killpg(group, Signal::SIGKILL);
                    killed = true;
                }
            }
        }
        if killed {
            self.sink().system("grace period over: sending SIGKILL");
        }
        if self.stopping.is_some_and(|at| at <= now) {
            self.stopping = Some(now + KILL_AGAIN);
            self.kill_all(Signal::SIGKILL);
        }
    }

    /// Retiring replicas whose whole group is gone leave the list (closing their socket).
    fn sweep_retired(&mut self) {
        let waiting: Vec<u32> = self
            .replicas
            .values()
            .filter(|r| r.retiring.is_some() && r.process.is_none())
            .map(|r| r.index)
            .collect();
        if waiting.is_empty() {
            return;
        }
        let table = procs::process_table();
        for index in waiting {
            let group = self.replicas.get(&index).and_then(|r| r.group);
            let alive = group
                .is_some_and(|group| table.iter().any(|p| !p.zombie && p.pgrp == group.as_raw()));
            if !alive {
                self.replicas.remove(&index);
                self.sink().system(&format!("replica {index} is gone"));
            }
        }
    }

    /// Writes `service.json` and sends a hint, when anything changed since the last time.
    fn publish(&mut self) {
        let state = ServiceState {
            desired: self.desired,
            started: self.started,
            replicas: self.replicas.values().map(Replica::status).collect(),
        };
        if self.published.as_ref() == Some(&state) {
            return;
        }
        let json = match serde_json::to_vec_pretty(&state) {
            Ok(json) => json,
            Err(e) => {
                eprintln!("runplane supervise: cannot encode {SERVICE_FILE}: {e}");
                return;
            }
        };
        if let Err(e) = write_atomically(self.attempt_dir, SERVICE_FILE, &json, 0o644) {
            eprintln!(
                "runplane supervise: cannot write {SERVICE_FILE}: {}",
                describe(&e)
            );
            return;
        }
        self.changes += 1;
        self.published = Some(state);
        // A hint only: a lost one is made up for by the follower's fallback tick.
        self.sink().control().send(&ControlMessage::Replicas {
            changes: self.changes,
        });
    }
}

/// A fresh listening socket for replica `index`.
fn bind(index: u32) -> Result<Replica, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind a listening socket: {}", describe(&e)))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("cannot read the socket's port: {}", describe(&e)))?
        .port();
    Ok(Replica {
        index,
        listener,
        port,
        process: None,
        group: None,
        ready_since: None,
        ever_ready: false,
        restarts: 0,
        last_exit: None,
        history: ExitHistory::default(),
        backoff: RestartBackoff::default(),
        restart_at: None,
        retiring: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // How exit histories read is tested with `ExitHistory`, in `replica_policy.rs`.
    #[test]
    fn durations_read_in_seconds() {
        assert_eq!(seconds(Duration::from_millis(250)), "0.25s");
        assert_eq!(seconds(Duration::from_secs(10)), "10s");
    }
}
