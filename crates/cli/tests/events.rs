//! `GET /api/v1/events` against the real server: a run's lifecycle as events in the order the
//! store persisted it, exact resumption from any id (across a restart too), the project
//! filter, bad positions, and `get runs --watch`.

mod support;

use serde_json::{json, Value};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

const CODE: &str = "def handler(name='world'):\n    return {'greeting': 'hello ' + name}\n";

fn hello() -> Value {
    json!({"kind": "python", "metadata": {"name": "hello"}, "spec": {"handler": "handler", "source": {"code": CODE}}})
}

/// Applies `hello` in `project`, runs it to completion, returns the stored run.
fn completed_run(server: &TestServer, project: &str) -> Value {
    let (status, _) = server.post(&format!("/projects/{project}/functions"), &hello());
    assert!(status == 200 || status == 201, "apply: {status}");
    let (status, run) = server.post(
        &format!("/projects/{project}/runs"),
        &json!({"function": "hello"}),
    );
    assert_eq!(status, 201, "{run}");
    let id = run["metadata"]["id"].as_str().expect("run id").to_string();
    server.wait_state(project, &id, "COMPLETED", Duration::from_secs(60))
}

fn run_id(run: &Value) -> String {
    run["metadata"]["id"].as_str().expect("run id").to_string()
}

/// The terminal event of `run` (its COMPLETED change).
fn completes(run: &str) -> impl Fn(&SseEvent) -> bool + '_ {
    move |e| e.event == "run" && e.data["id"] == run && e.data["state"] == "COMPLETED"
}

