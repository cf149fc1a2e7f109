//! Taking over executions a previous server process started (`Framework::recover`).
//!
//! Each attempt folder says what became of its execution while no server watched: `exit.json`
//! means it ended (its outcome is read like any other); a live supervisor is re-attached —
//! followed through its log file (inotify) and a pidfd instead of the control pipe, which died
//! with the old server; anything else is reported lost, and whatever the job left running is
//! killed, so that an attempt runs at most once. A re-attached service is also followed
//! through its `service.json` (its attempt folder is watched for the renames that replace it),
//! and scaled through the pidfd like it is stopped.
//!
//! Lost, unless the job provably never ran: no attempt folder (the framework fsyncs it before the
//! supervisor exists), a folder from this boot without `job.json` (written last), or, in the boot
//! `job.json` records, no `child.pid`, no leftover process and a silent supervisor. That is
//! `NeverStarted`, and the controller requeues the run as its next attempt.

use super::monitor::{err_tail, kill_orphans, ReplicaView, Reporter};
use super::prepare::live_supervisor;
use super::procs;
use super::protocol::{
    read_pid_file, JobFile, CHILD_PID_FILE, EXIT_FILE, JOB_FILE, OUTPUTS_DIR, SUPERVISOR_ERR_FILE,
    SUPERVISOR_PID_FILE, WORK_DIR,
};
use super::watch::{LogWatcher, Watch};
use super::Request;
use crate::files::read_json;
use crate::{EventKind, ExecutionId};
use runplane_logstore::file::FileLogStore;
use runplane_logstore::LogStore;
use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

/// The fallback tick of a re-attached follower: against a missed inotify wake-up, a log file
/// that did not exist yet, or a kernel without pidfds.
const TICK: Duration = Duration::from_secs(2);
/// How soon a stop requested before the job started is retried.
const PENDING_STOP_TICK: Duration = Duration::from_millis(100);
/// The most of a log read at once while looking for its end.
const LOG_READ: usize = 4 << 20;

/// What an attempt folder says about its execution.
pub(crate) enum Found {
    /// `exit.json` is there: the execution ended.
    Ended,
    /// Its supervisor still runs. `pidfd` names that very process (`None` on kernels without
    /// pidfds, where the pid is re-checked against its command line instead).
    Live { pid: i32, pidfd: Option<OwnedFd> },
    /// Nothing to follow; the message says what was found.
    Gone(String),
    /// Nothing to follow, and the job's code certainly never ran: the server died between
    /// claiming the run and its supervisor starting the job. Safe to start again.
    NeverStarted(String),
}

/// Inspects an attempt folder (blocking: reads files and `/proc`).
pub(crate) fn inspect(attempt_dir: &Path) -> Found {
    if !attempt_dir.is_dir() {
        return Found::NeverStarted(format!(
            "no attempt folder was found ({}): the server stopped before starting it",
            attempt_dir.display()
        ));
    }
    if attempt_dir.join(EXIT_FILE).exists() {
        return Found::Ended;
    }
    let recorded = read_pid_file(&attempt_dir.join(SUPERVISOR_PID_FILE));
    // Without supervisor.pid the server may have died right after spawning the supervisor:
    // look for it by its command line, or a standby's working directory: both name this folder.
    let candidate = recorded.or_else(|| procs::find_supervisor_of(attempt_dir));
    if let Some(pid) = candidate {
        if let Some(pidfd) = attach(pid, attempt_dir) {
            return Found::Live { pid, pidfd };
        }
    }
    // The supervisor may have written exit.json and exited between the two looks.
    if attempt_dir.join(EXIT_FILE).exists() {
        return Found::Ended;
    }
    let mut message = "the supervisor of this attempt is gone and left no exit status".to_string();
    match recorded {
        Some(pid) => message.push_str(&format!(" (supervisor pid {pid} is not running)")),
        None => message.push_str(&format!(" (no {SUPERVISOR_PID_FILE} was recorded)")),
    }
    let supervisor_said = err_tail(&attempt_dir.join(SUPERVISOR_ERR_FILE));
    if let Some(tail) = &supervisor_said {
        message.push_str(&format!(" (supervisor: {tail})"));
    }
    let killed = kill_orphans(attempt_dir);
    // The supervisor writes child.pid right after it spawns the job, and a job outlives its
    // supervisor (its own process group), so: no child.pid, no process left behind and no
    // word from the supervisor means the job was never spawned. A supervisor that failed
    // on its own says why on its stderr, and is not retried forever.
    let job_spawned = attempt_dir.join(CHILD_PID_FILE).exists();
    // After a reboot (or on another machine) child.pid may be lost though the job ran.
    // Without job.json (written last, before the supervisor is spawned) the server died while
    // preparing the folder: it never spawned anything, if the folder is from this boot.
    let same_boot = match read_json::<JobFile>(&attempt_dir.join(JOB_FILE)) {
        Some(job) => job
            .boot_id
            .is_some_and(|prepared| procs::boot_id() == Some(prepared.as_str())),
        None => procs::created_since_boot(attempt_dir),
    };
    if same_boot && !job_spawned && killed.is_empty() && supervisor_said.is_none() {
        return Found::NeverStarted(format!("{message}; its job was never started"));
    }
    if !killed.is_empty() {
        message.push_str(&format!(
            "; killed processes the job left behind: {killed:?}"
        ));
    }
    Found::Gone(message)
}

