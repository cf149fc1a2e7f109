//! `runplane supervise <attempt dir>`: the process that owns one local execution.
//!
//! Why a separate process: the job must outlive a server restart and must never see a Ctrl-C
//! meant for the server, its output must be captured even when nobody listens, and its whole
//! process tree (including double-forked daemons in their own sessions) must be found and
//! killed at the end. The supervisor is started in its own process group by the framework, makes
//! itself a child subreaper so every orphan of the job re-parents to it, and records the
//! outcome in `exit.json` for whoever reads it — the live server or a later one.
//!
//! A service (`job.json` has `service`) runs in service mode instead (`service.rs`): the same
//! process keeps its replicas up until it is stopped or the service fails.
//!
//! It starts fast and stays small: std threads and blocking IO only, no async runtime.
//! Diagnostics go to its stderr (the attempt's `supervisor.err`) with `eprintln!` rather than
//! `tracing`, because no subscriber is installed in this process and the file is the point.

use super::capture::{spawn_reader, ControlChannel, LogSink};
use super::procs;
use super::protocol::{ControlMessage, ExitFile, JobFile, CHILD_PID_FILE, EXIT_FILE, JOB_FILE};
use super::standby::{await_assignment, recorded, ACK_PATIENCE, STANDBY_ARG};
use crate::files::{describe, make_durable, write_atomically};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use runplane_logstore::file::FileLogStore;
use runplane_logstore::Stream;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

/// How long to keep killing leftover descendants before giving up (a process stuck in
/// uninterruptible sleep cannot die until its IO finishes).
const KILL_PATIENCE: Duration = Duration::from_secs(10);
/// How long to wait for the output pipes to close once every descendant is gone; a process
/// outside the tree could still hold them (fd passing), and must not hold up `exit.json`.
const DRAIN_PATIENCE: Duration = Duration::from_secs(5);
/// Re-check for exited children this often even without SIGCHLD, as a safety net.
pub(super) const POLL: Duration = Duration::from_millis(500);

/// What wakes the supervisor's main thread.
pub(super) enum Wake {
    /// A signal arrived (SIGTERM/SIGINT: stop; SIGUSR1: a service's `desired.json` changed;
    /// SIGCHLD: something to reap).
    Signal(i32),
    /// A service replica answered its readiness probe; `pid` says which process of it did.
    Ready { index: u32, pid: i32 },
}

/// Runs the job described by `<attempt_dir>/job.json` to its end; the body of
/// `runplane supervise <attempt_dir>`. Returns the supervisor's exit code: 0 whenever
/// `exit.json` was written (even when the job failed or could not start), non-zero otherwise.
///
/// `runplane supervise -` is a standby (see `standby.rs`): it first waits for the folder on
/// its stdin, and exits with 0 if none comes.
pub fn supervise_main(attempt_dir: &Path) -> i32 {
    // A dead server closes the control pipe; that must not kill the job's supervisor.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let assignment = if attempt_dir == Path::new(STANDBY_ARG) {
        let Some(assignment) = await_assignment() else {
            return 0;
        };
        Some(assignment)
    } else {
        None
    };
    let (attempt_dir, acks) = match &assignment {
        Some(assigned) => (assigned.attempt_dir.as_path(), assigned.acks.as_ref()),
        None => (attempt_dir, None),
    };
    match Supervisor::start(attempt_dir) {
        Ok(outcome) => finish(attempt_dir, &outcome, acks),
        Err(error) => {
            eprintln!("runplane supervise: {error}");
            let outcome = ExitFile {
                error: Some(error),
                ..ExitFile::default()
            };
            finish(attempt_dir, &outcome, acks)
        }
    }
}

/// The job's process as `job.json` describes it — program, argv, working directory, exactly
/// its environment plus `RUNPLANE_OUTPUTS`, no stdin — for a job or one service replica.
pub(super) fn process_command(job: &JobFile) -> Result<Command, String> {
    let (Some(argv0), Some(args)) = (job.argv.first(), job.argv.get(1..)) else {
        return Err("the job has an empty command".into());
    };
    let mut command = Command::new(&job.program);
    command
        .arg0(argv0)
        .args(args)
        .current_dir(&job.workdir)
        .env_clear()
        .envs(&job.env)
        .env("RUNPLANE_OUTPUTS", &job.outputs_dir)
        .stdin(Stdio::null());
    Ok(command)
}

