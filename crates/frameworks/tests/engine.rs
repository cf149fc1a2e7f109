//! The engine framework against the real Podman service that `scripts/setup` starts (socket
//! `/run/runplane-podman.sock`, or `$RUNPLANE_ENGINE_SOCKET`) and its local busybox image.

use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;
use runplane_domain::{ExitOutcome, Job, Runnable};
use runplane_frameworks::engine::{EngineFramework, EngineOptions, DEFAULT_SOCKET, LABEL_HOME};
use runplane_frameworks::{EventKind, ExecutionId, Framework, FrameworkError, FrameworkEvent};
use runplane_logstore::file::FileLogStore;
use runplane_logstore::{LogStore, Stream};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const BUSYBOX: &str = "localhost/runplane-busybox:latest";
/// Generous: CI machines have two cores and other work.
const PATIENCE: Duration = Duration::from_secs(60);

fn socket() -> PathBuf {
    std::env::var_os("RUNPLANE_ENGINE_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

struct Harness {
    tmp: tempfile::TempDir,
    framework: EngineFramework,
    events: mpsc::UnboundedReceiver<FrameworkEvent>,
    logs: FileLogStore,
}

fn options(tmp: &tempfile::TempDir) -> EngineOptions {
    EngineOptions {
        socket: socket(),
        runs_dir: tmp.path().join("runs"),
        logs_dir: tmp.path().join("logs"),
        default_image: BUSYBOX.into(),
    }
}

async fn connect(
    tmp: &tempfile::TempDir,
) -> (EngineFramework, mpsc::UnboundedReceiver<FrameworkEvent>) {
    let (tx, events) = mpsc::unbounded_channel();
    match EngineFramework::connect(options(tmp), tx).await {
        Ok(framework) => (framework, events),
        Err(e) => panic!(
            "no container engine at {}: {e}; run scripts/setup (it installs Podman and starts its socket)",
            socket().display()
        ),
    }
}

async fn harness() -> Harness {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (framework, events) = connect(&tmp).await;
    let logs = FileLogStore::new(tmp.path().join("logs"));
    Harness {
        tmp,
        framework,
        events,
        logs,
    }
}

fn exec(name: &str) -> ExecutionId {
    ExecutionId {
        run_id: name.into(),
        attempt: 1,
    }
}

fn job(command: &[&str]) -> Job {
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

fn sh(script: &str) -> Job {
    job(&["sh", "-c", script])
}

/// The events of `execution` until it ends (`Exited` or `Lost`).
async fn until_end(
    events: &mut mpsc::UnboundedReceiver<FrameworkEvent>,
    execution: &ExecutionId,
) -> Vec<EventKind> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("{execution:?} did not end; events so far: {seen:?}"))
            .expect("event channel closed");
        if &event.execution != execution {
            continue;
        }
        let end = matches!(event.kind, EventKind::Exited(_) | EventKind::Lost { .. });
        seen.push(event.kind);
        if end {
            return seen;
        }
    }
}

fn outcome(events: &[EventKind]) -> ExitOutcome {
    match events.last() {
        Some(EventKind::Exited(outcome)) => outcome.clone(),
        other => panic!("expected Exited, got {other:?} (all: {events:?})"),
    }
}

async fn run_to_end(h: &mut Harness, name: &str, job: Job) -> Vec<EventKind> {
    let execution = exec(name);
    h.framework
        .start(execution.clone(), Runnable::Job(job))
        .await
        .expect("start");
    until_end(&mut h.events, &execution).await
}

fn log_lines(logs: &FileLogStore, execution: &ExecutionId) -> Vec<(Stream, String)> {
    let chunk = logs
        .read(&execution.run_id, execution.attempt, 0, 1 << 20)
        .expect("read log");
    chunk
        .records
        .into_iter()
        .map(|r| (r.stream, String::from_utf8_lossy(&r.data).into_owned()))
        .collect()
}

