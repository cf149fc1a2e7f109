//! The framework conformance suite: the behaviour every [`Framework`] must have (ARCHITECTURE.md,
//! the trait's event contract), written once and run against each framework.
//!
//! Each scenario is a `pub async fn <P: Platform>() -> TestResult` that gets a fresh
//! [`Harness`]: a framework instance on empty folders, its event channel, its log store, and a
//! way to "restart the server" (`down`, then `up` on the same folders). A [`Platform`] is what
//! differs between frameworks: how an instance is made and how the test looks, from outside
//! the framework, at what still runs and what working state is left. Jobs are expressed once
//! ([`shell`], [`python`]): the same argv runs on the host (`local`, which ignores `image`) and
//! in the named image (`engine`).
//!
//! [`conformance_cases!`] lists every scenario for one platform; each test binary
//! (`conformance_local.rs`, `conformance_engine.rs`) runs that list with
//! [`run_suite`](crate::support::run_suite), naming its known failures.
#![allow(dead_code)]

mod cleanup;
mod exits;
mod limits;
mod logs;
mod recovery;
mod start;
mod stop;
mod values;

pub use cleanup::*;
pub use exits::*;
pub use limits::*;
pub use logs::*;
pub use recovery::*;
pub use start::*;
pub use stop::*;
pub use values::*;

use crate::support::{marked_processes, unique_marker, TestResult};
use runplane_domain::{ExitOutcome, Job, Runnable};
use runplane_frameworks::{EventKind, EventSender, ExecutionId, Framework, FrameworkEvent};
use runplane_logstore::file::FileLogStore;
use runplane_logstore::{LogRecord, LogStore, Stream};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every scenario, as `(name, test)` pairs for `run_suite`, instantiated for one platform.
#[macro_export]
macro_rules! conformance_cases {
    ($platform:ty) => {
        $crate::conformance_cases!(@cases $platform;
            exit_codes_come_back_in_contract_order,
            log_appended_announces_the_whole_log,
            a_job_killed_by_a_signal_reports_the_signal,
            stdout_and_stderr_are_logged_by_stream_in_order,
            a_burst_of_lines_is_logged_complete,
            files_env_and_outputs_reach_and_leave_the_job,
            secrets_are_usable_but_redacted_from_the_log,
            stop_reaches_a_job_that_handles_sigterm,
            a_job_ignoring_sigterm_is_killed_after_the_grace,
            background_processes_do_not_outlive_the_job,
            a_missing_program_fails_to_start_and_leaves_nothing,
            recover_follows_a_running_job_again,
            recover_reports_a_job_that_ended_while_down,
            recover_reports_an_unknown_execution_as_lost,
            stop_reaches_a_recovered_job,
            cleanup_removes_working_state_and_keeps_the_log,
            cleanup_refuses_a_running_execution,
            output_past_the_log_limit_is_discarded_with_one_marker
        )
    };
    (@cases $platform:ty; $($case:ident),+ $(,)?) => {
        vec![$((
            stringify!($case),
            (|| $crate::support::run(|| $crate::conformance::$case::<$platform>()))
                as $crate::support::TestFn,
        )),+]
    };
}

/// The busybox image shell jobs run in on container frameworks (it has `/bin/sh`).
pub const SHELL_IMAGE: &str = "localhost/runplane-busybox:latest";
/// The image Python jobs run in on container frameworks (it has `/usr/bin/python3`).
pub const PYTHON_IMAGE: &str = "localhost/runplane-python:latest";
/// Generous: CI machines have two cores and other work; containers start in ~0.3 s.
pub const PATIENCE: Duration = Duration::from_secs(60);
/// What "promptly" means in a scenario: far above any normal latency, far below a hang.
pub const PROMPTLY: Duration = Duration::from_secs(20);
/// An environment variable of the test process (the "server"), set by each binary's `main`
/// before any thread exists: no job may inherit it.
pub const SERVER_ONLY_VAR: &str = "RUNPLANE_TEST_SERVER_SECRET";

