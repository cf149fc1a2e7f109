//! End to end, as a user would: the real binary as server and CLI, real Python processes.

mod support;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const HELLO: &str = include_str!("../../../examples/hello.yaml");

#[test]
fn apply_run_wait_prints_results_and_records_the_run() {
    let server = TestServer::start();
    let file = server.write("hello.yaml", HELLO);
    let applied = server.cli("demo", &["apply", "-f", file.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    assert!(
        stdout(&applied).contains("function/hello created"),
        "{}",
        stdout(&applied)
    );

    let ran = server.cli(
        "demo",
        &[
            "run", "hello", "-p", "name=Ann", "-p", "times=2", "--wait", "-o", "json",
        ],
    );
    assert!(
        ran.status.success(),
        "{}\n{}",
        stderr(&ran),
        server.server_log()
    );
    let results: Value = serde_json::from_str(&stdout(&ran)).expect("results as JSON");
    assert_eq!(results["greeting"], "hello Ann");
    assert_eq!(results["times"], 2);

    let listed = server.cli("demo", &["get", "runs", "-o", "json"]);
    assert!(listed.status.success());
    let runs: Value = serde_json::from_str(&stdout(&listed)).unwrap();
    let run = &runs[0];
    assert_eq!(run["status"]["state"], "COMPLETED");
    assert_eq!(run["kind"], "python+job:run");
    assert_eq!(
        run["spec"]["parameters"],
        json!({"name": "Ann", "times": 2})
    );
    assert_eq!(results["run"], run["metadata"]["id"]);
    let (_, function) = server.get("/projects/demo/functions/hello");
    assert_eq!(
        run["spec"]["function_version"],
        function["metadata"]["version"]
    );
    assert_eq!(run["spec"]["function"], function["status"]["key"]);
    let states: Vec<&str> = run["status"]["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "CREATED",
            "BUILT",
            "READY",
            "PENDING",
            "RUNNING",
            "COMPLETED"
        ]
    );
    let attempt = &run["status"]["attempts"][0];
    assert_eq!(attempt["exit_code"], 0);
    assert!(attempt["started"].is_string() && attempt["ended"].is_string());

    let logs = server.cli("demo", &["logs", run["metadata"]["id"].as_str().unwrap()]);
    assert_eq!(stdout(&logs), "hello Ann (1/2)\nhello Ann (2/2)\n");
}

#[test]
fn a_handler_that_raises_ends_in_error_with_its_traceback_in_the_logs() {
    let server = TestServer::start();
    let file = server.write(
        "boom.yaml",
        "kind: python\nmetadata: {name: boom}\nspec:\n  handler: handler\n  source:\n    code: |\n      def handler(x=1):\n          print('about to fail')\n          raise ValueError(f'bad x {x}')\n",
    );
    assert!(server
        .cli("p", &["apply", "-f", file.to_str().unwrap()])
        .status
        .success());
    let ran = server.cli("p", &["run", "boom", "-p", "x=7", "--wait"]);
    assert_eq!(ran.status.code(), Some(1), "{}", stderr(&ran));
    assert!(
        stderr(&ran).contains("ValueError: bad x 7"),
        "{}",
        stderr(&ran)
    );

    let (_, page) = server.get("/projects/p/runs");
    let run = &page["items"][0];
    assert_eq!(run["status"]["state"], "ERROR");
    assert_eq!(run["status"]["reason"], "failed");
    assert!(run["status"]["message"]
        .as_str()
        .unwrap()
        .contains("bad x 7"));
    let logs = stdout(&server.cli("p", &["logs", run["metadata"]["id"].as_str().unwrap()]));
    assert!(logs.contains("about to fail"), "{logs}");
    assert!(logs.contains("Traceback (most recent call last)"), "{logs}");
    assert!(logs.contains("raise ValueError"), "{logs}");
}

#[test]
fn stop_ends_a_long_job_and_its_whole_process_tree() {
    let server = TestServer::start();
    let marker = format!("rp-stop-{}", free_port());
    let code = format!(
        "import os, subprocess, time\n\
         def handler():\n    \
             subprocess.Popen(['sh', '-c', 'sleep 1000 & setsid sh -c \"sleep 1000 & wait\" & wait'], env=dict(os.environ, RP_MARKER='{marker}'))\n    \
             print('started', flush=True)\n    \
             time.sleep(1000)\n"
    );
    let (status, _) = server.post(
        "/projects/p/functions",
        &json!({"kind": "python", "metadata": {"name": "sleeper"}, "spec": {"handler": "handler", "source": {"code": code}}}),
    );
    assert_eq!(status, 201);
    let (status, run) = server.post("/projects/p/runs", &json!({"function": "sleeper"}));
    assert_eq!(status, 201, "{run}");
    let id = run["metadata"]["id"].as_str().unwrap().to_string();
    server.wait_state("p", &id, "RUNNING", Duration::from_secs(20));
    // Wait for the grandchildren to exist.
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with(&marker).len() < 4 {
        assert!(Instant::now() < deadline, "grandchildren never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped_at = Instant::now();
    let stop = server.cli("p", &["stop", &id]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    let run = server.wait_state("p", &id, "STOPPED", Duration::from_secs(15));
    assert!(stopped_at.elapsed() < Duration::from_secs(10));
    assert_eq!(run["status"]["reason"], "user");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with(&marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes survived the stop: {:?}",
            processes_with(&marker)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Stopping again is a conflict that names the state.
    let again = server.cli("p", &["stop", &id]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("STOPPED"), "{}", stderr(&again));
}

#[test]
fn logs_follow_shows_lines_while_the_job_runs_and_ends_with_it() {
    let server = TestServer::start();
    let gate = server.work.path().join("gate");
    let code = format!(
        "import os, time\n\
         def handler():\n    \
             print('first line', flush=True)\n    \
             while not os.path.exists({gate:?}):\n        \
                 time.sleep(0.02)\n    \
             print('second line', flush=True)\n    \
             return 'done'\n",
        gate = gate.display().to_string()
    );
    server.post(
        "/projects/p/functions",
        &json!({"kind": "python", "metadata": {"name": "gated"}, "spec": {"handler": "handler", "source": {"code": code}}}),
    );
    let (_, run) = server.post("/projects/p/runs", &json!({"function": "gated"}));
    let id = run["metadata"]["id"].as_str().unwrap().to_string();
    let mut follower = Command::new(BIN)
        .args(["logs", &id, "-f"])
        .env("RUNPLANE_URL", &server.url)
        .env("RUNPLANE_PROJECT", "p")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    // The job cannot finish before the gate exists: seeing this line proves streaming.
    assert_eq!(lines.next().unwrap().unwrap(), "first line");
    assert_eq!(
        server.get(&format!("/projects/p/runs/{id}")).1["status"]["state"],
        "RUNNING"
    );
    std::fs::write(&gate, "").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "second line");
    assert!(
        lines.next().is_none(),
        "the follower ends when the run ends"
    );
    assert!(follower.wait().unwrap().success());
}

#[test]
fn rerun_makes_a_linked_run_with_the_same_snapshot() {
    let server = TestServer::start();
    let file = server.write("hello.yaml", HELLO);
    server.cli("p", &["apply", "-f", file.to_str().unwrap()]);
    let (_, first) = server.post(
        "/projects/p/runs",
        &json!({"function": "hello", "parameters": {"name": "Bo"}}),
    );
    let first_id = first["metadata"]["id"].as_str().unwrap();
    server.wait_state("p", first_id, "COMPLETED", Duration::from_secs(20));
    // A new version of the function does not change what the rerun executes.
    let changed = HELLO.replace("hello {name}", "bye {name}");
    server.cli(
        "p",
        &[
            "apply",
            "-f",
            server.write("v2.yaml", &changed).to_str().unwrap(),
        ],
    );
    let rerun = server.cli("p", &["rerun", first_id, "--wait", "-o", "json"]);
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    let results: Value = serde_json::from_str(&stdout(&rerun)).unwrap();
    assert_eq!(results["greeting"], "hello Bo");
    let (_, page) = server.get("/projects/p/runs");
    let newest = &page["items"][0];
    assert_eq!(newest["status"]["rerun_of"], first_id);
    assert_eq!(newest["spec"], first["spec"]);
}

#[test]
fn quickstart_runs_the_example_on_embedded_defaults() {
    let home = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["quickstart", "--home"])
        .arg(home.path())
        .env("RUNPLANE_URL", format!("http://127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("hello world (3/3)"),
        "{}",
        stdout(&output)
    );
    assert!(
        stdout(&output).contains("greeting: hello world"),
        "{}",
        stdout(&output)
    );
    assert!(home.path().join("runplane.db").exists());
}