/// Whether the attempt runs a service (its `job.json` says so).
pub(crate) fn is_service(attempt_dir: &Path) -> bool {
    read_json::<JobFile>(&attempt_dir.join(JOB_FILE)).is_some_and(|job| job.service.is_some())
}

/// Cleans up the attempt folders of executions that ended but were never cleaned up: the
/// server records an end before it asks for cleanup, and may die in between. `active` holds
/// every execution the server believes active plus those this instance follows; any other
/// attempt folder belongs to an attempt that ended, and loses its working state like
/// `Framework::cleanup` would remove it. Folders whose supervisor still runs are left alone.
/// Returns how many were cleaned (blocking: reads every run folder once).
pub(crate) fn clean_ended_attempts(runs_dir: &Path, active: &HashSet<ExecutionId>) -> usize {
    let Ok(runs) = std::fs::read_dir(runs_dir) else {
        return 0;
    };
    let mut cleaned = 0;
    for run in runs.flatten() {
        if super::spare::is_spare(&run.file_name()) {
            continue;
        }
        let Ok(attempts) = std::fs::read_dir(run.path()) else {
            continue;
        };
        let run_id = run.file_name().to_string_lossy().into_owned();
        for attempt in attempts.flatten() {
            let Ok(number) = attempt.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let dir = attempt.path();
            let uncleaned = [JOB_FILE, WORK_DIR, OUTPUTS_DIR]
                .iter()
                .any(|name| dir.join(name).symlink_metadata().is_ok());
            let execution = ExecutionId {
                run_id: run_id.clone(),
                attempt: number,
            };
            if !uncleaned || active.contains(&execution) || live_supervisor(&dir).is_some() {
                continue;
            }
            match super::remove_working_state(&dir) {
                Ok(()) => cleaned += 1,
                Err(error) => {
                    tracing::warn!(?execution, %error, "cannot clean up an ended attempt")
                }
            }
        }
    }
    cleaned
}