/// What differs between frameworks: making an instance, and looking at executions from
/// outside it (the engine's containers, the local attempt folders).
#[allow(async_fn_in_trait)]
pub trait Platform: Sized {
    type Framework: Framework;
    /// A new framework instance on `runs`/`logs`, reporting on `events`.
    async fn framework(
        runs: &Path,
        logs: &Path,
        events: EventSender,
    ) -> Result<Self::Framework, String>;
    /// What of the execution still runs, besides processes carrying its marker (which the
    /// harness finds itself): e.g. its container, when running.
    async fn still_running(runs: &Path, execution: &ExecutionId) -> Result<Vec<String>, String>;
    /// Whether the execution's job has ended, seen without any framework instance.
    async fn has_ended(runs: &Path, execution: &ExecutionId) -> Result<bool, String>;
    /// The working state the execution leaves until `cleanup` (folders, containers).
    async fn working_state(runs: &Path, execution: &ExecutionId) -> Result<Vec<String>, String>;
    /// Removes, when the harness goes away, what its executions left outside its temporary
    /// folder (containers), whether or not the scenario got to clean up. Blocking.
    fn discard(runs: &Path);
}

/// One framework under test, with everything a scenario looks at.
pub struct Harness<P: Platform> {
    _tmp: tempfile::TempDir,
    pub runs: PathBuf,
    pub logs: FileLogStore,
    framework: Option<P::Framework>,
    events: runplane_frameworks::EventReceiver,
    /// The unique marker every job of this harness carries in its environment.
    pub marker: String,
}

impl<P: Platform> Drop for Harness<P> {
    fn drop(&mut self) {
        self.framework = None;
        P::discard(&self.runs);
    }
}

impl<P: Platform> Harness<P> {
    /// A fresh framework on fresh, empty folders.
    pub async fn new(name: &str) -> Result<Self, String> {
        let tmp = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let runs = tmp.path().join("runs");
        let logs_dir = tmp.path().join("logs");
        let (tx, events) =
            runplane_frameworks::events::channel(runplane_frameworks::events::DEFAULT_CAPACITY);
        let framework = P::framework(&runs, &logs_dir, tx).await?;
        Ok(Harness {
            _tmp: tmp,
            runs,
            logs: FileLogStore::new(logs_dir),
            framework: Some(framework),
            events,
            marker: unique_marker(name),
        })
    }

    pub fn framework(&self) -> Result<&P::Framework, String> {
        self.framework
            .as_ref()
            .ok_or_else(|| "the framework is down".to_string())
    }

    /// The server dies: the framework instance goes away; what it started goes on.
    pub fn down(&mut self) {
        self.framework = None;
    }

    /// A new server process: another framework instance on the same folders, with a new
    /// event channel (events of the old one are gone with it).
    pub async fn up(&mut self) -> Result<(), String> {
        self.down();
        let (tx, events) =
            runplane_frameworks::events::channel(runplane_frameworks::events::DEFAULT_CAPACITY);
        self.framework = Some(P::framework(&self.runs, self.logs.root(), tx).await?);
        self.events = events;
        Ok(())
    }

    /// `job` with this harness's marker, so that its processes can be found.
    pub fn marked(&self, mut job: Job) -> Job {
        job.env
            .insert("RUNPLANE_TEST_MARKER".into(), self.marker.clone());
        job
    }

    pub async fn start(&self, execution: &ExecutionId, job: Job) -> Result<(), String> {
        self.framework()?
            .start(execution.clone(), Runnable::Job(self.marked(job)))
            .await
            .map_err(|e| format!("start {execution:?}: {e}"))
    }

    pub async fn stop(&self, execution: &ExecutionId) -> Result<(), String> {
        self.framework()?
            .stop(execution)
            .await
            .map_err(|e| format!("stop {execution:?}: {e}"))
    }

    pub async fn recover(&self, executions: &[ExecutionId]) -> Result<(), String> {
        self.framework()?
            .recover(executions.to_vec())
            .await
            .map_err(|e| format!("recover: {e}"))
    }

    pub async fn cleanup(&self, execution: &ExecutionId) -> Result<(), String> {
        self.framework()?
            .cleanup(execution)
            .await
            .map_err(|e| format!("cleanup {execution:?}: {e}"))
    }