/// The containers labelled with this framework's home.
async fn containers_of(framework: &EngineFramework) -> Vec<String> {
    let docker = Docker::connect_with_unix(
        &socket().to_string_lossy(),
        30,
        bollard::API_DEFAULT_VERSION,
    )
    .expect("connect")
    .negotiate_version()
    .await
    .expect("negotiate");
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{LABEL_HOME}={}", framework.home())],
    )]);
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

#[tokio::test]
async fn exit_codes_come_back() {
    let mut h = harness().await;
    for (name, script, code) in [("ok", "exit 0", 0), ("three", "exit 3", 3)] {
        let events = run_to_end(&mut h, name, sh(script)).await;
        assert_eq!(events.first(), Some(&EventKind::Started), "{events:?}");
        let outcome = outcome(&events);
        assert_eq!(outcome.exit_code, Some(code), "{name}: {outcome:?}");
        assert_eq!(outcome.signal, None);
        h.framework.cleanup(&exec(name)).await.expect("cleanup");
    }
    assert!(containers_of(&h.framework).await.is_empty());
}

#[tokio::test]
async fn stdout_and_stderr_lines_are_logged_in_order() {
    let mut h = harness().await;
    let events = run_to_end(
        &mut h,
        "logs",
        sh("echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three; printf tail"),
    )
    .await;
    assert_eq!(outcome(&events).exit_code, Some(0));
    let last_offset = events.iter().rev().find_map(|e| match e {
        EventKind::LogAppended { end_offset } => Some(*end_offset),
        _ => None,
    });
    assert!(last_offset.is_some_and(|end| end > 0), "{events:?}");
    assert_eq!(
        log_lines(&h.logs, &exec("logs")),
        vec![
            (Stream::Stdout, "one\n".to_string()),
            (Stream::Stderr, "two\n".to_string()),
            (Stream::Stdout, "three\n".to_string()),
            (Stream::Stdout, "tail".to_string()),
        ]
    );
    h.framework.cleanup(&exec("logs")).await.expect("cleanup");
}

#[tokio::test]
async fn secrets_are_redacted_from_the_log() {
    let mut h = harness().await;
    let mut job = sh("echo \"token=$API_TOKEN\"; echo \"$API_TOKEN\" >&2");
    job.env
        .insert("API_TOKEN".to_string(), "s3cr3t-value".to_string());
    job.redact = vec!["s3cr3t-value".to_string()];
    let events = run_to_end(&mut h, "redact", job).await;
    assert_eq!(outcome(&events).exit_code, Some(0));
    assert_eq!(
        log_lines(&h.logs, &exec("redact")),
        vec![
            (Stream::Stdout, "token=[REDACTED]\n".to_string()),
            (Stream::Stderr, "[REDACTED]\n".to_string()),
        ]
    );
    h.framework.cleanup(&exec("redact")).await.expect("cleanup");
}

#[tokio::test]
async fn files_in_and_outputs_out() {
    let mut h = harness().await;
    let mut job = sh("cat input.txt > \"$RUNPLANE_OUTPUTS/result.txt\"; echo \"$GREETING\" >> \"$RUNPLANE_OUTPUTS/result.txt\"");
    job.files.push(runplane_domain::FileEntry {
        path: "input.txt".into(),
        mode: 0o644,
        contents: b"from the job's files\n".to_vec(),
    });
    job.env.insert("GREETING".into(), "hello".into());
    let events = run_to_end(&mut h, "outputs", job).await;
    let outcome = outcome(&events);
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    let result = outcome.outputs.get("result.txt").expect("result.txt");
    assert_eq!(result.contents, b"from the job's files\nhello\n");
    let attempt = h.tmp.path().join("runs/outputs/1");
    assert!(attempt.join("outputs").exists());
    h.framework
        .cleanup(&exec("outputs"))
        .await
        .expect("cleanup");
    assert!(!attempt.exists(), "cleanup removes the attempt folder");
}