/// Writes `exit.json`, tells the server (by closing the control channel: it reads the file
/// at that end), then makes the file outlive a machine crash unless the server says it has
/// recorded the outcome itself (`acks`, see `standby.rs`): then the store holds the outcome
/// and two fsyncs are saved, which on a disk are most of a step's end.
fn finish(attempt_dir: &Path, outcome: &ExitFile, acks: Option<&fs::File>) -> i32 {
    let written = serde_json::to_vec_pretty(outcome)
        .map_err(|e| e.to_string())
        .and_then(|json| {
            write_atomically(attempt_dir, EXIT_FILE, &json, 0o644).map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        eprintln!("runplane supervise: cannot write {EXIT_FILE}: {e}");
        return 1;
    }
    // The server reads exit.json now rather than after this process is torn down and reaped.
    // SAFETY: closing fd 1 has no memory effects; nothing writes to it after this.
    unsafe {
        libc::close(1);
    }
    if acks.is_some_and(|acks| recorded(acks, ACK_PATIENCE)) {
        return 0;
    }
    match make_durable(attempt_dir, EXIT_FILE) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!(
                "runplane supervise: cannot make {EXIT_FILE} durable: {}",
                describe(&e)
            );
            1
        }
    }
}

pub(super) struct Supervisor {
    pub(super) job: JobFile,
    pub(super) sink: Arc<LogSink>,
    pub(super) wakes: mpsc::Receiver<Wake>,
    /// For threads that wake the main thread (readiness probes).
    pub(super) waker: mpsc::Sender<Wake>,
    pub(super) me: Pid,
}