/// The states the store recorded for `run`, in order.
fn recorded_states(run: &Value) -> Vec<String> {
    run["status"]["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["to"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn run_states(events: &[SseEvent], run: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "run" && e.data["id"] == run)
        .map(|e| e.data["state"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Stops the `--watch` process (it runs until Ctrl-C) however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The header `get runs --watch` prints once the table is out and the stream is open.
fn is_changes_header(line: &str) -> bool {
    line.split_whitespace().collect::<Vec<_>>() == ["ID", "STATE", "REASON"]
}

fn ids(events: &[SseEvent]) -> Vec<u64> {
    events.iter().map(|e| e.id).collect()
}

#[test]
fn a_run_lifecycle_is_told_in_order_and_resumes_exactly_from_any_id() {
    let server = TestServer::start();
    let run = completed_run(&server, "p");
    let id = run_id(&run);

    let all = server
        .open_events("?after=0&project=p", None)
        .until(completes(&id));
    assert_eq!(all[0].event, "function", "{all:?}");
    assert_eq!(all[0].data["name"], "hello");
    let states = run_states(&all, &id);
    assert_eq!(states.first().map(String::as_str), Some("CREATED"));
    assert_eq!(states.last().map(String::as_str), Some("COMPLETED"));
    assert_eq!(
        states,
        recorded_states(&run),
        "the store's history, in order"
    );
    assert!(
        all.windows(2).all(|w| w[0].id < w[1].id),
        "ids increase: {:?}",
        ids(&all)
    );
    for event in &all[1..] {
        assert_eq!(event.event, "run");
        assert_eq!(event.data["type"], "run");
        assert_eq!(event.data["project"], "p");
        assert!(event.data["attempt"].is_u64() && event.data["at"].is_string());
    }

    // Resuming after the k-th event gives exactly the rest: nothing lost, nothing repeated.
    let last = all.last().expect("events").id;
    for k in 0..all.len() - 1 {
        let rest = server
            .open_events("?project=p", Some(all[k].id))
            .until(|e| e.id == last);
        assert_eq!(ids(&rest), ids(&all[k + 1..]), "after event {k}");
        assert_eq!(rest, all[k + 1..]);
    }
    // Last-Event-ID wins over `after` (a reconnecting client repeats its first URL).
    let rest = server
        .open_events("?after=0&project=p", Some(all[1].id))
        .until(|e| e.id == last);
    assert_eq!(rest, all[2..]);
}

#[test]
fn a_live_stream_starts_now_and_sees_the_next_run() {
    let server = TestServer::start();
    let first = completed_run(&server, "p");

    // Without a position the stream starts at the newest event: `ready` says which.
    let mut stream = server.open_events("?project=p", None);
    let ready = stream.next_event();
    assert_eq!(ready.event, "ready");
    let (_, runs) = server.get("/projects/p/runs");
    assert_eq!(runs["items"].as_array().map(Vec::len), Some(1));

    let second = completed_run(&server, "p");
    let events = stream.until(completes(&run_id(&second)));
    assert!(events.iter().all(|e| e.id > ready.id));
    assert!(
        run_states(&events, &run_id(&first)).is_empty(),
        "{events:?}"
    );
    assert_eq!(
        run_states(&events, &run_id(&second)),
        recorded_states(&second)
    );
}

#[test]
fn resuming_after_a_server_restart_loses_nothing() {
    let server = TestServer::start();
    let first = completed_run(&server, "p");
    let before = server
        .open_events("?after=0&project=p", None)
        .until(completes(&run_id(&first)));
    let last_seen = before.last().expect("events").id;

    let server = server.restart_same_home();
    let second = completed_run(&server, "p");
    let second_id = run_id(&second);

    let resumed = server
        .open_events("?project=p", Some(last_seen))
        .until(completes(&second_id));
    assert!(resumed.iter().all(|e| e.id > last_seen), "{resumed:?}");
    assert_eq!(run_states(&resumed, &second_id), recorded_states(&second));
    assert!(run_states(&resumed, &run_id(&first)).is_empty());

    // The whole log is the old part, unchanged, followed by the new one.
    let everything = server
        .open_events("?after=0&project=p", None)
        .until(completes(&second_id));
    assert_eq!(everything[..before.len()], before[..]);
    assert_eq!(everything[before.len()..], resumed[..]);
}

#[test]
fn the_project_filter_keeps_one_project() {
    let server = TestServer::start();
    let one = completed_run(&server, "one");
    let two = completed_run(&server, "two");
    let two_id = run_id(&two);

    let everything = server
        .open_events("?after=0", None)
        .until(completes(&two_id));
    let only_two = server
        .open_events("?after=0&project=two", None)
        .until(completes(&two_id));
    let expected: Vec<SseEvent> = everything
        .iter()
        .filter(|e| e.data["project"] == "two")
        .cloned()
        .collect();
    assert_eq!(only_two, expected);
    assert!(run_states(&only_two, &run_id(&one)).is_empty());
    assert!(!run_states(&everything, &run_id(&one)).is_empty());
}

#[test]
fn bad_positions_are_problems_naming_the_field() {
    let server = TestServer::start();
    for (query, header, field) in [
        ("?after=abc", None, "after"),
        ("?after=-1", None, "after"),
        ("", Some("soon"), "Last-Event-ID"),
    ] {
        let mut request = server
            .http
            .get(format!("{}/api/v1/events{query}", server.url));
        if let Some(header) = header {
            request = request.header("Last-Event-ID", header);
        }
        let response = request.send().expect("GET /events");
        assert_eq!(response.status().as_u16(), 400, "{query} {header:?}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert_eq!(content_type, "application/problem+json");
        let problem: Value = response.json().expect("problem");
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }

    let openapi: Value = server
        .http
        .get(format!("{}/openapi.json", server.url))
        .send()
        .and_then(|r| r.json())
        .expect("openapi");
    assert!(
        openapi["paths"]["/api/v1/events"]["get"].is_object(),
        "documented in /openapi.json"
    );
}

/// `runplane get runs --watch` on project `p`: the process (killed when dropped) and its
/// stdout lines.
fn watch_runs(
    server: &TestServer,
) -> (
    KillOnDrop,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    let mut watch = Command::new(BIN)
        .args(["get", "runs", "--watch"])
        .env("RUNPLANE_URL", &server.url)
        .env("RUNPLANE_PROJECT", "p")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("runplane get runs --watch");
    let lines = std::io::BufReader::new(watch.stdout.take().expect("stdout")).lines();
    (KillOnDrop(watch), lines)
}

#[test]
fn get_runs_watch_prints_the_table_then_each_change() {
    let server = TestServer::start();
    let first = completed_run(&server, "p");

    let (_watch, mut lines) = watch_runs(&server);
    let mut next_line = || {
        lines
            .next()
            .expect("watch printed a line")
            .expect("watch output is text")
    };

    // The table (with the first run), then the header of the changes: the stream is open.
    let mut table = vec![];
    loop {
        let line = next_line();
        if is_changes_header(&line) {
            break;
        }
        table.push(line);
    }
    assert!(
        table.iter().any(|l| l.contains(&run_id(&first))),
        "{table:?}"
    );

    let second = completed_run(&server, "p");
    let second_id = run_id(&second);
    let mut states = vec![];
    while states.last().map(String::as_str) != Some("COMPLETED") {
        let line = next_line();
        let mut words = line.split_whitespace();
        if words.next() == Some(second_id.as_str()) {
            states.push(words.next().unwrap_or_default().to_string());
        }
    }
    assert_eq!(states, recorded_states(&second));
}

#[test]
fn get_runs_watch_resumes_after_a_server_restart() {
    let server = TestServer::start();
    let first = completed_run(&server, "p");

    let (_watch, mut lines) = watch_runs(&server);
    let mut next_line = || {
        lines
            .next()
            .expect("watch printed a line")
            .expect("watch output is text")
    };
    while !is_changes_header(&next_line()) {}

    // The stream drops with the server; the watcher reconnects from its last id.
    let server = server.restart_same_home();
    let second = completed_run(&server, "p");
    let second_id = run_id(&second);
    let mut printed = vec![];
    loop {
        let line = next_line();
        let mut words = line.split_whitespace();
        let id = words.next().unwrap_or_default().to_string();
        let state = words.next().unwrap_or_default().to_string();
        let done = id == second_id && state == "COMPLETED";
        printed.push((id, state));
        if done {
            break;
        }
    }
    let second_states: Vec<String> = printed
        .iter()
        .filter(|(id, _)| *id == second_id)
        .map(|(_, state)| state.clone())
        .collect();
    assert_eq!(second_states, recorded_states(&second), "{printed:?}");
    assert!(
        printed.iter().all(|(id, _)| *id != run_id(&first)),
        "nothing of before the restart is told again: {printed:?}"
    );
}