    pub async fn next_event(&mut self) -> Result<FrameworkEvent, String> {
        match tokio::time::timeout(PATIENCE, self.events.recv()).await {
            Ok(Some(event)) => Ok(event),
            Ok(None) => Err("event channel closed".into()),
            Err(_) => Err("timed out waiting for an event".into()),
        }
    }

    /// Whether an event is waiting now (after the caller gave the framework time to send one).
    pub fn pending_event(&mut self) -> Option<FrameworkEvent> {
        self.events.try_recv().ok()
    }

    /// The events of `execution` up to and including its `Exited`/`Lost`; an event of
    /// another execution is a failure (scenarios run one execution at a time).
    pub async fn until_end(&mut self, execution: &ExecutionId) -> Result<Vec<EventKind>, String> {
        let mut kinds = Vec::new();
        loop {
            let event = self
                .next_event()
                .await
                .map_err(|e| format!("{e}; events of {execution:?} so far: {kinds:?}"))?;
            if &event.execution != execution {
                return Err(format!("event of another execution: {event:?}"));
            }
            let end = matches!(
                event.kind,
                EventKind::Exited(_) | EventKind::Lost { .. } | EventKind::NeverStarted { .. }
            );
            kinds.push(event.kind);
            if end {
                return Ok(kinds);
            }
        }
    }

    /// Waits for `Started` (only `LogAppended` may come before it: a recovered execution's
    /// earlier log is announced in any order with it).
    pub async fn until_started(&mut self, execution: &ExecutionId) -> Result<(), String> {
        loop {
            let event = self.next_event().await?;
            if &event.execution != execution {
                return Err(format!("event of another execution: {event:?}"));
            }
            match event.kind {
                EventKind::Started => return Ok(()),
                EventKind::LogAppended { .. } => {}
                other => return Err(format!("expected Started, got {other:?}")),
            }
        }
    }

    /// Starts `job` and returns all its events up to its end, checked against the contract.
    pub async fn run_to_end(
        &mut self,
        execution: &ExecutionId,
        job: Job,
    ) -> Result<ExitOutcome, String> {
        self.start(execution, job).await?;
        let kinds = self.until_end(execution).await?;
        self.check_contract(execution, &kinds)
    }

