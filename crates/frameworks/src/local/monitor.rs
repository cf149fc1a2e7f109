//! Following one execution from the server: a tokio task reads the supervisor's control
//! channel into events, and when the supervisor is gone, turns `exit.json` and the outputs
//! folder into the final event.
//!
//! For a service, `Started` means every replica of the initial set was ready once; `Replicas`
//! (read from `service.json`, the control messages being hints) and `LogAppended` may come
//! before it, and an execution that never got there (stopped early, failed `not_ready`) ends
//! with `Exited` alone.

use super::procs;
use super::protocol::{
    read_pid_file, ControlMessage, ExitFile, ServiceState, CHILD_PID_FILE, EXIT_FILE, OUTPUTS_DIR,
    SERVICE_FILE, SUPERVISOR_ERR_FILE,
};
use super::standby::Replenish;
use super::{Executions, Request};
use crate::files::{describe, read_json};
use crate::outputs::collect_outputs;
use crate::{EventKind, EventSender, ExecutionId, FrameworkEvent};
use nix::sys::signal::Signal;
use runplane_domain::{ExitOutcome, ReplicaStatus};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;

/// How much of `supervisor.err` goes into a `Lost` message.
const ERR_TAIL: u64 = 2000;
/// How often a service's `service.json` is re-read without a hint (a hint can be dropped when
/// the control pipe is full).
pub(crate) const REPLICAS_TICK: std::time::Duration = std::time::Duration::from_secs(2);

/// Where an execution's events go and how its end is read: shared by the follower of an
/// execution this process started ([`Follow`]) and of one it re-attached after a restart
/// (`recover.rs`), so both report an ending the same way.
pub(crate) struct Reporter {
    pub execution: ExecutionId,
    pub attempt_dir: PathBuf,
    pub events: EventSender,
    pub executions: Executions,
    /// A service (see the module documentation for how its events differ).
    pub service: bool,
}

impl Reporter {
    pub(crate) async fn emit(&self, kind: EventKind) {
        let event = FrameworkEvent {
            execution: self.execution.clone(),
            kind,
        };
        if self.events.send(event).await.is_err() {
            tracing::debug!(execution = ?self.execution, "event receiver gone; dropping event");
        }
    }

    /// The supervisor is gone: reads `exit.json` and the outputs, marks the execution ended
    /// and emits the last events — `Started` if it was never sent, the log offset not sent
    /// yet, then `Exited` (or `Lost` when there is no usable exit status). `supervisor_status`
    /// is the supervisor's own exit status, known only to its parent.
    pub(crate) async fn finish(
        &self,
        started: bool,
        unsent_offset: Option<u64>,
        supervisor_status: Option<std::process::ExitStatus>,
    ) {
        let attempt_dir = self.attempt_dir.clone();
        let ended = tokio::task::spawn_blocking(move || read_ending(&attempt_dir)).await;
        let ending = match ended {
            Ok(ending) => ending,
            Err(e) => Ending::Lost(format!("reading the outcome failed: {e}")),
        };
        self.executions.mark_ended(&self.execution);

        match ending {
            Ending::Exited(outcome) => {
                if !started && !self.service {
                    self.emit(EventKind::Started).await;
                }
                if let Some(end_offset) = unsent_offset {
                    self.emit(EventKind::LogAppended { end_offset }).await;
                }
                tracing::debug!(execution = ?self.execution, ?outcome.exit_code, ?outcome.signal, "execution exited");
                self.emit(EventKind::Exited(outcome)).await;
            }
            Ending::Lost(mut message) => {
                // A supervisor that died without exit.json (killed, crashed) may have left the
                // job running with nobody to stop it.
                let attempt_dir = self.attempt_dir.clone();
                let killed = tokio::task::spawn_blocking(move || kill_orphans(&attempt_dir))
                    .await
                    .unwrap_or_default();
                if !killed.is_empty() {
                    message.push_str(&format!(
                        "; killed processes the job left behind: {killed:?}"
                    ));
                }
                if let Some(tail) = err_tail(&self.attempt_dir.join(SUPERVISOR_ERR_FILE)) {
                    message.push_str(&format!(" (supervisor: {tail})"));
                }
                if let Some(status) = supervisor_status {
                    if !status.success() {
                        message.push_str(&format!(" [supervisor {status}]"));
                    }
                }
                tracing::warn!(execution = ?self.execution, %message, "execution lost");
                self.emit(EventKind::Lost { message }).await;
            }
        }
    }
}

/// The replicas last reported for a service, to report each change once.
#[derive(Default)]
pub(crate) struct ReplicaView {
    last: Option<Vec<ReplicaStatus>>,
    /// What `service.json` said about the service having started.
    pub started: bool,
    /// `service.json` exists: the supervisor's signal handlers are in place.
    pub seen: bool,
}

