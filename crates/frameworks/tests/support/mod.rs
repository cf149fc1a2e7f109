//! What the end-to-end test binaries of the local framework share: each has its own `main`
//! (`harness = false`) because it doubles as the supervisor, a small libtest-like runner, and a
//! harness around a `LocalFramework` with real supervisors.
#![allow(dead_code)]

use runplane_domain::Job;
use runplane_frameworks::local::{supervise_main, LocalFramework, LocalOptions};
use runplane_frameworks::{EventKind, ExecutionId, FrameworkEvent};
use runplane_logstore::file::FileLogStore;
use runplane_logstore::{LogRecord, LogStore, Stream};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The framework under test starts `<this binary> supervise <attempt dir>`, exactly as the
/// server starts `runplane supervise <attempt dir>`: this is that supervisor.
pub fn supervise_if_asked() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("supervise") {
        let code = match args.get(2) {
            Some(dir) => supervise_main(Path::new(dir)),
            None => 2,
        };
        std::process::exit(code);
    }
}

pub type TestResult = Result<(), String>;
pub type TestFn = fn() -> TestResult;

/// Generous: CI machines have two cores and other work.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Runs an async test body on a fresh multi-thread runtime.
pub fn run<F: Future<Output = TestResult>>(body: impl FnOnce() -> F) -> TestResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(body())
}

#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!("{}:{}: {}", file!(), line!(), format!($($msg)+)));
        }
    };
}

pub struct Harness {
    pub _tmp: tempfile::TempDir,
    pub framework: LocalFramework,
    pub events: runplane_frameworks::EventReceiver,
    pub logs: FileLogStore,
    pub runs_dir: PathBuf,
}

pub fn harness() -> Result<Harness, String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let runs_dir = tmp.path().join("runs");
    let logs_dir = tmp.path().join("logs");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (tx, events) =
        runplane_frameworks::events::channel(runplane_frameworks::events::DEFAULT_CAPACITY);
    let options = LocalOptions {
        runs_dir: runs_dir.clone(),
        logs_dir: logs_dir.clone(),
        supervisor: vec![exe.to_string_lossy().into_owned(), "supervise".into()],
        shared_runs_dir: false,
    };
    Ok(Harness {
        _tmp: tmp,
        framework: LocalFramework::new(options, tx),
        events,
        logs: FileLogStore::new(logs_dir),
        runs_dir,
    })
}

/// Another framework instance on the same folders: a server started after the first one died.
pub fn reopen(h: &Harness) -> Result<(LocalFramework, runplane_frameworks::EventReceiver), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (tx, events) =
        runplane_frameworks::events::channel(runplane_frameworks::events::DEFAULT_CAPACITY);
    let options = LocalOptions {
        runs_dir: h.runs_dir.clone(),
        logs_dir: h.logs.root().to_path_buf(),
        supervisor: vec![exe.to_string_lossy().into_owned(), "supervise".into()],
        shared_runs_dir: false,
    };
    Ok((LocalFramework::new(options, tx), events))
}

pub fn exec(run_id: &str) -> ExecutionId {
    ExecutionId {
        run_id: run_id.into(),
        attempt: 1,
    }
}

pub fn job(command: &[&str]) -> Job {
    Job {
        command: command.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        files: Vec::new(),
        stop_grace_seconds: 5,
        log_limit_bytes: None,
        image: None,
        redact: Vec::new(),
        volumes: Vec::new(),
        limits: None,
    }
}

/// A job carrying a unique marker in its environment, which every process it starts inherits.
pub fn marked_job(command: &[&str], marker: &str) -> Job {
    let mut job = job(command);
    job.env.insert("RUNPLANE_TEST_MARKER".into(), marker.into());
    job
}

pub fn unique_marker(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{name}-{}-{nanos}", std::process::id())
}

/// Live processes whose environment carries `marker`.
pub fn marked_processes(marker: &str) -> Vec<i32> {
    let needle = format!("RUNPLANE_TEST_MARKER={marker}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            environ
                .split(|b| *b == 0)
                .any(|var| var == needle.as_bytes())
                .then_some(pid)
        })
        .collect()
}

