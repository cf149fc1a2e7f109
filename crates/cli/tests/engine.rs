//! End to end on the engine framework: the real binary as server and CLI, the quickstart's
//! function run as a container on the Podman service that `scripts/setup` starts.

mod support;

use serde_json::Value;
use std::path::PathBuf;
use support::*;

const HELLO: &str = include_str!("../../../examples/hello.yaml");

fn socket() -> String {
    let socket = std::env::var_os("RUNPLANE_ENGINE_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/runplane-podman.sock"));
    assert!(
        socket.exists(),
        "no container engine socket at {}: run scripts/setup (it installs Podman and starts its socket)",
        socket.display()
    );
    socket.to_string_lossy().into_owned()
}

/// `run hello --wait -o json` on `framework`: the results and the run's log.
fn hello_on(server: &TestServer, framework: &str) -> (Value, String) {
    let ran = server.cli(
        "demo",
        &[
            "run",
            "hello",
            "-p",
            "name=Ann",
            "-p",
            "times=2",
            "--framework",
            framework,
            "--wait",
            "-o",
            "json",
        ],
    );
    assert!(
        ran.status.success(),
        "{framework}: {}\n{}",
        stderr(&ran),
        server.server_log()
    );
    let results: Value = serde_json::from_str(&stdout(&ran)).expect("results as JSON");
    let id = results["run"]
        .as_str()
        .expect("run id in results")
        .to_string();
    let (_, run) = server.get(&format!("/projects/demo/runs/{id}"));
    assert_eq!(run["status"]["state"], "COMPLETED", "{run}");
    assert_eq!(run["spec"]["framework"], framework, "{run}");
    let logs = server.cli("demo", &["logs", &id]);
    assert!(logs.status.success(), "{}", stderr(&logs));
    (results, stdout(&logs))
}

#[test]
fn hello_runs_in_a_container_with_the_same_results_as_locally() {
    let socket = socket();
    let server = TestServer::start_with(&["--engine-socket", &socket]);
    let file = server.write("hello.yaml", HELLO);
    let applied = server.cli("demo", &["apply", "-f", file.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", stderr(&applied));

    let (local, local_logs) = hello_on(&server, "local");
    let (engine, engine_logs) = hello_on(&server, "engine");
    assert_eq!(engine["greeting"], "hello Ann");
    assert_eq!(engine["times"], 2);
    assert_eq!(engine["greeting"], local["greeting"]);
    assert_eq!(engine_logs, "hello Ann (1/2)\nhello Ann (2/2)\n");
    assert_eq!(engine_logs, local_logs);
}

#[test]
fn the_engine_framework_is_refused_when_not_enabled() {
    let server = TestServer::start();
    let file = server.write("hello.yaml", HELLO);
    let applied = server.cli("demo", &["apply", "-f", file.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let ran = server.cli("demo", &["run", "hello", "--framework", "engine"]);
    assert!(!ran.status.success());
    assert!(
        stderr(&ran)
            .contains("framework \"engine\" is not enabled on this server (enabled: local)"),
        "{}",
        stderr(&ran)
    );
}
