//! Runs outlive the server: a server killed with SIGKILL and started again on the same home
//! re-attaches the runs that were executing, reports those that ended meanwhile with their
//! real outcome, requeues those whose job had not started yet, and ends as `lost` those
//! whose supervisor vanished — never running a job twice.

mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::*;

/// Generous: CI machines have two cores.
const PATIENCE: Duration = Duration::from_secs(60);

/// A function that records each execution in `<counts>/<tag>`, prints a line, waits for the
/// gate file, prints another line and returns its tag.
fn gated_function(server: &TestServer, name: &str) -> (PathBuf, PathBuf) {
    let gate = server.work.path().join(format!("{name}.gate"));
    let counts = server.work.path().join(format!("{name}.counts"));
    std::fs::create_dir_all(&counts).unwrap();
    let code = format!(
        "import os, time\n\
         def handler(tag='x'):\n    \
             with open(os.path.join({counts:?}, tag), 'a') as f:\n        \
                 f.write('ran\\n')\n    \
             print(f'first {{tag}}', flush=True)\n    \
             while not os.path.exists({gate:?}):\n        \
                 time.sleep(0.1)\n    \
             print(f'second {{tag}}', flush=True)\n    \
             return {{'tag': tag}}\n",
        counts = counts.display().to_string(),
        gate = gate.display().to_string(),
    );
    let (status, body) = server.post(
        "/projects/p/functions",
        &json!({"kind": "python", "metadata": {"name": name}, "spec": {"handler": "handler", "source": {"code": code}}}),
    );
    assert_eq!(status, 201, "{body}");
    (gate, counts)
}

fn start_run(server: &TestServer, function: &str, tag: &str) -> String {
    let (status, run) = server.post(
        "/projects/p/runs",
        &json!({"function": function, "parameters": {"tag": tag}}),
    );
    assert_eq!(status, 201, "{run}");
    run["metadata"]["id"].as_str().unwrap().to_string()
}

