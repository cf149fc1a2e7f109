//! Artifacts end to end: a real handler logs a file and a folder; the server stores them,
//! versioned by content, linked to the run, and serves them back.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;

const LOGGER: &str = r#"
import os, tempfile

def handler(context, text="hello"):
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "model.txt"), "w") as f:
        f.write(text)
    os.makedirs(os.path.join(d, "data", "sub"))
    with open(os.path.join(d, "data", "sub", "a.csv"), "w") as f:
        f.write("x,y\n1,2\n")
    context.log_artifact("model", os.path.join(d, "model.txt"))
    context.log_artifact("dataset", os.path.join(d, "data"), labels={"split": "train"})
    return "ok"
"#;

#[test]
fn logged_files_and_folders_are_stored_versioned_and_served() {
    let server = TestServer::start();
    function(&server, "logger", LOGGER);
    let first = submit(&server, json!({"function": "logger"}));
    let run = wait_run_ended(&server, &first, Duration::from_secs(30));
    assert_eq!(
        run["status"]["state"],
        "COMPLETED",
        "{run:#}\n{}",
        server.server_log()
    );
    let keys = &run["status"]["artifacts"];
    assert!(
        keys["model"]
            .as_str()
            .unwrap()
            .starts_with("store://p/artifact/"),
        "{keys}"
    );
    assert!(keys["dataset"].is_string(), "{keys}");

    let (status, listed) = server.get(&format!("/projects/p/artifacts?produced_by={first}"));
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");
    let (_, model) = server.get("/projects/p/artifacts/model");
    assert_eq!(model["status"]["key"], keys["model"], "{model}");
    let version = model["metadata"]["version"].as_str().unwrap().to_string();
    let download = server
        .http
        .get(server.api(&format!(
            "/projects/p/artifacts/model/versions/{version}/download"
        )))
        .send()
        .unwrap();
    assert_eq!(download.status().as_u16(), 200);
    assert_eq!(download.text().unwrap(), "hello");
    let (_, dataset) = server.get("/projects/p/artifacts/dataset");
    let dataset_version = dataset["metadata"]["version"].as_str().unwrap();
    let one = server
        .http
        .get(server.api(&format!(
            "/projects/p/artifacts/dataset/versions/{dataset_version}/download?path=sub/a.csv"
        )))
        .send()
        .unwrap();
    assert_eq!(one.text().unwrap(), "x,y\n1,2\n");

    // The same content again: no new version; other content: a new one.
    let again = submit(&server, json!({"function": "logger"}));
    wait_run_ended(&server, &again, Duration::from_secs(30));
    let versions = |server: &TestServer| {
        let (_, versions) = server.get("/projects/p/artifacts/model/versions");
        versions["items"].as_array().expect("items").len()
    };
    assert_eq!(versions(&server), 1);
    let other = submit(
        &server,
        json!({"function": "logger", "parameters": {"text": "bye"}}),
    );
    wait_run_ended(&server, &other, Duration::from_secs(30));
    assert_eq!(versions(&server), 2);
}

#[test]
fn a_missing_path_fails_the_run_with_a_clear_message() {
    let server = TestServer::start();
    function(
        &server,
        "broken",
        "def handler(context):\n    context.log_artifact('model', '/no/such/file')\n",
    );
    let id = submit(&server, json!({"function": "broken"}));
    let run = wait_run_ended(&server, &id, Duration::from_secs(30));
    assert_eq!(run["status"]["state"], "ERROR");
    let message = run["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("/no/such/file"), "{run:#}");
}

#[test]
fn input_artifacts_are_refused_until_they_are_supported() {
    let server = TestServer::start();
    function(
        &server,
        "reader",
        "def handler(data=None):\n    return data\n",
    );
    let (status, problem): (u16, Value) = server.post(
        "/projects/p/runs",
        &json!({"function": "reader", "inputs": {"data": "dataset"}}),
    );
    assert_eq!(status, 422, "{problem}");
    assert_eq!(fields(&problem), ["inputs"]);
}