impl ReplicaView {
    /// Re-reads `service.json` and emits `Replicas` if the list changed.
    pub(crate) async fn refresh(&mut self, reporter: &Reporter) {
        let path = reporter.attempt_dir.join(SERVICE_FILE);
        let Ok(Some(state)) =
            tokio::task::spawn_blocking(move || read_json::<ServiceState>(&path)).await
        else {
            return;
        };
        self.seen = true;
        self.started |= state.started;
        if self.last.as_ref() != Some(&state.replicas) {
            self.last = Some(state.replicas.clone());
            reporter.emit(EventKind::Replicas(state.replicas)).await;
        }
    }
}

/// Everything the task needs; the task owns the supervisor's [`Child`].
pub(crate) struct Follow {
    pub reporter: Reporter,
    pub child: Child,
    pub requests: mpsc::UnboundedReceiver<Request>,
    /// The next standby supervisor, started at this one's end.
    pub replenish: Option<Replenish>,
}

impl Follow {
    async fn emit(&self, kind: EventKind) {
        self.reporter.emit(kind).await
    }

    pub(crate) async fn run(mut self) {
        let execution = self.reporter.execution.clone();
        let pid = self.child.id();
        let mut started = false;
        // Log offsets are held back until Started, to keep the promised event order.
        let mut unsent_offset: Option<u64> = None;
        let mut sent_offset: Option<u64> = None;
        // Whether the supervisor has said anything yet (its signal handler is installed), and
        // whether a stop waits for that.
        let mut heard_from = false;
        let mut stop_pending = false;
        let mut scale_pending = false;
        let service = self.reporter.service;
        let mut replicas = ReplicaView::default();
        let mut tick = tokio::time::interval(REPLICAS_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        if let Some(stdout) = self.child.stdout.take() {
            let mut control = BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                tokio::select! {
                    _ = tick.tick(), if service => replicas.refresh(&self.reporter).await,
                    read = control.read_until(b'\n', &mut line) => {
                        match read {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(?execution, error = %e, "reading the control channel failed");
                                break;
                            }
                        }
                        if !heard_from {
                            heard_from = true;
                            if stop_pending {
                                signal_supervisor(&execution, pid, Signal::SIGTERM);
                            }
                            if scale_pending {
                                signal_supervisor(&execution, pid, Signal::SIGUSR1);
                            }
                        }
                        match serde_json::from_slice::<ControlMessage>(line.trim_ascii()) {
                            Ok(ControlMessage::Started { .. }) => {
                                if !started {
                                    started = true;
                                    self.emit(EventKind::Started).await;
                                }
                            }
                            Ok(ControlMessage::Log { end_offset }) => {
                                if sent_offset.is_none_or(|sent| end_offset > sent) {
                                    unsent_offset = Some(end_offset);
                                }
                            }
                            Ok(ControlMessage::Replicas { .. }) => {
                                replicas.refresh(&self.reporter).await;
                            }
                            Err(e) => tracing::warn!(
                                ?execution,
                                line = %String::from_utf8_lossy(&line),
                                error = %e,
                                "ignoring an unknown control message"
                            ),
                        }
                        line.clear();
                        // A service's log is worth following while it comes up.
                        if let (true, Some(end_offset)) = (started || service, unsent_offset.take()) {
                            sent_offset = Some(end_offset);
                            self.emit(EventKind::LogAppended { end_offset }).await;
                        }
                    }
                    Some(request) = self.requests.recv() => {
                        // The control pipe is open, so the supervisor has not exited and its pid
                        // cannot have been reused. It takes a repeated SIGTERM as a no-op. Before
                        // its first message it may not have installed its handlers yet (SIGTERM
                        // or SIGUSR1 would kill it outright), so the signal waits for that
                        // message; a scale is not lost meanwhile: the supervisor reads
                        // desired.json when it starts.
                        let (signal, pending) = match request {
                            Request::Stop => (Signal::SIGTERM, &mut stop_pending),
                            Request::Scale => (Signal::SIGUSR1, &mut scale_pending),
                        };
                        if heard_from {
                            signal_supervisor(&execution, pid, signal);
                        } else {
                            *pending = true;
                        }
                    }
                }
            }
        }

        // Between this end and the next start (recording the end, the next step's creation)
        // the job's core is free: the next standby's exec takes it.
        if let Some(replenish) = self.replenish.take() {
            replenish.now();
        }
        // The supervisor closes the channel once exit.json is written: the outcome can be read
        // now, and the process reaped in the background. Without exit.json (the supervisor
        // died), its own exit status goes into the report.
        let status = if self.reporter.attempt_dir.join(EXIT_FILE).exists() {
            let mut child = self.child;
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            None
        } else {
            self.child.wait().await.ok()
        };
        if service {
            replicas.refresh(&self.reporter).await;
        }
        self.reporter.finish(started, unsent_offset, status).await;
    }
}