#[tokio::test]
async fn stop_ends_a_job_within_its_grace_and_cleanup_keeps_the_log() {
    let mut h = harness().await;
    let execution = exec("sleeper");
    h.framework
        .start(
            execution.clone(),
            Runnable::Job(sh("echo started; exec sleep 300")),
        )
        .await
        .expect("start");
    // Wait for its first line: it runs.
    let deadline = Instant::now() + PATIENCE;
    while log_lines(&h.logs, &execution).is_empty() {
        assert!(Instant::now() < deadline, "no output from the sleeper");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopping = Instant::now();
    h.framework.stop(&execution).await.expect("stop");
    h.framework.stop(&execution).await.expect("stop again");
    let events = until_end(&mut h.events, &execution).await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5 + 10),
        "took {:?}",
        stopping.elapsed()
    );
    let outcome = outcome(&events);
    assert_eq!(outcome.signal, Some(15), "{outcome:?}");
    assert_eq!(containers_of(&h.framework).await.len(), 1);
    h.framework.cleanup(&execution).await.expect("cleanup");
    h.framework
        .cleanup(&execution)
        .await
        .expect("cleanup again");
    assert!(containers_of(&h.framework).await.is_empty());
    assert_eq!(
        log_lines(&h.logs, &execution),
        vec![(Stream::Stdout, "started\n".to_string())]
    );
}

#[tokio::test]
async fn a_missing_image_fails_the_start_and_leaves_nothing() {
    let h = harness().await;
    let mut job = sh("true");
    job.image = Some("localhost/runplane-no-such-image:latest".into());
    let error = h
        .framework
        .start(exec("noimage"), Runnable::Job(job))
        .await
        .expect_err("a missing image cannot start");
    match &error {
        FrameworkError::StartFailed { message, .. } => {
            assert!(message.contains("runplane-no-such-image"), "{message}")
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    assert!(containers_of(&h.framework).await.is_empty());
    assert!(!h.tmp.path().join("runs/noimage/1").exists());
}

#[tokio::test]
async fn a_new_instance_recovers_running_containers_and_reports_missing_ones() {
    let h = harness().await;
    let running = exec("survivor");
    h.framework
        .start(
            running.clone(),
            Runnable::Job(sh("echo before; sleep 1.5; echo after; exec sleep 300")),
        )
        .await
        .expect("start");
    let deadline = Instant::now() + PATIENCE;
    while log_lines(&h.logs, &running).is_empty() {
        assert!(Instant::now() < deadline, "no output from the survivor");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The server dies: its followers with it; the container goes on.
    let Harness {
        tmp,
        framework,
        logs,
        ..
    } = h;
    drop(framework);

    let (framework, mut events) = connect(&tmp).await;
    let gone = exec("gone");
    framework
        .recover(vec![running.clone(), gone.clone()])
        .await
        .expect("recover");
    // Both reports, in whatever order: `gone` lost, `running` started again.
    let (mut lost, mut started) = (false, false);
    while !(lost && started) {
        let event = tokio::time::timeout(PATIENCE, events.recv())
            .await
            .expect("recovery reports")
            .expect("event channel closed");
        match event.kind {
            EventKind::Lost { .. } if event.execution == gone => lost = true,
            EventKind::Started if event.execution == running => started = true,
            EventKind::LogAppended { .. } => {}
            other => panic!("unexpected {other:?} for {:?}", event.execution),
        }
    }

    let deadline = Instant::now() + PATIENCE;
    while log_lines(&logs, &running).len() < 2 {
        assert!(Instant::now() < deadline, "no output after recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    framework.stop(&running).await.expect("stop");
    let ended = until_end(&mut events, &running).await;
    assert!(outcome(&ended).signal.is_some());
    // Every line once: nothing copied twice by the second follower.
    assert_eq!(
        log_lines(&logs, &running),
        vec![
            (Stream::Stdout, "before\n".to_string()),
            (Stream::Stdout, "after\n".to_string()),
        ]
    );
    framework.cleanup(&running).await.expect("cleanup");
    assert!(containers_of(&framework).await.is_empty());
}
