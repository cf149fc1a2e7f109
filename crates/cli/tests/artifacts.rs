//! Artifacts end to end: a real handler logs a file and a folder; the server stores them,
//! versioned by content, linked to the run, and serves them back.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;

#[allow(dead_code)]
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