    /// `Started`, then only `LogAppended` with growing offsets within the log, then `Exited`:
    /// the order the trait promises for a started execution. That the last `LogAppended` is
    /// the log's very end is `log_appended_announces_the_whole_log`'s to check, so that a
    /// framework failing that alone still runs every other scenario.
    pub fn check_contract(
        &self,
        execution: &ExecutionId,
        kinds: &[EventKind],
    ) -> Result<ExitOutcome, String> {
        ensure!(
            kinds.first() == Some(&EventKind::Started),
            "Started first: {kinds:?}"
        );
        let outcome = exited(kinds)?.clone();
        let middle = &kinds[1..kinds.len() - 1];
        let mut offsets = Vec::new();
        for kind in middle {
            match kind {
                EventKind::LogAppended { end_offset } => offsets.push(*end_offset),
                other => return Err(format!("only LogAppended in between, got {other:?}")),
            }
        }
        ensure!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "LogAppended offsets grow: {offsets:?}"
        );
        let end = self.log_end(execution)?;
        ensure!(
            offsets.last().copied().unwrap_or(0) <= end,
            "LogAppended offsets ({offsets:?}) are within the log (its end: {end})"
        );
        Ok(outcome)
    }

    pub fn log(&self, execution: &ExecutionId) -> Result<Vec<LogRecord>, String> {
        let mut records = Vec::new();
        let mut offset = 0;
        loop {
            let chunk = self
                .logs
                .read(&execution.run_id, execution.attempt, offset, 1 << 20)
                .map_err(|e| format!("reading the log: {e}"))?;
            if chunk.records.is_empty() {
                return Ok(records);
            }
            offset = chunk.next_offset;
            records.extend(chunk.records);
        }
    }

    pub fn log_end(&self, execution: &ExecutionId) -> Result<u64, String> {
        let mut offset = 0;
        loop {
            let chunk = self
                .logs
                .read(&execution.run_id, execution.attempt, offset, 1 << 20)
                .map_err(|e| format!("reading the log: {e}"))?;
            if chunk.records.is_empty() {
                return Ok(offset);
            }
            offset = chunk.next_offset;
        }
    }

    pub fn lines(&self, execution: &ExecutionId, stream: Stream) -> Result<Vec<String>, String> {
        Ok(self
            .log(execution)?
            .into_iter()
            .filter(|r| r.stream == stream)
            .map(|r| String::from_utf8_lossy(&r.data).into_owned())
            .collect())
    }

    /// Waits until the job's stdout holds `line`: it got that far.
    pub async fn until_logged(&self, execution: &ExecutionId, line: &str) -> Result<(), String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self
                .lines(execution, Stream::Stdout)?
                .iter()
                .any(|l| l == line)
            {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "timed out waiting for {line:?} in the log of {execution:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What of this harness's jobs still runs: processes carrying the marker, and whatever
    /// the platform sees of `execution`.
    pub async fn still_running(&self, execution: &ExecutionId) -> Result<Vec<String>, String> {
        let mut running: Vec<String> = marked_processes(&self.marker)
            .into_iter()
            .map(|pid| format!("process {pid}"))
            .collect();
        running.extend(P::still_running(&self.runs, execution).await?);
        Ok(running)
    }

    /// Waits (up to PROMPTLY) until nothing of `execution` runs any more.
    pub async fn until_nothing_runs(&self, execution: &ExecutionId) -> Result<(), String> {
        let deadline = Instant::now() + PROMPTLY;
        loop {
            let running = self.still_running(execution).await?;
            if running.is_empty() {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "still running: {running:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn working_state(&self, execution: &ExecutionId) -> Result<Vec<String>, String> {
        P::working_state(&self.runs, execution).await
    }

    /// The host path of the job's working directory (`<runs>/<run>/<attempt>/work` on both
    /// frameworks; the engine mounts it as the container's).
    pub fn work_dir(&self, execution: &ExecutionId) -> PathBuf {
        self.runs
            .join(&execution.run_id)
            .join(execution.attempt.to_string())
            .join("work")
    }

    /// Waits, without any framework instance, until the execution's job has ended.
    pub async fn until_ended_unwatched(&self, execution: &ExecutionId) -> Result<(), String> {
        let deadline = Instant::now() + PATIENCE;
        while !P::has_ended(&self.runs, execution).await? {
            ensure!(Instant::now() < deadline, "{execution:?} did not end");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

pub fn exec(run_id: &str) -> ExecutionId {
    ExecutionId {
        run_id: run_id.into(),
        attempt: 1,
    }
}

/// `/bin/sh -c script`, in the busybox image on container frameworks.
pub fn shell(script: &str) -> Job {
    Job {
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        stop_grace_seconds: 5,
        image: Some(SHELL_IMAGE.into()),
        ..Job::default()
    }
}

/// `/usr/bin/python3 -c code`, in the Python image on container frameworks.
pub fn python(code: &str) -> Job {
    Job {
        command: vec!["/usr/bin/python3".into(), "-c".into(), code.into()],
        env: BTreeMap::new(),
        stop_grace_seconds: 5,
        image: Some(PYTHON_IMAGE.into()),
        ..Job::default()
    }
}

/// A shell loop that waits for the file `gate` in the working directory, bounded (60 s) so
/// that a failing scenario leaves nothing running for long.
pub fn wait_for_gate(gate: &str) -> String {
    format!("i=0; while [ ! -e {gate} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done")
}

pub fn exited(kinds: &[EventKind]) -> Result<&ExitOutcome, String> {
    match kinds.last() {
        Some(EventKind::Exited(outcome)) => Ok(outcome),
        other => Err(format!(
            "expected Exited last, got {other:?} (all: {kinds:?})"
        )),
    }
}

pub fn open_gate(dir: &Path, gate: &str) -> TestResult {
    std::fs::write(dir.join(gate), b"").map_err(|e| format!("opening the gate: {e}"))
}
