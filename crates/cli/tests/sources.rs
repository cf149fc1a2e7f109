//! Function code from local folders: packed by `apply`, stored in the version, executed from
//! the version (never from the client's files).

mod support;

use serde_json::Value;
use std::time::Duration;
use support::*;

#[test]
fn a_packed_folder_runs_from_the_stored_version_and_honours_runplaneignore() {
    let server = TestServer::start();
    server.write("proj/src/pkg/__init__.py", "");
    server.write("proj/src/pkg/util.py", "def double(x):\n    return 2 * x\n");
    server.write(
        "proj/src/pkg/train.py",
        "from .util import double\n\ndef handler(context, n: int = 2):\n    context.log_metric('n', n)\n    return {'doubled': double(n), 'files': sorted(__import__('os').listdir('pkg'))}\n",
    );
    server.write("proj/src/pkg/data.bin", &"x".repeat(4096));
    server.write("proj/src/.runplaneignore", "*.bin\n");
    let file = server.write(
        "proj/train.yaml",
        "kind: python\nmetadata: {name: train}\nspec:\n  handler: pkg.train:handler\n  source: {path: ./src}\n",
    );
    let applied = server.cli("p", &["apply", "-f", file.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    // The run must not read the client's files: remove them first.
    std::fs::remove_dir_all(server.work.path().join("proj")).unwrap();
    let ran = server.cli("p", &["run", "train", "-p", "n=21", "--wait", "-o", "json"]);
    assert!(
        ran.status.success(),
        "{}\n{}",
        stderr(&ran),
        server.server_log()
    );
    let results: Value = serde_json::from_str(&stdout(&ran)).unwrap();
    assert_eq!(results["doubled"], 42);
    let files: Vec<&str> = results["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        files.contains(&"util.py") && !files.contains(&"data.bin"),
        "{files:?}"
    );
}

#[test]
fn repacking_the_same_files_makes_no_new_version() {
    let server = TestServer::start();
    server.write("a/src/main.py", "def handler():\n    return 1\n");
    let file = server.write(
        "a/f.yaml",
        "kind: python\nmetadata: {name: f}\nspec: {handler: handler, source: {path: ./src}}\n",
    );
    let first = server.cli("p", &["apply", "-f", file.to_str().unwrap()]);
    assert!(stdout(&first).contains("created"), "{}", stderr(&first));
    // Touching the files changes their times, not their content.
    std::thread::sleep(Duration::from_millis(1100));
    server.write("a/src/main.py", "def handler():\n    return 1\n");
    let second = server.cli("p", &["apply", "-f", file.to_str().unwrap()]);
    assert!(stdout(&second).contains("unchanged"), "{}", stdout(&second));
}

#[test]
fn sse_logs_resume_from_the_last_event_id_without_loss_or_duplicates() {
    let server = TestServer::start();
    let code = "def handler():\n    for i in range(200):\n        print(f'line {i}')\n";
    server.post(
        "/projects/p/functions",
        &serde_json::json!({"kind": "python", "metadata": {"name": "chatty"}, "spec": {"handler": "handler", "source": {"code": code}}}),
    );
    let (_, run) = server.post(
        "/projects/p/runs",
        &serde_json::json!({"function": "chatty"}),
    );
    let id = run["metadata"]["id"].as_str().unwrap();
    server.wait_state("p", id, "COMPLETED", Duration::from_secs(20));
    let url = server.api(&format!("/projects/p/runs/{id}/logs?follow=true"));
    let events = |last_event_id: Option<&str>| -> Vec<(String, String, String)> {
        let mut request = server.http.get(&url);
        if let Some(last) = last_event_id {
            request = request.header("Last-Event-ID", last);
        }
        sse_events(&request.send().unwrap().text().unwrap())
    };
    let all = events(None);
    let lines = log_lines(&all);
    assert_eq!(
        lines,
        (0..200).map(|i| format!("line {i}")).collect::<Vec<_>>()
    );
    assert_eq!(all.last().unwrap().0, "end");
    // Resume after the 50th line: exactly the other 150 follow.
    let resume_id = &all[49].1;
    let rest = log_lines(&events(Some(resume_id)));
    assert_eq!(
        rest,
        (50..200).map(|i| format!("line {i}")).collect::<Vec<_>>()
    );
    // The plain endpoint returns the same text.
    let plain = server
        .http
        .get(server.api(&format!("/projects/p/runs/{id}/logs")))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(
        plain,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>()
    );
}

/// The text of every `log` event.
fn log_lines(events: &[(String, String, String)]) -> Vec<String> {
    events
        .iter()
        .filter(|(event, _, _)| event == "log")
        .map(|(_, _, data)| {
            let line: Value = serde_json::from_str(data).unwrap();
            line["line"].as_str().unwrap().to_string()
        })
        .collect()
}