fn signal_supervisor(execution: &ExecutionId, pid: Option<u32>, signal: Signal) {
    let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) else {
        return;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
        Ok(()) => tracing::info!(
            ?execution,
            pid,
            %signal,
            "signalled the supervisor (SIGTERM: stop, SIGUSR1: scale)"
        ),
        Err(e) => tracing::warn!(?execution, pid, error = %e, "cannot signal the supervisor"),
    }
}

/// With its supervisor gone, nobody will kill what the job still runs; the run is about to be
/// reported lost, so nothing of it may keep going. Every process of the job carries the
/// attempt's own `RUNPLANE_OUTPUTS` in its environment, which tells it apart from unrelated
/// processes (a reused pid).
pub(crate) fn kill_orphans(attempt_dir: &Path) -> Vec<i32> {
    let marker = format!(
        "RUNPLANE_OUTPUTS={}",
        attempt_dir.join(OUTPUTS_DIR).display()
    );
    let mut killed = Vec::new();
    // The job's main process first (it leads the job's process group), then any straggler.
    if let Some(pid) = read_pid_file(&attempt_dir.join(CHILD_PID_FILE)) {
        if procs::is_live_with_env(pid, &marker) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            killed.push(pid);
        }
    }
    for info in procs::process_table() {
        if !info.zombie && !killed.contains(&info.pid) && procs::is_live_with_env(info.pid, &marker)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(info.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            killed.push(info.pid);
        }
    }
    if !killed.is_empty() {
        tracing::warn!(attempt_dir = %attempt_dir.display(), ?killed, "killed the orphaned processes of a lost execution");
    }
    killed
}

enum Ending {
    Exited(ExitOutcome),
    Lost(String),
}

/// Reads how an execution ended from its attempt folder.
fn read_ending(attempt_dir: &Path) -> Ending {
    let path = attempt_dir.join(EXIT_FILE);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) => {
            return Ending::Lost(format!(
                "the supervisor ended without a readable {EXIT_FILE}: {}",
                describe(&e)
            ))
        }
    };
    let exit: ExitFile = match serde_json::from_slice(&text) {
        Ok(exit) => exit,
        Err(e) => return Ending::Lost(format!("{EXIT_FILE} is corrupt: {e}")),
    };
    if let Some(error) = exit.error {
        return Ending::Lost(error);
    }
    Ending::Exited(ExitOutcome {
        exit_code: exit.exit_code,
        signal: exit.signal,
        outputs: collect_outputs(&attempt_dir.join(OUTPUTS_DIR)),
        failure: exit.failure,
        outputs_dir: Some(attempt_dir.join(OUTPUTS_DIR)),
    })
}

/// The end of `supervisor.err`, when it says anything.
pub(crate) fn err_tail(path: &Path) -> Option<String> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(ERR_TAIL)))
        .ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail).trim().to_string();
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endings_come_from_exit_json() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read_ending(dir.path()), Ending::Lost(m) if m.contains("exit.json")));
        fs::write(dir.path().join(EXIT_FILE), b"{not json").unwrap();
        assert!(matches!(read_ending(dir.path()), Ending::Lost(m) if m.contains("corrupt")));
        fs::write(dir.path().join(EXIT_FILE), br#"{"exit_code":null,"signal":null,"stopped":false,"error":"cannot start /x: No such file or directory"}"#).unwrap();
        assert!(
            matches!(read_ending(dir.path()), Ending::Lost(m) if m == "cannot start /x: No such file or directory")
        );
        fs::write(
            dir.path().join(EXIT_FILE),
            br#"{"exit_code":3,"signal":null,"stopped":false}"#,
        )
        .unwrap();
        match read_ending(dir.path()) {
            Ending::Exited(outcome) => {
                assert_eq!(outcome.exit_code, Some(3));
                assert_eq!(outcome.failure, None);
            }
            Ending::Lost(m) => panic!("{m}"),
        }
        fs::write(
            dir.path().join(EXIT_FILE),
            br#"{"exit_code":null,"signal":null,"stopped":false,"failure":{"reason":"not_ready","message":"m"}}"#,
        )
        .unwrap();
        match read_ending(dir.path()) {
            Ending::Exited(outcome) => assert_eq!(
                outcome.failure,
                Some(runplane_domain::Failure {
                    reason: "not_ready".into(),
                    message: "m".into()
                })
            ),
            Ending::Lost(m) => panic!("{m}"),
        }
    }
}
