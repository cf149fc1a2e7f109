//! Timeouts and retries through the REST API against the real server and real processes:
//! `timeout_seconds` and `retry` on tasks and on run requests.
//!
//! Bounds are generous (CI machines are small); orderings in time are checked on the stored
//! timestamps, not on the wall clock of the test.

mod support;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

/// Counts its attempts with one file per attempt in `folder`, prints which attempt it is, and
/// fails while the count is at most `fail_until`.
const FLAKY: &str = "import os\n\
def handler(folder, fail_until=2):\n    \
    n = len(os.listdir(folder)) + 1\n    \
    open(os.path.join(folder, str(n)), 'w').close()\n    \
    print(f'output of attempt {n}', flush=True)\n    \
    if n <= fail_until:\n        \
        raise RuntimeError(f'failing attempt {n}')\n    \
    return {'attempt': n}\n";

fn time(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|at| at.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("not a timestamp: {value}"))
}

fn counter_folder(server: &TestServer, name: &str) -> String {
    let folder = server.work.path().join(name);
    std::fs::create_dir_all(&folder).expect("counter folder");
    folder.display().to_string()
}

#[test]
fn a_job_past_its_timeout_ends_in_error_and_leaves_no_process() {
    let server = TestServer::start();
    let marker = format!("rp-timeout-{}", free_port());
    function(
        &server,
        "sleeper",
        "import subprocess, time\ndef handler():\n    subprocess.Popen(['sleep', '1000'])\n    print('sleeping', flush=True)\n    time.sleep(1000)\n",
    );
    let (status, task) = server.post(
        "/projects/p/tasks",
        &json!({"kind": "python+job", "metadata": {"name": "short"}, "spec": {"function": "sleeper", "timeout_seconds": 1, "env": {"RP_MARKER": marker}}}),
    );
    assert_eq!(status, 200, "{task}");
    let submitted = Instant::now();
    let id = submit(&server, json!({"function": "sleeper"}));
    let run = wait_run_ended(&server, &id, Duration::from_secs(60));
    assert!(
        submitted.elapsed() < Duration::from_secs(45),
        "the timeout took {:?}",
        submitted.elapsed()
    );
    assert_eq!(run["status"]["state"], "ERROR", "{run:#}");
    assert_eq!(run["status"]["reason"], "timeout");
    assert_eq!(run["spec"]["settings"]["timeout_seconds"], 1);
    let attempts = run["status"]["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "a timeout is not retried");
    assert_eq!(attempts[0]["reason"], "timeout");
    let ran_for = time(&attempts[0]["ended"]) - time(&attempts[0]["dispatched"]);
    assert!(
        ran_for >= chrono::TimeDelta::seconds(1),
        "stopped after {ran_for} only"
    );
    let stop = run["status"]["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .find(|t| t["to"] == "STOP")
        .expect("a STOP transition");
    assert_eq!(stop["reason"], "timeout");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_with(&marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes survived the timeout: {:?}",
            processes_with(&marker)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_flaky_handler_succeeds_on_its_third_attempt() {
    let server = TestServer::start();
    function(&server, "flaky", FLAKY);
    let folder = counter_folder(&server, "flaky-count");
    let id = submit(
        &server,
        json!({"function": "flaky", "parameters": {"folder": folder}, "retry": {"max_attempts": 3}}),
    );
    let run = wait_run_ended(&server, &id, Duration::from_secs(90));
    assert_eq!(run["status"]["state"], "COMPLETED", "{run:#}");
    assert_eq!(run["status"]["attempt"], 3);
    assert_eq!(run["status"]["results"], json!({"attempt": 3}));
    let attempts = run["status"]["attempts"].as_array().expect("attempts");
    let numbers: Vec<u64> = attempts
        .iter()
        .map(|a| a["number"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(numbers, [1, 2, 3]);
    for attempt in &attempts[..2] {
        assert_eq!(attempt["reason"], "failed", "{attempt}");
        assert_ne!(attempt["exit_code"], 0, "{attempt}");
        assert!(attempt["ended"].is_string(), "{attempt}");
    }
    assert_eq!(attempts[2]["exit_code"], 0);
    let retries: Vec<&Value> = run["status"]["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .filter(|t| t["to"] == "READY" && t["reason"] == "retrying")
        .collect();
    assert_eq!(retries.len(), 2, "{run:#}");
    let message = retries[0]["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("attempt 1 failed (failed: RuntimeError: failing attempt 1")
            && message.ends_with("; retrying in 0s"),
        "{message}"
    );

    // Each attempt has its own log.
    let (status, first) = server.get_text(&format!("/projects/p/runs/{id}/logs?attempt=1"));
    assert_eq!(status, 200);
    assert!(first.contains("output of attempt 1"), "{first}");
    assert!(!first.contains("output of attempt 2"), "{first}");
    let (_, last) = server.get_text(&format!("/projects/p/runs/{id}/logs"));
    assert!(last.contains("output of attempt 3"), "{last}");
}

#[test]
fn a_handler_that_always_fails_ends_after_its_last_attempt() {
    let server = TestServer::start();
    function(&server, "flaky", FLAKY);
    let folder = counter_folder(&server, "failing-count");
    let (status, task) = server.post(
        "/projects/p/tasks",
        &json!({"kind": "python+job", "metadata": {"name": "twice"}, "spec": {"function": "flaky", "retry": {"max_attempts": 2}}}),
    );
    assert_eq!(status, 200, "{task}");
    let id = submit(
        &server,
        json!({"function": "flaky", "parameters": {"folder": folder, "fail_until": 1000}}),
    );
    let run = wait_run_ended(&server, &id, Duration::from_secs(90));
    assert_eq!(run["status"]["state"], "ERROR", "{run:#}");
    assert_eq!(run["status"]["reason"], "failed");
    assert_eq!(run["status"]["attempt"], 2);
    assert_eq!(run["status"]["attempts"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        run["spec"]["settings"]["retry"],
        json!({"max_attempts": 2, "backoff_seconds": 0.0, "backoff_factor": 2.0, "on": ["failed", "lost", "killed"]})
    );
    // Nothing starts a third attempt.
    std::thread::sleep(Duration::from_millis(500));
    let count = std::fs::read_dir(&folder).map(|d| d.count()).unwrap_or(0);
    assert_eq!(count, 2);
}

#[test]
fn a_retry_waits_for_its_backoff() {
    let server = TestServer::start();
    function(&server, "flaky", FLAKY);
    let folder = counter_folder(&server, "backoff-count");
    let id = submit(
        &server,
        json!({"function": "flaky", "parameters": {"folder": folder, "fail_until": 1}, "retry": {"max_attempts": 2, "backoff_seconds": 1}}),
    );
    let run = wait_run_ended(&server, &id, Duration::from_secs(90));
    assert_eq!(run["status"]["state"], "COMPLETED", "{run:#}");
    let attempts = run["status"]["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2);
    let waited = time(&attempts[1]["dispatched"]) - time(&attempts[0]["ended"]);
    assert!(
        waited >= chrono::TimeDelta::seconds(1),
        "attempt 2 started {waited} after attempt 1 ended"
    );
    let retry = run["status"]["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .find(|t| t["reason"] == "retrying")
        .expect("a retry");
    assert!(
        retry["message"]
            .as_str()
            .unwrap_or("")
            .ends_with("retrying in 1s"),
        "{retry}"
    );
}

#[test]
fn a_stop_by_the_user_is_never_retried() {
    let server = TestServer::start();
    function(
        &server,
        "sleeper",
        "import time\ndef handler():\n    print('sleeping', flush=True)\n    time.sleep(1000)\n",
    );
    let id = submit(
        &server,
        json!({"function": "sleeper", "retry": {"max_attempts": 5, "on": ["failed", "killed", "lost"]}}),
    );
    server.wait_state("p", &id, "RUNNING", Duration::from_secs(30));
    let (status, body) = server.post(&format!("/projects/p/runs/{id}/stop"), &json!({}));
    assert_eq!(status, 200, "{body}");
    let run = wait_run_ended(&server, &id, Duration::from_secs(30));
    assert_eq!(run["status"]["state"], "STOPPED", "{run:#}");
    assert_eq!(run["status"]["reason"], "user");
    std::thread::sleep(Duration::from_millis(500));
    let (_, run) = server.get(&format!("/projects/p/runs/{id}"));
    assert_eq!(run["status"]["state"], "STOPPED");
    assert_eq!(run["status"]["attempt"], 1);
    assert_eq!(run["status"]["attempts"].as_array().map(Vec::len), Some(1));
}

#[test]
fn invalid_settings_are_rejected_with_field_paths() {
    let server = TestServer::start();
    function(&server, "flaky", FLAKY);
    let tasks: Vec<(Value, Vec<&str>)> = vec![
        (json!({"timeout_seconds": 0}), vec!["spec.timeout_seconds"]),
        (json!({"timeout_seconds": -3}), vec!["spec.timeout_seconds"]),
        (
            json!({"retry": {"max_attempts": 0}}),
            vec!["spec.retry.max_attempts"],
        ),
        (
            json!({"retry": {"max_attempts": 2, "backoff_seconds": -1, "backoff_factor": 0.5, "on": ["failed", "user"]}}),
            vec![
                "spec.retry.backoff_seconds",
                "spec.retry.backoff_factor",
                "spec.retry.on[1]",
            ],
        ),
        (
            json!({"retry": {"max_attempts": 2, "tries": 3}}),
            vec!["spec.retry.tries"],
        ),
        (json!({"retry": {}}), vec!["spec.retry"]),
    ];
    for (settings, expected) in tasks {
        let mut spec = json!({"function": "flaky"});
        for (key, value) in settings.as_object().expect("settings") {
            spec[key] = value.clone();
        }
        let (status, problem) = server.post(
            "/projects/p/tasks",
            &json!({"kind": "python+job", "metadata": {"name": "bad"}, "spec": spec}),
        );
        assert!((400..500).contains(&status), "{spec}: {status}");
        let got = fields(&problem);
        for field in &expected {
            assert!(
                got.iter().any(|f| f.starts_with(field)),
                "{spec}: expected a problem on {field}, got {problem:#}"
            );
        }
    }
    let (_, stored) = server.get("/projects/p/tasks/bad");
    assert!(stored["spec"].is_null(), "nothing stored: {stored}");

    let runs: Vec<(Value, Vec<&str>)> = vec![
        (json!({"timeout_seconds": 0}), vec!["timeout_seconds"]),
        (
            json!({"retry": {"max_attempts": 101}}),
            vec!["retry.max_attempts"],
        ),
        (
            json!({"retry": {"max_attempts": 2, "on": ["replaced"]}}),
            vec!["retry.on[0]"],
        ),
    ];
    for (settings, expected) in runs {
        let mut request = json!({"function": "flaky", "parameters": {"folder": "/nonexistent"}});
        for (key, value) in settings.as_object().expect("settings") {
            request[key] = value.clone();
        }
        let (status, problem) = server.post("/projects/p/runs", &request);
        assert!((400..500).contains(&status), "{request}: {status}");
        assert_eq!(fields(&problem), expected, "{request}: {problem:#}");
    }
    let (_, page) = server.get("/projects/p/runs");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(0));
}
