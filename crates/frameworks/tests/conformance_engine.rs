//! The framework conformance suite (`conformance/`) against the `engine` framework: real
//! containers on the Podman service that `scripts/setup-engine` starts (socket
//! `/run/runplane-podman.sock`, or `$RUNPLANE_ENGINE_SOCKET`), with its local images.
//!
//! Same shape as `conformance_local.rs` (`harness = false`), so that one runner and one list
//! of known failures serve both.

#[macro_use]
mod support;
mod conformance;

use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use bollard::Docker;
use conformance::{Platform, SERVER_ONLY_VAR, SHELL_IMAGE};
use runplane_frameworks::engine::{
    EngineFramework, EngineOptions, DEFAULT_SOCKET, LABEL_ATTEMPT, LABEL_HOME, LABEL_RUN,
};
use runplane_frameworks::{EventSender, ExecutionId};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

struct Engine;

fn socket() -> PathBuf {
    std::env::var_os("RUNPLANE_ENGINE_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

async fn docker() -> Result<Docker, String> {
    Docker::connect_with_unix(
        &socket().to_string_lossy(),
        60,
        bollard::API_DEFAULT_VERSION,
    )
    .map_err(|e| format!("connect to the engine: {e}"))?
    .negotiate_version()
    .await
    .map_err(|e| format!("the engine does not answer: {e}"))
}

/// The containers of `execution` (all of them when `None`) under the framework home `runs`,
/// with whether each runs.
async fn containers(
    runs: &Path,
    execution: Option<&ExecutionId>,
) -> Result<Vec<(String, bool)>, String> {
    let docker = docker().await?;
    let home = std::path::absolute(runs).map_err(|e| e.to_string())?;
    let mut labels = vec![format!("{LABEL_HOME}={}", home.display())];
    if let Some(execution) = execution {
        labels.push(format!("{LABEL_RUN}={}", execution.run_id));
        labels.push(format!("{LABEL_ATTEMPT}={}", execution.attempt));
    }
    let filters = HashMap::from([("label".to_string(), labels)]);
    let found = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|e| format!("list containers: {e}"))?;
    Ok(found
        .into_iter()
        .map(|c| {
            let running = c
                .state
                .is_some_and(|s| s == bollard::models::ContainerSummaryStateEnum::RUNNING);
            (c.id.unwrap_or_default(), running)
        })
        .collect())
}

impl Platform for Engine {
    type Framework = EngineFramework;

    async fn framework(
        runs: &Path,
        logs: &Path,
        events: EventSender,
    ) -> Result<EngineFramework, String> {
        let options = EngineOptions {
            socket: socket(),
            runs_dir: runs.to_path_buf(),
            logs_dir: logs.to_path_buf(),
            default_image: SHELL_IMAGE.into(),
        };
        EngineFramework::connect(options, events)
            .await
            .map_err(|e| {
                format!(
                    "no container engine at {}: {e}; run scripts/setup-engine",
                    socket().display()
                )
            })
    }

    async fn still_running(runs: &Path, execution: &ExecutionId) -> Result<Vec<String>, String> {
        Ok(containers(runs, Some(execution))
            .await?
            .into_iter()
            .filter(|(_, running)| *running)
            .map(|(id, _)| format!("container {id}"))
            .collect())
    }

    async fn has_ended(runs: &Path, execution: &ExecutionId) -> Result<bool, String> {
        let found = containers(runs, Some(execution)).await?;
        Ok(!found.is_empty() && found.iter().all(|(_, running)| !running))
    }

    /// The container (any state) and the attempt folder it mounts.
    async fn working_state(runs: &Path, execution: &ExecutionId) -> Result<Vec<String>, String> {
        let mut state: Vec<String> = containers(runs, Some(execution))
            .await?
            .into_iter()
            .map(|(id, _)| format!("container {id}"))
            .collect();
        let dir = runs
            .join(&execution.run_id)
            .join(execution.attempt.to_string());
        if dir.exists() {
            state.push(dir.display().to_string());
        }
        Ok(state)
    }

    /// Force-removes every container of this home: scenarios that fail half-way, and those
    /// that do not get to `cleanup`, leave none in the engine. On a thread of its own because
    /// it runs from `Drop`, inside the test's runtime.
    fn discard(runs: &Path) {
        let runs = runs.to_path_buf();
        let removed = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let docker = docker().await?;
                for (id, _) in containers(&runs, None).await? {
                    let options = RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    };
                    docker
                        .remove_container(&id, Some(options))
                        .await
                        .map_err(|e| format!("remove container {id}: {e}"))?;
                }
                Ok::<(), String>(())
            })
        })
        .join();
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("    leftover containers: {e}"),
            Err(_) => eprintln!("    leftover containers: the removal panicked"),
        }
    }
}

/// Scenarios the engine framework fails today, each a bug in `src/engine` (not run unless
/// `--include-ignored` or `--ignored` is passed, which shows the failure).
const KNOWN_FAILURES: &[(&str, &str)] = &[];

fn main() {
    // SAFETY: single-threaded at this point (no runtime, no test has run).
    unsafe { std::env::set_var(SERVER_ONLY_VAR, "leaked") };
    let tests: Vec<(&str, support::TestFn)> = conformance_cases!(Engine);
    support::run_suite(&tests, KNOWN_FAILURES);
}
