//! The engine framework against the real Podman service that `scripts/setup` starts (socket
//! `/run/runplane-podman.sock`, or `$RUNPLANE_ENGINE_SOCKET`) and its local busybox image:
//! what only the engine does. What every framework does (exit codes, logs, outputs, secrets,
//! stop, recovery, cleanup, the log cap) is the conformance suite's (`conformance_engine.rs`).

use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;
use runplane_domain::{Job, Runnable};
use runplane_frameworks::engine::{EngineFramework, EngineOptions, DEFAULT_SOCKET, LABEL_HOME};
use runplane_frameworks::{ExecutionId, Framework, FrameworkError};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

const BUSYBOX: &str = "localhost/runplane-busybox:latest";

fn socket() -> PathBuf {
    std::env::var_os("RUNPLANE_ENGINE_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

struct Harness {
    tmp: tempfile::TempDir,
    framework: EngineFramework,
    _events: runplane_frameworks::EventReceiver,
}

fn options(tmp: &tempfile::TempDir) -> EngineOptions {
    EngineOptions {
        socket: socket(),
        runs_dir: tmp.path().join("runs"),
        logs_dir: tmp.path().join("logs"),
        default_image: BUSYBOX.into(),
    }
}

async fn connect(tmp: &tempfile::TempDir) -> (EngineFramework, runplane_frameworks::EventReceiver) {
    let (tx, events) =
        runplane_frameworks::events::channel(runplane_frameworks::events::DEFAULT_CAPACITY);
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
    Harness {
        tmp,
        framework,
        _events: events,
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
