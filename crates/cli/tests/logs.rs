//! Logs end to end: the per-attempt size cap, and following a run's log across its retries
//! (`logs -f` and the SSE endpoint, resumed exactly from any event id).

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;

/// Counts its attempts with files in `folder`, prints three lines naming the attempt, sleeps
/// `pause` seconds on the first one, and fails until the third.
const FLAKY: &str = "import os, time\n\
def handler(folder, pause=0):\n    \
    n = len(os.listdir(folder)) + 1\n    \
    open(os.path.join(folder, str(n)), 'w').close()\n    \
    if n == 1:\n        \
        time.sleep(pause)\n    \
    for i in range(3):\n        \
        print(f'attempt {n} line {i}', flush=True)\n    \
    if n < 3:\n        \
        raise RuntimeError(f'failing attempt {n}')\n    \
    return {'attempt': n}\n";

fn flaky_run(server: &TestServer, pause: u32) -> String {
    function(server, "flaky", FLAKY);
    let folder = server.work.path().join("count");
    std::fs::create_dir_all(&folder).expect("counter folder");
    submit(
        server,
        json!({"function": "flaky", "parameters": {"folder": folder.display().to_string(), "pause": pause},
               "retry": {"max_attempts": 3, "backoff_seconds": 0.5}}),
    )
}

fn follow(server: &TestServer, id: &str, last_event_id: &str) -> Vec<(String, String, String)> {
    let response = server
        .http
        .get(server.api(&format!("/projects/p/runs/{id}/logs?follow=true")))
        .header("Last-Event-ID", last_event_id)
        .send()
        .expect("GET logs");
    assert_eq!(response.status().as_u16(), 200);
    sse_events(&response.text().expect("SSE body"))
}

/// The stdout lines among `events`, with `--- attempt N ---` for attempt events.
fn printed(events: &[(String, String, String)]) -> Vec<String> {
    events
        .iter()
        .filter_map(|(event, _, data)| {
            let data: Value = serde_json::from_str(data).ok()?;
            match event.as_str() {
                "log" if data["stream"] == "stdout" => Some(data["line"].as_str()?.to_string()),
                "attempt" => Some(format!("--- attempt {} ---", data["attempt"])),
                _ => None,
            }
        })
        .collect()
}

#[test]
fn sse_follows_a_run_across_its_attempts_and_resumes_exactly_from_any_id() {
    let server = TestServer::start();
    let id = flaky_run(&server, 0);
    let run = wait_run_ended(&server, &id, Duration::from_secs(90));
    assert_eq!(run["status"]["state"], "COMPLETED", "{run:#}");
    assert_eq!(run["status"]["attempt"], 3);

    // From the start of the first attempt: every attempt's lines, in order, then the end.
    let all = follow(&server, &id, "1:0");
    let expected: Vec<String> = (1..=3)
        .flat_map(|n| {
            let separator = (n > 1).then(|| format!("--- attempt {n} ---"));
            separator
                .into_iter()
                .chain((0..3).map(move |i| format!("attempt {n} line {i}")))
        })
        .collect();
    assert_eq!(printed(&all), expected, "{all:#?}");
    let (last, _, end) = all.last().expect("events");
    assert_eq!(last, "end");
    let end: Value = serde_json::from_str(end).unwrap();
    assert_eq!(end, json!({"state": "COMPLETED", "attempt": 3}));
    for (event, event_id, _) in &all[..all.len() - 1] {
        assert!(
            event_id.split_once(':').is_some(),
            "{event} ids name the attempt: {event_id:?}"
        );
    }

    // Resuming after any event gives exactly the events after it: no loss, no duplicates.
    for (index, (_, event_id, _)) in all[..all.len() - 1].iter().enumerate() {
        let rest = follow(&server, &id, event_id);
        assert_eq!(
            printed(&rest),
            printed(&all[index + 1..]),
            "resumed from {event_id:?}"
        );
    }

    // A plain offset still resumes within the current (last) attempt.
    let third = all
        .iter()
        .find(|(event, _, data)| event == "log" && data.contains("attempt 3 line 0"))
        .expect("a line of attempt 3");
    let (attempt, offset) = third.1.split_once(':').unwrap();
    assert_eq!(attempt, "3");
    assert_eq!(
        printed(&follow(&server, &id, offset)),
        ["attempt 3 line 1", "attempt 3 line 2"]
    );

    // With an explicit attempt, only that attempt, with plain offsets as ids.
    let body = server
        .http
        .get(server.api(&format!("/projects/p/runs/{id}/logs?follow=true&attempt=1")))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let first = sse_events(&body);
    assert_eq!(
        printed(&first),
        ["attempt 1 line 0", "attempt 1 line 1", "attempt 1 line 2"]
    );
    assert!(first
        .iter()
        .filter(|(event, _, _)| event == "log")
        .all(|(_, event_id, _)| event_id.parse::<u64>().is_ok()));
}

#[test]
fn logs_follow_prints_every_attempt_with_a_separator() {
    let server = TestServer::start();
    // The first attempt waits, so the follower below starts on it.
    let id = flaky_run(&server, 3);
    let output = server.cli("p", &["logs", "-f", &id]);
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    let lines: Vec<&str> = out.lines().collect();
    let expected: Vec<String> = (1..=3)
        .flat_map(|n| (0..3).map(move |i| format!("attempt {n} line {i}")))
        .collect();
    assert_eq!(lines, expected, "stderr: {}", stderr(&output));
    let err = stderr(&output);
    let two = err
        .find("--- attempt 2 ---")
        .expect("a separator before attempt 2");
    let three = err
        .find("--- attempt 3 ---")
        .expect("a separator before attempt 3");
    assert!(two < three, "{err}");
    assert!(err.contains("failing attempt 1"), "{err}");
}

#[test]
fn a_chatty_run_stops_logging_at_its_task_log_limit_and_completes() {
    let server = TestServer::start();
    function(
        &server,
        "chatty",
        "def handler():\n    for i in range(5000):\n        print(f'line {i:05}', flush=True)\n    return 'done'\n",
    );
    let (status, task) = server.post(
        "/projects/p/tasks",
        &json!({"kind": "python+job", "metadata": {"name": "capped"}, "spec": {"function": "chatty", "log_limit_bytes": 4096}}),
    );
    assert_eq!(status, 200, "{task}");
    let id = submit(&server, json!({"function": "chatty", "task": "capped"}));
    let run = wait_run_ended(&server, &id, Duration::from_secs(60));
    assert_eq!(run["status"]["state"], "COMPLETED", "{run:#}");
    assert_eq!(run["status"]["results"], "done");
    assert_eq!(run["spec"]["settings"]["log_limit_bytes"], 4096);
    let (_, text) = server.get_text(&format!("/projects/p/runs/{id}/logs"));
    let lines: Vec<&str> = text.lines().collect();
    let marker = "runplane: log limit of 4096 bytes reached; further output is discarded";
    assert_eq!(
        lines.iter().filter(|line| **line == marker).count(),
        1,
        "{text}"
    );
    assert_eq!(lines.last(), Some(&marker), "{text}");
    let kept = &lines[..lines.len() - 1];
    assert!(kept.len() > 10 && kept.len() < 5000, "{} lines", kept.len());
    for (i, line) in kept.iter().enumerate() {
        assert_eq!(*line, format!("line {i:05}"));
    }
}
