//! Artifacts end to end: a real handler logs a file and a folder; the server stores them,
//! versioned by content, linked to the run, and serves them back.

mod support;

use serde_json::json;
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

const READER: &str = r#"
import os

def handler(model, dataset=None):
    assert os.path.isfile(model), model
    out = {"model": open(model).read()}
    if dataset is not None:
        out["dataset"] = sorted(
            os.path.relpath(os.path.join(root, f), dataset)
            for root, _, files in os.walk(dataset) for f in files)
    return out
"#;

#[test]
fn input_artifacts_reach_handlers_as_local_paths_pinned_at_submit() {
    let server = TestServer::start();
    function(&server, "logger", LOGGER);
    function(&server, "reader", READER);
    let logged = submit(&server, json!({"function": "logger"}));
    wait_run_ended(&server, &logged, Duration::from_secs(30));
    let (_, dataset) = server.get("/projects/p/artifacts/dataset");
    let dataset_key = dataset["status"]["key"].as_str().unwrap().to_string();

    // By name (the newest version) and by key.
    let read = submit(
        &server,
        json!({"function": "reader", "inputs": {"model": "model", "dataset": dataset_key}}),
    );
    let run = wait_run_ended(&server, &read, Duration::from_secs(30));
    assert_eq!(
        run["status"]["state"],
        "COMPLETED",
        "{run:#}\n{}",
        server.server_log()
    );
    assert_eq!(
        run["status"]["results"],
        json!({"model": "hello", "dataset": ["sub/a.csv"]})
    );
    let pinned = run["spec"]["inputs"]["model"].as_str().unwrap().to_string();
    assert!(pinned.contains("/model:"), "pinned to a version: {pinned}");

    // Lineage: the version lists its consumer.
    let (_, model) = server.get("/projects/p/artifacts/model");
    assert_eq!(model["status"]["consumers"], json!([read]), "{model:#}");

    // A newer version does not change what a rerun of the same run reads.
    let newer = submit(
        &server,
        json!({"function": "logger", "parameters": {"text": "bye"}}),
    );
    wait_run_ended(&server, &newer, Duration::from_secs(30));
    let (status, rerun) = server.post(&format!("/projects/p/runs/{read}/rerun"), &json!({}));
    assert_eq!(status, 201, "{rerun}");
    let rerun_id = rerun["metadata"]["id"].as_str().unwrap();
    let rerun = wait_run_ended(&server, rerun_id, Duration::from_secs(30));
    assert_eq!(rerun["status"]["results"]["model"], "hello", "{rerun:#}");
    // While a new run by name reads the newest.
    let fresh = submit(
        &server,
        json!({"function": "reader", "inputs": {"model": "model"}}),
    );
    let fresh = wait_run_ended(&server, &fresh, Duration::from_secs(30));
    assert_eq!(fresh["status"]["results"]["model"], "bye", "{fresh:#}");
}

#[test]
fn bad_inputs_are_refused_at_their_field() {
    let server = TestServer::start();
    function(&server, "logger", LOGGER);
    function(&server, "reader", READER);
    let logged = submit(&server, json!({"function": "logger"}));
    wait_run_ended(&server, &logged, Duration::from_secs(30));
    for (inputs, parameters, field, says) in [
        (
            json!({"model": "nope"}),
            json!({}),
            "inputs.model",
            "no artifact nope",
        ),
        (
            json!({"model": "model:0000"}),
            json!({}),
            "inputs.model",
            "no artifact model with version 0000",
        ),
        (
            json!({"model": "store://other/artifact/file/model:1"}),
            json!({}),
            "inputs.model",
            "project",
        ),
        (
            json!({"model": "store://p/function/python/model"}),
            json!({}),
            "inputs.model",
            "not an artifact key",
        ),
        (
            json!({"model": "model"}),
            json!({"model": "/etc/passwd"}),
            "inputs.model",
            "also given as a parameter",
        ),
        (json!({"other": "model"}), json!({}), "parameters.other", ""),
    ] {
        let (status, problem) = server.post(
            "/projects/p/runs",
            &json!({"function": "reader", "inputs": inputs, "parameters": parameters}),
        );
        assert_eq!(status, 422, "{inputs}: {problem}");
        assert!(fields(&problem).contains(&field.to_string()), "{problem:#}");
        assert!(problem.to_string().contains(says), "{problem:#}");
    }
}