/// A pidfd on `pid` if it is this folder's supervisor. The pidfd is opened *before* the check,
/// so the process it names is the one that was checked, never a later reuse of the number.
fn attach(pid: i32, attempt_dir: &Path) -> Option<Option<OwnedFd>> {
    match procs::pidfd_open(pid) {
        Ok(pidfd) => procs::is_supervisor_of(pid, attempt_dir).then_some(Some(pidfd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            procs::is_supervisor_of(pid, attempt_dir).then_some(None)
        }
        Err(_) => None,
    }
}

/// Follows a re-attached execution to its end, in place of the control pipe.
pub(crate) struct Reattached {
    pub reporter: Reporter,
    pub pid: i32,
    pub pidfd: Option<OwnedFd>,
    pub requests: mpsc::UnboundedReceiver<Request>,
    pub logs: FileLogStore,
    pub watcher: Option<LogWatcher>,
}

impl Reattached {
    pub(crate) async fn run(mut self) {
        let execution = self.reporter.execution.clone();
        let attempt_dir = self.reporter.attempt_dir.clone();
        let log_path = self
            .logs
            .log_path(&execution.run_id, execution.attempt)
            .ok();
        let exit_fd = match self.pidfd.take().map(|pidfd| {
            // SAFETY: an OwnedFd keeps its fd open and returns the same one until dropped.
            unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
        }) {
            Some(Ok(fd)) => Some(fd),
            Some(Err(e)) => {
                tracing::warn!(?execution, error = %io::Error::from(e), "cannot poll the supervisor's pidfd; checking it on a tick");
                None
            }
            None => None,
        };
        // A job's child.pid is written once the job runs, a service's service.json once the
        // supervisor is up: its signal handlers are installed by then, so signals are safe.
        let service = self.reporter.service;
        let mut replicas = ReplicaView::default();
        if service {
            replicas.refresh(&self.reporter).await;
        }
        let signalable = |replicas: &ReplicaView| {
            if service {
                replicas.seen
            } else {
                attempt_dir.join(CHILD_PID_FILE).exists()
            }
        };
        let mut started = if service {
            replicas.started
        } else {
            signalable(&replicas)
        };
        if started {
            self.reporter.emit(EventKind::Started).await;
        }
        let (mut stop_pending, mut scale_pending) = (false, false);
        let mut log = LogEnd::default();
        let mut watch: Option<Watch> = None;
        let mut folder_watch: Option<Watch> = None;
        tracing::info!(
            ?execution,
            supervisor_pid = self.pid,
            "re-attached a local execution"
        );

        loop {
            if watch.is_none() {
                watch = self.watch_log(log_path.as_deref());
            }
            if service && folder_watch.is_none() {
                folder_watch = self.watch_folder(&attempt_dir);
            }
            // The watches are in place before the files are read: no write falls between.
            if service {
                replicas.refresh(&self.reporter).await;
            }
            let now_started = if service {
                replicas.started
            } else {
                signalable(&replicas)
            };
            if !started && now_started {
                started = true;
                self.reporter.emit(EventKind::Started).await;
            }
            if signalable(&replicas) {
                if stop_pending {
                    stop_pending = false;
                    self.signal(exit_fd.as_ref(), libc::SIGTERM);
                }
                if scale_pending {
                    scale_pending = false;
                    self.signal(exit_fd.as_ref(), libc::SIGUSR1);
                }
            }
            log.update(&self.logs, &execution).await;
            if started || service {
                if let Some(end_offset) = log.unsent() {
                    self.reporter
                        .emit(EventKind::LogAppended { end_offset })
                        .await;
                }
            }
            let tick = if stop_pending || scale_pending {
                PENDING_STOP_TICK
            } else {
                TICK
            };
            tokio::select! {
                () = supervisor_exit(exit_fd.as_ref(), self.pid, &attempt_dir) => break,
                () = changed(watch.as_ref()) => {}
                () = changed(folder_watch.as_ref()) => {}
                () = tokio::time::sleep(tick) => {}
                Some(request) = self.requests.recv() => match request {
                    Request::Stop => stop_pending = true,
                    Request::Scale => scale_pending = true,
                },
            }
        }
        drop(watch);
        drop(folder_watch);
        if service {
            replicas.refresh(&self.reporter).await;
        }
        log.update(&self.logs, &execution).await;
        let unsent = log.unsent();
        self.reporter.finish(started, unsent, None).await;
    }

    fn watch_log(&self, log_path: Option<&Path>) -> Option<Watch> {
        let (watcher, path) = (self.watcher.as_ref()?, log_path?);
        match watcher.watch(path) {
            Ok(watch) => Some(watch),
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::debug!(path = %path.display(), error = %e, "cannot watch a log file; following it on a tick");
                }
                None
            }
        }
    }

    fn watch_folder(&self, dir: &Path) -> Option<Watch> {
        match self.watcher.as_ref()?.watch_renames_in(dir) {
            Ok(watch) => Some(watch),
            Err(e) => {
                tracing::debug!(path = %dir.display(), error = %e, "cannot watch an attempt folder; following its service.json on a tick");
                None
            }
        }
    }

    /// SIGTERM (stop) or SIGUSR1 (scale) to the supervisor, through its pidfd when there is
    /// one; otherwise only after checking the pid still names this attempt's supervisor.
    fn signal(&self, exit_fd: Option<&AsyncFd<OwnedFd>>, signal: i32) {
        let execution = &self.reporter.execution;
        let result = match exit_fd {
            Some(fd) => procs::pidfd_send_signal(fd.get_ref().as_fd(), signal),
            None if procs::is_supervisor_of(self.pid, &self.reporter.attempt_dir) => {
                // SAFETY: kill takes a pid and a signal number; no pointers.
                if unsafe { libc::kill(self.pid, signal) } == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            }
            None => Ok(()),
        };
        match result {
            Ok(()) => tracing::info!(
                ?execution,
                pid = self.pid,
                signal,
                "signalled the re-attached supervisor (SIGTERM: stop, SIGUSR1: scale)"
            ),
            // It has just exited: its exit is about to be reported.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => {
                tracing::warn!(?execution, pid = self.pid, error = %e, "cannot signal the supervisor")
            }
        }
    }
}

