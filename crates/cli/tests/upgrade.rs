//! Upgrades: a store written by the previous tagged release (`.ci/previous-release`, built by
//! `scripts/previous-release`) opens with this binary. The runs it recorded keep their results
//! and logs, runs still executing under the old release's supervisors — a job and a service —
//! are adopted and end once, secrets sealed by the old server still open, and re-applying the
//! same documents makes no new version (content hashes are stable across releases). Both
//! stores: SQLite in the server's home, and PostgreSQL.

mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::*;

/// Generous: CI machines have two cores.
const PATIENCE: Duration = Duration::from_secs(120);

const SECRET_VALUE: &str = "upgrade-8d0c-secret";

/// The previous release's binary, built (once per machine) by `scripts/previous-release`.
fn previous_release() -> PathBuf {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/previous-release"
    );
    let output = std::process::Command::new(script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run scripts/previous-release");
    assert!(
        output.status.success(),
        "scripts/previous-release failed: the upgrade test needs the previous release's binary"
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

fn example(path: &str) -> String {
    format!("{}/../../examples/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn cli_ok(server: &TestServer, args: &[&str]) -> String {
    let output = server.cli("p", args);
    assert!(
        output.status.success(),
        "{} {args:?}: {}\n{}",
        server.bin.display(),
        stderr(&output),
        server.server_log()
    );
    stdout(&output)
}

/// Every function and workflow version the server lists: (name, version) pairs.
fn versions(server: &TestServer) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for kind in ["functions", "workflows"] {
        let (status, list) = server.get(&format!("/projects/p/{kind}"));
        assert_eq!(status, 200, "{list}");
        for item in list.as_array().unwrap() {
            let name = item["metadata"]["name"].as_str().unwrap().to_string();
            let (_, history) = server.get(&format!("/projects/p/{kind}/{name}/versions"));
            for version in history.as_array().unwrap() {
                all.push((
                    name.clone(),
                    version["metadata"]["version"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    all.sort();
    all
}

fn run_of(server: &TestServer, id: &str) -> Value {
    let (status, run) = server.get(&format!("/projects/p/runs/{id}"));
    assert_eq!(status, 200, "{run}\n{}", server.server_log());
    run
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A job that counts its executions in `<work>/gated.count`, waits for `<work>/gate`, and
/// returns the secret it was given (redacted in its logs, not in its results).
fn gated_function(server: &TestServer) -> (PathBuf, PathBuf) {
    let gate = server.work.path().join("gate");
    let count = server.work.path().join("gated.count");
    let code = format!(
        "import os, time\n\
         def handler(tag):\n    \
             with open({count:?}, 'a') as f:\n        \
                 f.write('ran\\n')\n    \
             print(f'before {{tag}}', flush=True)\n    \
             while not os.path.exists({gate:?}):\n        \
                 time.sleep(0.05)\n    \
             print(f'after {{tag}}', flush=True)\n    \
             return {{'tag': tag, 'token_length': len(os.environ['API_TOKEN'])}}\n",
        count = count.display().to_string(),
        gate = gate.display().to_string(),
    );
    let (status, body) = server.post(
        "/projects/p/functions",
        &json!({"kind": "python", "metadata": {"name": "gated"},
                "spec": {"handler": "handler", "source": {"code": code}}}),
    );
    assert_eq!(status, 201, "{body}");
    (gate, count)
}

fn executions(count: &Path) -> usize {
    std::fs::read_to_string(count)
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

fn invoke_model(server: &TestServer) -> f64 {
    let answer = cli_ok(
        server,
        &["invoke", "linear-model", "--data", r#"{"x": [1.0]}"#],
    );
    let answer: Value = serde_json::from_str(&answer).expect("JSON answer");
    answer["y"][0].as_f64().expect("a prediction")
}

/// Fills a store with the previous release, kills it (SIGKILL: its supervisors live on), and
/// takes the store over with this binary.
fn upgrade_keeps_everything(store_args: &[&str]) {
    let previous = previous_release();
    let mut server = TestServer::start_binary(&previous, store_args);

    // What the previous release recorded: functions and a workflow from the examples, a
    // secret, finished runs, a workflow that left a service running, and a job mid-run.
    cli_ok(&server, &["apply", "-f", &example("hello.yaml")]);
    cli_ok(
        &server,
        &["apply", "-f", &example("pipeline/pipeline.yaml")],
    );
    cli_ok(
        &server,
        &["create", "secret", "api-token", "--value", SECRET_VALUE],
    );
    let hello = cli_ok(
        &server,
        &["run", "hello", "-p", "name=Ann", "--wait", "-o", "json"],
    );
    let hello: Value = serde_json::from_str(&hello).expect("results");
    assert_eq!(hello["greeting"], "hello Ann");
    let (_, runs) = server.get("/projects/p/runs?function=hello");
    let hello_id = runs["items"][0]["metadata"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let hello_logs = cli_ok(&server, &["logs", &hello_id]);
    assert!(hello_logs.contains("hello Ann (3/3)"), "{hello_logs}");

    cli_ok(&server, &["run", "linear", "--wait", "-o", "json"]);
    let predicted = invoke_model(&server);
    assert!((predicted - 5.0).abs() < 0.3, "{predicted}");

    let (gate, count) = gated_function(&server);
    let (status, gated) = server.post(
        "/projects/p/runs",
        &json!({"function": "gated", "parameters": {"tag": "g"},
                "secrets": {"API_TOKEN": "api-token"}}),
    );
    assert_eq!(status, 201, "{gated}");
    let gated_id = gated["metadata"]["id"].as_str().unwrap().to_string();
    server.wait_state("p", &gated_id, "RUNNING", PATIENCE);
    wait_until("the gated job to start", || executions(&count) == 1);
    let versions_before = versions(&server);

    // The upgrade: the old server dies, this release's server opens its store.
    server.kill9();
    server.bin = PathBuf::from(BIN);
    server.restart(store_args);

    // Recorded runs keep their outcome and logs.
    let run = run_of(&server, &hello_id);
    assert_eq!(run["status"]["state"], "COMPLETED");
    assert_eq!(run["status"]["results"]["greeting"], "hello Ann");
    assert_eq!(cli_ok(&server, &["logs", &hello_id]), hello_logs);
    // The running service was adopted: the gateway still routes to its replicas.
    assert_eq!(invoke_model(&server), predicted);
    // The running job was adopted: it finishes once, with the old server's secret.
    assert_eq!(run_of(&server, &gated_id)["status"]["state"], "RUNNING");
    std::fs::write(&gate, "").unwrap();
    let run = server.wait_state("p", &gated_id, "COMPLETED", PATIENCE);
    assert_eq!(
        run["status"]["results"],
        json!({"tag": "g", "token_length": SECRET_VALUE.len()})
    );
    assert_eq!(cli_ok(&server, &["logs", &gated_id]), "before g\nafter g\n");
    assert_eq!(executions(&count), 1, "the adopted job ran once");

    // Same documents, same content hashes: no new version.
    for document in [example("hello.yaml"), example("pipeline/pipeline.yaml")] {
        let applied = cli_ok(&server, &["apply", "-f", &document]);
        assert!(!applied.contains("created"), "{applied}");
        assert!(applied.contains("unchanged"), "{applied}");
    }
    assert_eq!(versions(&server), versions_before);

    // New work runs, with the secret the old server sealed.
    let (status, again) = server.post(
        "/projects/p/runs",
        &json!({"function": "gated", "parameters": {"tag": "new"},
                "secrets": {"API_TOKEN": "api-token"}}),
    );
    assert_eq!(status, 201, "{again}");
    let again = server.wait_state(
        "p",
        again["metadata"]["id"].as_str().unwrap(),
        "COMPLETED",
        PATIENCE,
    );
    assert_eq!(
        again["status"]["results"]["token_length"],
        SECRET_VALUE.len()
    );

    // The service adopted from the old release stops cleanly.
    let (_, services) = server.get("/projects/p/services");
    let service_run = services[0]["run_id"].as_str().unwrap_or_else(|| {
        panic!("a service record names its run: {services:#}");
    });
    cli_ok(&server, &["stop", service_run]);
    server.wait_state("p", service_run, "STOPPED", PATIENCE);
}

#[test]
fn a_sqlite_store_of_the_previous_release_is_taken_over() {
    upgrade_keeps_everything(&[]);
}

#[test]
fn a_postgres_store_of_the_previous_release_is_taken_over() {
    let url = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(runplane_store::postgres::testing::fresh_database());
    upgrade_keeps_everything(&["--store", &url]);
}