pub async fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> Result<T, String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Harness {
    pub async fn next_event(&mut self) -> Result<FrameworkEvent, String> {
        match tokio::time::timeout(PATIENCE, self.events.recv()).await {
            Ok(Some(event)) => Ok(event),
            Ok(None) => Err("event channel closed".into()),
            Err(_) => Err("timed out waiting for an event".into()),
        }
    }

    /// Events of `execution` up to and including its Exited/Lost.
    pub async fn events_until_end(
        &mut self,
        execution: &ExecutionId,
    ) -> Result<Vec<EventKind>, String> {
        let mut kinds = Vec::new();
        loop {
            let event = self.next_event().await?;
            if &event.execution != execution {
                return Err(format!("event for another execution: {event:?}"));
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

    pub async fn wait_started(&mut self, execution: &ExecutionId) -> Result<(), String> {
        let event = self.next_event().await?;
        ensure!(
            &event.execution == execution && event.kind == EventKind::Started,
            "expected Started, got {event:?}"
        );
        Ok(())
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

    pub fn lines(&self, execution: &ExecutionId, stream: Stream) -> Result<Vec<String>, String> {
        Ok(self
            .log(execution)?
            .into_iter()
            .filter(|r| r.stream == stream)
            .map(|r| String::from_utf8_lossy(&r.data).into_owned())
            .collect())
    }

    pub fn attempt_dir(&self, execution: &ExecutionId) -> PathBuf {
        self.runs_dir
            .join(&execution.run_id)
            .join(execution.attempt.to_string())
    }
}

pub fn exited(kinds: &[EventKind]) -> Result<&runplane_domain::ExitOutcome, String> {
    match kinds.last() {
        Some(EventKind::Exited(outcome)) => Ok(outcome),
        other => Err(format!(
            "expected Exited last, got {other:?} (all: {kinds:?})"
        )),
    }
}

/// Runs the selected tests the way libtest would report them (enough of its command line for
/// `cargo test` and `cargo nextest`: `--list`, a name filter, `--exact`).
pub fn run_tests(tests: &[(&str, TestFn)]) {
    run_suite(tests, &[]);
}

/// `run_tests` with known failures: `(name, reason)` pairs that are reported as ignored (with
/// their reason) and run only with `--ignored` or `--include-ignored`, to show the bug.
pub fn run_suite(tests: &[(&str, TestFn)], known_failures: &[(&str, &str)]) {
    let args: Vec<String> = std::env::args().collect();
    let include_ignored = args.iter().any(|a| a == "--include-ignored");
    let known = |name: &str| known_failures.iter().find(|(known, _)| *known == name);
    let list = args.iter().any(|a| a == "--list");
    let exact = args.iter().any(|a| a == "--exact");
    let ignored_only = args.iter().any(|a| a == "--ignored");
    let mut filter = None;
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--format" | "--test-threads" | "--color" | "--logfile" | "--skip" => {
                rest.next();
            }
            a if a.starts_with('-') => {}
            a => filter = Some(a.to_string()),
        }
    }
    let selected: Vec<_> = tests
        .iter()
        .filter(|(name, _)| {
            let ignored = known(name).is_some();
            if ignored_only {
                ignored
            } else {
                include_ignored || !ignored
            }
        })
        .filter(|(name, _)| match &filter {
            None => true,
            Some(f) if exact => name == f,
            Some(f) => name.contains(f.as_str()),
        })
        .collect();
    if list {
        for (name, _) in &selected {
            println!("{name}: test");
        }
        return;
    }

    let skipped: Vec<_> = tests
        .iter()
        .filter(|(name, _)| !selected.iter().any(|(s, _)| s == name))
        .filter(|(name, _)| match &filter {
            None => true,
            Some(f) if exact => name == f,
            Some(f) => name.contains(f.as_str()),
        })
        .filter_map(|(name, _)| known(name))
        .collect();
    for (name, reason) in &skipped {
        println!("test {name} ... ignored, known failure: {reason}");
    }
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in selected {
        let result = std::panic::catch_unwind(test).unwrap_or_else(|panic| {
            Err(panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into()))
        });
        match result {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok");
            }
            Err(message) => {
                failed += 1;
                println!("test {name} ... FAILED\n    {message}");
            }
        }
    }
    println!(
        "{passed} passed, {failed} failed, {} ignored",
        skipped.len()
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