/// Resolves when the supervisor has exited.
async fn supervisor_exit(exit_fd: Option<&AsyncFd<OwnedFd>>, pid: i32, attempt_dir: &Path) {
    if let Some(fd) = exit_fd {
        // A pidfd polls readable once its process has exited; it stays readable.
        if fd.readable().await.is_ok() {
            return;
        }
    }
    while procs::is_supervisor_of(pid, attempt_dir) {
        tokio::time::sleep(TICK).await;
    }
}

async fn changed(watch: Option<&Watch>) {
    match watch {
        Some(watch) => watch.changed().await,
        None => std::future::pending().await,
    }
}

/// How far the log of a re-attached execution goes, and how far was announced.
#[derive(Default)]
struct LogEnd {
    end: u64,
    sent: Option<u64>,
}

impl LogEnd {
    /// Walks the records appended since the last look (only whole records count: the
    /// supervisor may be in the middle of writing one).
    async fn update(&mut self, logs: &FileLogStore, execution: &crate::ExecutionId) {
        let (logs, run_id, attempt, from) = (
            logs.clone(),
            execution.run_id.clone(),
            execution.attempt,
            self.end,
        );
        let walked = tokio::task::spawn_blocking(move || {
            let path = logs.log_path(&run_id, attempt).ok()?;
            let len = std::fs::metadata(path).ok()?.len();
            let mut end = from;
            while len > end {
                let chunk = logs.read(&run_id, attempt, end, LOG_READ).ok()?;
                if chunk.records.is_empty() {
                    break;
                }
                end = chunk.next_offset;
            }
            Some(end)
        })
        .await;
        if let Ok(Some(end)) = walked {
            self.end = self.end.max(end);
        }
    }

    /// The end, if it moved since it was last announced.
    fn unsent(&mut self) -> Option<u64> {
        if self.end > 0 && self.sent.is_none_or(|sent| self.end > sent) {
            self.sent = Some(self.end);
            return Some(self.end);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::clean_ended_attempts;
    use crate::ExecutionId;
    use std::collections::HashSet;
    use std::path::Path;

    fn attempt(runs: &Path, run: &str, attempt: u32) -> std::path::PathBuf {
        let dir = runs.join(run).join(attempt.to_string());
        std::fs::create_dir_all(dir.join("work")).unwrap();
        std::fs::create_dir_all(dir.join("outputs")).unwrap();
        std::fs::write(dir.join("job.json"), "{}").unwrap();
        std::fs::write(dir.join("exit.json"), "{}").unwrap();
        dir
    }

    #[test]
    fn ended_attempts_lose_their_working_state_and_active_ones_keep_it() {
        let runs = tempfile::tempdir().unwrap();
        let ended = attempt(runs.path(), "a", 1);
        let active = attempt(runs.path(), "b", 2);
        let known: HashSet<ExecutionId> = [ExecutionId {
            run_id: "b".into(),
            attempt: 2,
        }]
        .into();
        assert_eq!(clean_ended_attempts(runs.path(), &known), 1);
        for name in ["work", "outputs", "job.json"] {
            assert!(!ended.join(name).exists(), "{name}");
            assert!(active.join(name).exists(), "{name}");
        }
        // What post-mortems read stays; a second sweep finds nothing to do.
        assert!(ended.join("exit.json").exists());
        assert_eq!(clean_ended_attempts(runs.path(), &known), 0);
    }
}