/// How many times the job of `tag` ran.
fn executions(counts: &Path, tag: &str) -> usize {
    std::fs::read_to_string(counts.join(tag))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn attempt_dir(server: &TestServer, id: &str) -> PathBuf {
    server.home.path().join("runs").join(id).join("1")
}

/// Starts a gated run and waits until its job is running (RUNNING and its first line done).
fn running_gated_run(server: &TestServer, function: &str, counts: &Path, tag: &str) -> String {
    let id = start_run(server, function, tag);
    server.wait_state("p", &id, "RUNNING", PATIENCE);
    wait_until("the job to start", PATIENCE, || {
        executions(counts, tag) == 1
    });
    id
}

fn logs(server: &TestServer, id: &str) -> String {
    let output = server.cli("p", &["logs", id]);
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
}

fn kill9(pid: &str) {
    let status = std::process::Command::new("kill")
        .args(["-9", "--", pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -9 {pid}");
}

fn pid_file(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .trim()
        .to_string()
}

#[test]
fn a_run_keeps_going_across_a_server_crash_and_completes_once() {
    let mut server = TestServer::start();
    let (gate, counts) = gated_function(&server, "gated");
    let id = running_gated_run(&server, "gated", &counts, "a");

    server.kill9();
    server.restart(&[]);
    let (_, run) = server.get(&format!("/projects/p/runs/{id}"));
    assert_eq!(run["status"]["state"], "RUNNING", "{run:#}");

    std::fs::write(&gate, "").unwrap();
    let run = server.wait_state("p", &id, "COMPLETED", PATIENCE);
    assert_eq!(run["status"]["results"], json!({"tag": "a"}));
    assert_eq!(run["status"]["attempts"][0]["exit_code"], 0);
    assert_eq!(logs(&server, &id), "first a\nsecond a\n");
    assert_eq!(executions(&counts, "a"), 1, "the job ran once");
}

#[test]
fn sigterm_shuts_the_server_down_cleanly_and_leaves_runs_running() {
    let mut server = TestServer::start();
    let (gate, counts) = gated_function(&server, "gated");
    let id = running_gated_run(&server, "gated", &counts, "t");
    // Long requests in flight must not hold the shutdown open.
    let mut follower = std::process::Command::new(BIN)
        .args(["logs", &id, "-f"])
        .env("RUNPLANE_URL", &server.url)
        .env("RUNPLANE_PROJECT", "p")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _events = server.open_events("", None);
    let waiter = {
        let url = server.api(&format!("/projects/p/runs/{id}?wait=300"));
        std::thread::spawn(move || reqwest::blocking::get(url).map(|r| r.status().as_u16()))
    };
    std::thread::sleep(Duration::from_millis(300));

    assert!(
        server.terminate(),
        "the server exits 0 on SIGTERM: {}",
        server.server_log()
    );
    assert!(
        matches!(waiter.join().unwrap(), Ok(200)),
        "?wait= is answered on shutdown"
    );
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(server
        .server_log()
        .contains("runs still executing keep running"));
    // The job outlived the server: it finishes while no server runs.
    std::fs::write(&gate, "").unwrap();
    wait_until("the job to finish without a server", PATIENCE, || {
        attempt_dir(&server, &id).join("exit.json").exists()
    });
    server.restart(&[]);
    let run = server.wait_state("p", &id, "COMPLETED", PATIENCE);
    assert_eq!(run["status"]["results"], json!({"tag": "t"}));
    assert_eq!(logs(&server, &id), "first t\nsecond t\n");
    assert_eq!(executions(&counts, "t"), 1);
}

#[test]
fn a_run_that_ended_while_the_server_was_down_gets_its_real_outcome() {
    let mut server = TestServer::start();
    let (gate, counts) = gated_function(&server, "gated");
    let id = running_gated_run(&server, "gated", &counts, "b");

    server.kill9();
    std::fs::write(&gate, "").unwrap();
    let exit_file = attempt_dir(&server, &id).join("exit.json");
    wait_until("the job to end", PATIENCE, || exit_file.exists());
    server.restart(&[]);

    let run = server.wait_state("p", &id, "COMPLETED", PATIENCE);
    assert_eq!(run["status"]["results"], json!({"tag": "b"}));
    assert_eq!(logs(&server, &id), "first b\nsecond b\n");
    assert_eq!(executions(&counts, "b"), 1);
}

#[test]
fn a_run_claimed_by_a_server_that_died_before_starting_it_is_requeued() {
    let mut server = TestServer::start();
    let (gate, counts) = gated_function(&server, "gated");
    std::fs::write(&gate, "open").unwrap();
    server.kill9();
    // This server dies right after it commits its first claim (READY → PENDING), before it
    // asks the framework to start the run.
    assert!(
        server.restart_with_env(&[], &[("RUNPLANE_FAILPOINTS", "after_claim=nth:1")]),
        "{}",
        server.server_log()
    );
    let submitted = server
        .http
        .post(server.api("/projects/p/runs"))
        .json(&json!({"function": "gated", "parameters": {"tag": "q"}}))
        .send();
    wait_until("the server to die at its failpoint", PATIENCE, || {
        !server.is_running()
    });
    server.restart(&[]);
    let id = match submitted
        .ok()
        .and_then(|response| response.json::<Value>().ok())
    {
        Some(run) => run["metadata"]["id"].as_str().unwrap().to_string(),
        None => {
            let (_, runs) = server.get("/projects/p/runs");
            runs["items"][0]["metadata"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };

    let run = server.wait_state("p", &id, "COMPLETED", PATIENCE);
    assert_eq!(run["status"]["attempt"], 2, "{run:#}");
    let requeued: Vec<&Value> = run["status"]["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["reason"] == "requeued")
        .collect();
    assert_eq!(requeued.len(), 1, "{run:#}");
    assert_eq!(requeued[0]["from"], "PENDING");
    assert_eq!(requeued[0]["to"], "READY");
    let attempts = run["status"]["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["reason"], "lost", "{run:#}");
    assert!(attempts[0]["started"].is_null(), "{run:#}");
    assert_eq!(executions(&counts, "q"), 1);
}

#[test]
fn a_run_whose_supervisor_died_with_the_server_ends_lost() {
    let mut server = TestServer::start();
    let (_gate, counts) = gated_function(&server, "gated");
    let id = running_gated_run(&server, "gated", &counts, "c");
    let dir = attempt_dir(&server, &id);

    server.kill9();
    // The supervisor first, so that it cannot record the job's death; then the job's group.
    kill9(&pid_file(&dir, "supervisor.pid"));
    kill9(&format!("-{}", pid_file(&dir, "child.pid")));
    let marker = dir.display().to_string();
    wait_until("every process of the run to die", PATIENCE, || {
        processes_with(&marker).is_empty()
    });
    server.restart(&[]);

    let run = server.wait_state("p", &id, "ERROR", PATIENCE);
    assert_eq!(run["status"]["reason"], "lost", "{run:#}");
    let message = run["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("supervisor"), "{message}");
    assert_eq!(
        executions(&counts, "c"),
        1,
        "a lost attempt is not started again"
    );
}

#[test]
fn a_job_orphaned_by_its_supervisor_is_killed_when_its_run_is_lost() {
    let mut server = TestServer::start();
    let (_gate, counts) = gated_function(&server, "gated");
    let id = running_gated_run(&server, "gated", &counts, "o");
    let dir = attempt_dir(&server, &id);

    server.kill9();
    let supervisor = pid_file(&dir, "supervisor.pid");
    kill9(&supervisor);
    wait_until("the supervisor to die", PATIENCE, || {
        std::fs::read(format!("/proc/{supervisor}/cmdline")).map_or(true, |cmdline| {
            !String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy())
        })
    });
    let outputs = format!("RUNPLANE_OUTPUTS={}", dir.join("outputs").display());
    assert!(
        !processes_with(&outputs).is_empty(),
        "the job outlives its supervisor"
    );
    server.restart(&[]);

    let run = server.wait_state("p", &id, "ERROR", PATIENCE);
    assert_eq!(run["status"]["reason"], "lost", "{run:#}");
    wait_until("the orphaned job to be killed", PATIENCE, || {
        processes_with(&outputs).is_empty()
    });
}

#[test]
fn stop_works_on_a_reattached_run_and_leaves_no_process() {
    let mut server = TestServer::start();
    let (_gate, counts) = gated_function(&server, "gated");
    let id = running_gated_run(&server, "gated", &counts, "d");
    let marker = attempt_dir(&server, &id).display().to_string();

    server.kill9();
    server.restart(&[]);
    let stop = server.cli("p", &["stop", &id]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    let run = server.wait_state("p", &id, "STOPPED", PATIENCE);
    assert_eq!(run["status"]["reason"], "user");
    wait_until("every process of the run to end", PATIENCE, || {
        processes_with(&marker).is_empty()
    });
    assert!(logs(&server, &id).contains("first d"));
}

#[test]
fn a_hundred_running_jobs_are_reattached_after_a_crash() {
    const JOBS: usize = 100;
    let args = ["--max-concurrent-runs", "200"];
    let mut server = TestServer::start_with(&args);
    let (gate, counts) = gated_function(&server, "many");
    let ids: Vec<String> = (0..JOBS)
        .map(|i| start_run(&server, "many", &format!("t{i}")))
        .collect();
    for id in &ids {
        server.wait_state("p", id, "RUNNING", Duration::from_secs(180));
    }
    wait_until("every job to start", Duration::from_secs(180), || {
        (0..JOBS).all(|i| executions(&counts, &format!("t{i}")) == 1)
    });

    server.kill9();
    let restarted = Instant::now();
    // The server answers once recovery has returned (it runs before the listener serves).
    server.restart(&args);
    let recovery = restarted.elapsed();
    let took_over = server
        .server_log()
        .lines()
        .rfind(|line| line.contains("took over the runs of a previous server"))
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "re-attaching {JOBS} running jobs: server healthy {:.0} ms after restart ({took_over})",
        recovery.as_secs_f64() * 1000.0
    );
    assert!(
        recovery < Duration::from_secs(30),
        "recovery took {recovery:?}"
    );
    for id in &ids {
        let (_, run) = server.get(&format!("/projects/p/runs/{id}"));
        assert_eq!(run["status"]["state"], "RUNNING", "{run:#}");
    }

    std::fs::write(&gate, "").unwrap();
    for (i, id) in ids.iter().enumerate() {
        let run: Value = server.wait_state("p", id, "COMPLETED", Duration::from_secs(180));
        assert_eq!(run["status"]["results"], json!({"tag": format!("t{i}")}));
    }
    for i in 0..JOBS {
        assert_eq!(
            executions(&counts, &format!("t{i}")),
            1,
            "job t{i} ran once"
        );
    }
    let sample = &ids[JOBS / 2];
    assert_eq!(
        logs(&server, sample),
        format!("first t{0}\nsecond t{0}\n", JOBS / 2)
    );
}

#[test]
fn a_supervisor_killed_under_a_live_server_ends_lost_and_takes_its_job_along() {
    let server = TestServer::start();
    let (_gate, counts) = gated_function(&server, "gated");
    let id = running_gated_run(&server, "gated", &counts, "k");
    let dir = attempt_dir(&server, &id);
    let outputs = format!("RUNPLANE_OUTPUTS={}", dir.join("outputs").display());

    kill9(&pid_file(&dir, "supervisor.pid"));
    let run = server.wait_state("p", &id, "ERROR", PATIENCE);
    assert_eq!(run["status"]["reason"], "lost", "{run:#}");
    wait_until("the orphaned job to be killed", PATIENCE, || {
        processes_with(&outputs).is_empty()
    });
}