#[test]
fn workflow_steps_pass_artifacts_along() {
    let server = TestServer::start();
    function(&server, "logger", LOGGER);
    function(&server, "reader", READER);
    let (status, body) = server.post(
        "/projects/p/functions",
        &json!({"kind": "pipeline", "metadata": {"name": "flow"}, "spec": {"steps": [
            {"name": "make", "function": "logger", "parameters": {"text": "from-make"}},
            {"name": "use", "function": "reader",
             "inputs": {"model": "${{ steps.make.artifacts.model }}"}},
        ]}}),
    );
    assert_eq!(status, 201, "{body}");
    let id = submit(&server, json!({"function": "flow"}));
    let run = wait_run_ended(&server, &id, Duration::from_secs(60));
    assert_eq!(
        run["status"]["state"],
        "COMPLETED",
        "{run:#}\n{}",
        server.server_log()
    );
    assert_eq!(
        run["status"]["results"]["steps"]["use"],
        json!({"model": "from-make"}),
        "{run:#}"
    );
}

#[test]
fn the_cli_lists_describes_downloads_and_feeds_artifacts() {
    let server = TestServer::start();
    function(&server, "logger", LOGGER);
    function(&server, "reader", READER);
    let logged = submit(&server, json!({"function": "logger"}));
    wait_run_ended(&server, &logged, Duration::from_secs(30));

    let listed = server.cli("p", &["get", "artifacts"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let table = stdout(&listed);
    assert!(table.contains("PRODUCED BY"), "{table}");
    assert!(
        table.contains("model") && table.contains("dataset"),
        "{table}"
    );
    assert!(table.contains(&logged), "{table}");

    let described = server.cli("p", &["describe", "artifact", "model", "-o", "json"]);
    let model: serde_json::Value = serde_json::from_str(&stdout(&described)).expect("json");
    let version = model["metadata"]["version"].as_str().unwrap().to_string();
    let pinned = server.cli(
        "p",
        &[
            "describe",
            "artifact",
            &format!("model:{version}"),
            "-o",
            "json",
        ],
    );
    assert!(pinned.status.success(), "{}", stderr(&pinned));

    // A file artifact: its file; a folder artifact: unpacked.
    let got = server.cli("p", &["download", "model", "-o", "-"]);
    assert_eq!(stdout(&got), "hello");
    let got = server.cli("p", &["download", "dataset", "-o", "ds"]);
    assert!(got.status.success(), "{}", stderr(&got));
    let unpacked = server.work.path().join("ds/sub/a.csv");
    assert_eq!(std::fs::read_to_string(unpacked).unwrap(), "x,y\n1,2\n");
    let again = server.cli("p", &["download", "dataset", "-o", "ds"]);
    assert_eq!(again.status.code(), Some(2), "no silent overwrite");
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    let one = server.cli("p", &["download", "dataset", "--path", "sub/a.csv"]);
    assert!(one.status.success(), "{}", stderr(&one));
    assert!(server.work.path().join("a.csv").is_file());

    let ran = server.cli(
        "p",
        &[
            "run",
            "reader",
            "--input",
            "model=model",
            "--wait",
            "-o",
            "json",
        ],
    );
    assert!(ran.status.success(), "{}", stderr(&ran));
    let results: serde_json::Value = serde_json::from_str(&stdout(&ran)).expect("results");
    assert_eq!(results["model"], "hello", "{results}");

    let deleted = server.cli("p", &["delete", "artifact", "model"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let gone = server.cli("p", &["describe", "artifact", "model"]);
    assert_ne!(gone.status.code(), Some(0));
}

#[test]
fn a_container_run_reads_its_inputs_from_a_read_only_mount() {
    let socket = std::env::var("RUNPLANE_ENGINE_SOCKET")
        .unwrap_or_else(|_| "/run/runplane-podman.sock".to_string());
    assert!(
        std::path::Path::new(&socket).exists(),
        "no engine socket at {socket}: run scripts/setup"
    );
    let server = TestServer::start_with(&["--engine-socket", &socket]);
    function(&server, "logger", LOGGER);
    function(
        &server,
        "writer",
        "import os\n\ndef handler(dataset):\n    try:\n        open(os.path.join(dataset, 'new'), 'w')\n        writable = True\n    except OSError:\n        writable = False\n    return {'where': dataset, 'files': sorted(os.listdir(os.path.join(dataset, 'sub'))), 'writable': writable}\n",
    );
    let logged = submit(&server, json!({"function": "logger"}));
    wait_run_ended(&server, &logged, Duration::from_secs(30));
    let id = submit(
        &server,
        json!({"function": "writer", "framework": "engine", "inputs": {"dataset": "dataset"}}),
    );
    let run = wait_run_ended(&server, &id, Duration::from_secs(90));
    assert_eq!(
        run["status"]["state"],
        "COMPLETED",
        "{run:#}\n{}",
        server.server_log()
    );
    assert_eq!(
        run["status"]["results"],
        json!({"where": "/runplane/inputs/dataset", "files": ["a.csv"], "writable": false})
    );
}