impl Supervisor {
    /// Everything up to the job's end. `Err` means the job never ran (the message says why);
    /// `Ok` carries how it ended.
    fn start(attempt_dir: &Path) -> Result<ExitFile, String> {
        // Signals are routed first: a stop sent right after the framework spawned us must not
        // kill us with the default SIGTERM action, and the child's exit must not be missed.
        // SIGUSR1 (scale a service) is caught in job mode too: a stray one must not kill us.
        let mut registered = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGUSR1])
            .map_err(|e| format!("cannot install signal handlers: {}", describe(&e)))?;
        let (waker, wakes) = mpsc::channel();
        let signal_tx = waker.clone();
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in registered.forever() {
                    if signal_tx.send(Wake::Signal(signal)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| format!("cannot start the signal thread: {}", describe(&e)))?;

        let job_path = attempt_dir.join(JOB_FILE);
        let text = fs::read(&job_path)
            .map_err(|e| format!("cannot read {}: {}", job_path.display(), describe(&e)))?;
        let job: JobFile = serde_json::from_slice(&text)
            .map_err(|e| format!("cannot parse {}: {e}", job_path.display()))?;

        // Orphans of the job (a daemon that double-forked into its own session) re-parent to
        // us instead of init, so they can be found and killed when the job ends.
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes no pointers.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            eprintln!(
                "runplane supervise: cannot become a child subreaper ({}); daemons the job starts may escape",
                describe(&std::io::Error::last_os_error())
            );
        }

        let writer = FileLogStore::new(job.log_root.clone())
            .open_writer(&job.run_id, job.attempt)
            .map_err(|e| format!("cannot open the log: {e}"))?;
        let sink = Arc::new(
            LogSink::new(writer, ControlChannel::new(), job.log_limit_bytes).redacting(&job.redact),
        );

        let supervisor = Supervisor {
            job,
            sink,
            wakes,
            waker,
            me: Pid::this(),
        };
        let outcome = supervisor.run(attempt_dir);
        supervisor.sink.finish();
        outcome
    }

    fn run(&self, attempt_dir: &Path) -> Result<ExitFile, String> {
        if let Some(service) = &self.job.service {
            return super::service::run(self, attempt_dir, service);
        }
        let job = &self.job;
        let mut command = process_command(job)?;
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a stop signals the job's group without signalling us.
            .process_group(0);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                // The framework checked the program and its interpreter before starting us; this
                // is the fallback for what changed since (or what only exec can tell).
                let why = match super::prepare::check_interpreter(&job.program) {
                    Err(interpreter) if e.kind() == std::io::ErrorKind::NotFound => interpreter,
                    _ => describe(&e),
                };
                let message = format!("cannot start {}: {why}", job.program.display());
                self.sink.system(&message);
                return Err(message);
            }
        };
        let child_pid = Pid::from_raw(child.id() as i32);
        // Started goes out before any reader thread can announce log offsets.
        self.sink.control().send_patiently(
            &ControlMessage::Started {
                pid: child_pid.as_raw() as u32,
            },
            POLL,
        );

        let (done_tx, done) = mpsc::channel();
        let mut readers = 0;
        if let Some(stdout) = child.stdout.take() {
            match spawn_reader(stdout, Stream::Stdout, self.sink.clone(), done_tx.clone()) {
                Ok(()) => readers += 1,
                Err(e) => eprintln!(
                    "runplane supervise: cannot start the stdout reader: {}",
                    describe(&e)
                ),
            }
        }
        if let Some(stderr) = child.stderr.take() {
            match spawn_reader(stderr, Stream::Stderr, self.sink.clone(), done_tx.clone()) {
                Ok(()) => readers += 1,
                Err(e) => eprintln!(
                    "runplane supervise: cannot start the stderr reader: {}",
                    describe(&e)
                ),
            }
        }
        drop(done_tx);
        // For a later server that has to find the job without us (pid = process group id).
        if let Err(e) = write_atomically(
            attempt_dir,
            CHILD_PID_FILE,
            format!("{child_pid}\n").as_bytes(),
            0o644,
        ) {
            eprintln!(
                "runplane supervise: cannot write {CHILD_PID_FILE}: {}",
                describe(&e)
            );
        }
        // The child is reaped by our own waitpid(-1) loop below (we are a subreaper and reap
        // everything); std's handle must not try to wait for it as well.
        drop(child);

        let (status, stopped) = self.wait_for_main(child_pid);
        self.kill_leftovers();
        self.drain(&done, readers);

        let (exit_code, signal) = match status {
            WaitStatus::Exited(_, code) => (Some(code), None),
            WaitStatus::Signaled(_, signal, _) => (None, Some(signal as i32)),
            other => {
                eprintln!("runplane supervise: unexpected wait status {other:?}");
                (None, None)
            }
        };
        // A log that could not be written ends the run as an error, not as the job's outcome:
        // part of its output is gone.
        let error = self
            .sink
            .failure()
            .map(|why| format!("cannot write the log: {why}; the output is incomplete"));
        Ok(ExitFile {
            exit_code,
            signal,
            stopped,
            error,
            failure: None,
        })
    }

    /// Reaps children until the job's main process ends, handling stop requests meanwhile.
    /// Returns its wait status and whether a stop was requested.
    fn wait_for_main(&self, main: Pid) -> (WaitStatus, bool) {
        let mut stopping = false;
        let mut kill_at: Option<Instant> = None;
        loop {
            if let Some(status) = self.reap(Some(main)) {
                return (status, stopping);
            }
            let timeout = kill_at.map_or(POLL, |at| {
                at.saturating_duration_since(Instant::now()).min(POLL)
            });
            match self.wakes.recv_timeout(timeout) {
                Ok(Wake::Signal(SIGTERM | SIGINT)) if !stopping => {
                    stopping = true;
                    let grace = self.job.stop_grace_seconds;
                    self.sink.system(&format!(
                        "stop requested: sending SIGTERM, SIGKILL in {grace}s"
                    ));
                    self.signal_tree(main, Signal::SIGTERM);
                    kill_at = Some(Instant::now() + Duration::from_secs(grace));
                }
                // A repeated stop changes nothing; SIGHUP (no terminal to hang up) is ignored.
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // The signal thread is gone: fall back to polling.
                    thread::sleep(POLL.min(timeout));
                }
            }
            if !stopping {
                if let Some(why) = self.sink.failure() {
                    // The job's output can no longer be kept: stop it as a stop request would.
                    stopping = true;
                    let grace = self.job.stop_grace_seconds;
                    eprintln!(
                        "runplane supervise: stopping the job, its log cannot be written ({why}): SIGTERM, SIGKILL in {grace}s"
                    );
                    self.signal_tree(main, Signal::SIGTERM);
                    kill_at = Some(Instant::now() + Duration::from_secs(grace));
                }
            }
            if kill_at.is_some_and(|at| Instant::now() >= at) {
                kill_at = None;
                self.sink.system("grace period over: sending SIGKILL");
                self.signal_tree(main, Signal::SIGKILL);
            }
        }
    }

    /// Reaps every exited child without blocking; returns the status of `main` if it was
    /// among them.
    fn reap(&self, main: Option<Pid>) -> Option<WaitStatus> {
        self.reap_all()
            .into_iter()
            .find(|status| status.pid().is_some() && status.pid() == main)
    }

    /// Reaps every exited child without blocking (we are a subreaper: orphans too) and returns
    /// their statuses.
    pub(super) fn reap_all(&self) -> Vec<WaitStatus> {
        let mut reaped = Vec::new();
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return reaped,
                Ok(status) => reaped.push(status),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    eprintln!("runplane supervise: waitpid: {e}");
                    return reaped;
                }
            }
        }
    }

    /// Whether no child of ours is left, running or exited: as a subreaper we inherit every
    /// orphan of the job, so no descendant is left either, and the scan of /proc (most of the
    /// time between a job's exit and its `exit.json`) is not needed.
    fn childless(&self) -> bool {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Err(nix::errno::Errno::ECHILD) => return true,
                Err(nix::errno::Errno::EINTR) => {}
                // One more exited meanwhile and is now reaped: look again.
                Ok(status) if status != WaitStatus::StillAlive => {}
                _ => return false,
            }
        }
    }

    /// Signals the job's process group and every other descendant (those that left the group
    /// or the session).
    fn signal_tree(&self, main: Pid, signal: Signal) {
        let _ = killpg(main, signal);
        for process in procs::descendants(self.me.as_raw()) {
            if !process.zombie {
                let _ = kill(Pid::from_raw(process.pid), signal);
            }
        }
    }

    /// Once the main process has ended, nothing it started may survive it: SIGKILL every
    /// descendant, reap, and repeat until none is left (new orphans keep re-parenting to us
    /// while their parents die).
    pub(super) fn kill_leftovers(&self) {
        let deadline = Instant::now() + KILL_PATIENCE;
        let mut killed = std::collections::BTreeSet::new();
        loop {
            self.reap(None);
            if self.childless() {
                break;
            }
            let remaining = procs::descendants(self.me.as_raw());
            if remaining.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let pids: Vec<i32> = remaining.iter().map(|p| p.pid).collect();
                self.sink.system(&format!(
                    "processes {pids:?} survived SIGKILL; giving up on them"
                ));
                break;
            }
            for process in &remaining {
                if !process.zombie {
                    killed.insert(process.pid);
                    let _ = kill(Pid::from_raw(process.pid), Signal::SIGKILL);
                }
            }
            // Woken early by SIGCHLD when one of them dies.
            let _ = self.wakes.recv_timeout(Duration::from_millis(20));
        }
        if !killed.is_empty() {
            let pids: Vec<i32> = killed.into_iter().collect();
            self.sink.system(&format!(
                "killed processes left behind by the job: {pids:?}"
            ));
        }
    }

    /// Waits for the reader threads to hit end of file on the job's pipes.
    pub(super) fn drain(&self, done: &mpsc::Receiver<Stream>, readers: usize) {
        let deadline = Instant::now() + DRAIN_PATIENCE;
        for _ in 0..readers {
            let left = deadline.saturating_duration_since(Instant::now());
            if done.recv_timeout(left).is_err() {
                self.sink.system(
                    "the job's output is still held open by another process; stopped capturing it",
                );
                return;
            }
        }
    }
}
