//! Secrets end to end: created with the CLI, never shown again, encrypted in the database,
//! handed to runs as env vars, redacted from their logs.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;

const VALUE: &str = "tok-8c1f0e2d-very-secret";

const PRINTS_TOKEN: &str = r#"
import os, time
def handler(wait_for=""):
    while wait_for and not os.path.exists(wait_for):
        time.sleep(0.02)
    token = os.environ["API_TOKEN"]
    print("token is " + token, flush=True)
    return {"length": len(token)}
"#;

fn create_secret(server: &TestServer, name: &str, value: &str) {
    let created = server.cli("p", &["create", "secret", name, "--value", value]);
    assert!(
        created.status.success(),
        "{}\n{}",
        stderr(&created),
        server.server_log()
    );
    assert!(!stdout(&created).contains(value));
}

fn apply_task(server: &TestServer, name: &str, function: &str, extra: Value) {
    let mut spec = json!({"function": function, "secrets": {"API_TOKEN": "api-token"}});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let (status, body) = server.post(
        "/projects/p/tasks",
        &json!({"kind": "python+job", "metadata": {"name": name}, "spec": spec}),
    );
    assert_eq!(status, 200, "{body}");
}

fn raw(server: &TestServer, path: &str) -> String {
    let (status, text) = server.get_text(path);
    assert_eq!(status, 200, "{path}: {text}");
    text
}

#[test]
fn secrets_reach_runs_as_env_and_never_come_back_out() {
    let server = TestServer::start();
    create_secret(&server, "api-token", VALUE);

    let listed = server.cli("p", &["get", "secrets"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let table = stdout(&listed);
    assert!(
        table.contains("NAME") && table.contains("UPDATED"),
        "{table}"
    );
    assert!(table.contains("api-token"), "{table}");
    assert!(!table.contains(VALUE), "{table}");
    for path in ["/projects/p/secrets", "/projects/p/secrets/api-token"] {
        let text = raw(&server, path);
        assert!(text.contains("api-token"), "{text}");
        assert!(!text.contains(VALUE), "{text}");
        assert!(!text.contains("value"), "not even a value field: {text}");
    }

    function(&server, "show", PRINTS_TOKEN);
    apply_task(&server, "show-job", "show", json!({}));
    let id = submit(&server, json!({"function": "show"}));
    let run = wait_run_ended(&server, &id, Duration::from_secs(60));
    assert_eq!(run["status"]["state"], "COMPLETED", "{run:#}");
    assert_eq!(run["status"]["results"]["length"], VALUE.len());
    assert_eq!(run["spec"]["settings"]["secrets"]["API_TOKEN"], "api-token");
    let run_json = raw(&server, &format!("/projects/p/runs/{id}"));
    assert!(!run_json.contains(VALUE), "{run_json}");

    let logs = server.cli("p", &["logs", &id]);
    assert!(logs.status.success(), "{}", stderr(&logs));
    assert_eq!(stdout(&logs), "token is [REDACTED]\n");

    // The database holds the ciphertext only (WAL included).
    for file in ["runplane.db", "runplane.db-wal"] {
        if let Ok(bytes) = std::fs::read(server.home.path().join(file)) {
            assert!(
                !bytes.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()),
                "{file} holds the plaintext"
            );
        }
    }
    let key = std::fs::metadata(server.home.path().join("secret.key")).expect("key file");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );

    let deleted = server.cli("p", &["delete", "secrets", "api-token"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let (status, _) = server.get("/projects/p/secrets/api-token");
    assert_eq!(status, 404);
}

#[test]
fn invalid_secrets_and_missing_references_are_422_with_fields() {
    let server = TestServer::start();
    let (status, problem) = server.post(
        "/projects/p/secrets",
        &json!({"name": "Not_A_Name", "value": ""}),
    );
    assert_eq!(status, 422, "{problem}");
    assert_eq!(fields(&problem), ["name", "value"]);
    let (status, problem) = server.post(
        "/projects/p/secrets",
        &json!({"name": "big", "value": "x".repeat(64 * 1024 + 1)}),
    );
    assert_eq!(status, 422, "{problem}");
    assert_eq!(fields(&problem), ["value"]);

    function(&server, "show", PRINTS_TOKEN);
    let (status, problem) = server.post(
        "/projects/p/runs",
        &json!({"function": "show", "secrets": {"API_TOKEN": "x"}}),
    );
    assert_eq!(status, 422, "{problem}");
    assert_eq!(fields(&problem), ["secrets.API_TOKEN"]);
    assert!(
        problem
            .to_string()
            .contains("secret \\\"x\\\" does not exist in project p"),
        "{problem}"
    );
    let (_, runs) = server.get("/projects/p/runs");
    assert_eq!(runs["items"], json!([]), "nothing stored");
}

#[test]
fn a_secret_deleted_before_dispatch_ends_the_run_secret_missing() {
    let server = TestServer::start();
    create_secret(&server, "api-token", VALUE);
    function(&server, "show", PRINTS_TOKEN);
    apply_task(
        &server,
        "one-at-a-time",
        "show",
        json!({"max_concurrency": 1}),
    );
    let gate = server.work.path().join("gate");
    let gate = gate.to_str().expect("utf-8 path");
    let first = submit(
        &server,
        json!({"function": "show", "parameters": {"wait_for": gate}}),
    );
    server.wait_state("p", &first, "RUNNING", Duration::from_secs(30));
    let second = submit(&server, json!({"function": "show"}));
    let deleted = server.cli("p", &["delete", "secret", "api-token"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    std::fs::write(server.work.path().join("gate"), "").expect("open the gate");

    let first = wait_run_ended(&server, &first, Duration::from_secs(60));
    assert_eq!(first["status"]["state"], "COMPLETED", "{first:#}");
    let second = wait_run_ended(&server, &second, Duration::from_secs(60));
    assert_eq!(second["status"]["state"], "ERROR", "{second:#}");
    assert_eq!(second["status"]["reason"], "secret_missing");
    let message = second["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("api-token"), "{message}");
}

#[test]
fn services_see_secrets_in_their_env() {
    let server = TestServer::start();
    create_secret(&server, "api-token", VALUE);
    let (status, body) = server.post(
        "/projects/p/functions",
        &json!({"kind": "python", "metadata": {"name": "svc"}, "spec": {
            "handler": "handler",
            "source": {"code": "import os\ndef handler(request):\n    return {\"length\": len(os.environ[\"API_TOKEN\"])}\n"},
        }}),
    );
    assert_eq!(status, 201, "{body}");
    let (status, run) = server.post(
        "/projects/p/runs",
        &json!({"function": "svc", "action": "serve", "secrets": {"API_TOKEN": "api-token"}}),
    );
    assert_eq!(status, 201, "{run}");
    let id = run["metadata"]["id"].as_str().expect("id").to_string();
    server.wait_state("p", &id, "RUNNING", Duration::from_secs(60));
    let answer: Value = server
        .http
        .get(format!("{}/services/p/svc/", server.url))
        .send()
        .expect("GET through the gateway")
        .json()
        .expect("JSON");
    assert_eq!(answer["length"], VALUE.len());
    let stopped = server.cli("p", &["stop", &id]);
    assert!(stopped.status.success(), "{}", stderr(&stopped));
}
