//! Builds end to end on the engine framework (real Podman): a Python function with a
//! third-party requirement built into an image — a new version pinned to it, listed beside the
//! original — then run in that image as a job (with a secret that never reaches its log) and
//! as a service behind the gateway.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;

const WORDSTATS: &str = include_str!("../../../examples/wordstats/function.yaml");

fn socket() -> String {
    let socket = std::env::var("RUNPLANE_ENGINE_SOCKET")
        .unwrap_or_else(|_| "/run/runplane-podman.sock".to_string());
    assert!(
        std::path::Path::new(&socket).exists(),
        "no engine socket at {socket}: run scripts/setup"
    );
    socket
}

fn remove_image(image: &str) {
    let _ = std::process::Command::new("podman")
        .args(["rmi", "-f", image])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

fn run_json(server: &TestServer, args: &[&str]) -> Value {
    let output = server.cli("p", args);
    assert!(
        output.status.success(),
        "{args:?}: {}\n{}\n{}",
        stdout(&output),
        stderr(&output),
        server.server_log()
    );
    serde_json::from_str(&stdout(&output)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&output)))
}

#[test]
fn a_python_function_is_built_into_an_image_and_runs_there_as_job_and_service() {
    let server = TestServer::start_with(&["--engine-socket", &socket()]);
    let file = server.write("wordstats.yaml", WORDSTATS);
    let applied = server.cli("p", &["apply", "-f", &file.display().to_string()]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let (_, source) = server.get("/projects/p/functions/wordstats");
    let source_version = source["metadata"]["version"]
        .as_str()
        .expect("version")
        .to_string();

    // Build: a new version that pins the image and says what it was built from.
    let built = run_json(
        &server,
        &[
            "run",
            "wordstats",
            "--action",
            "build",
            "--framework",
            "engine",
            "--wait",
            "-o",
            "json",
        ],
    );
    let image = built["image"]
        .as_str()
        .expect("image in results")
        .to_string();
    let new_version = built["version"]
        .as_str()
        .expect("version in results")
        .to_string();
    assert_ne!(new_version, source_version);
    let (_, latest) = server.get("/projects/p/functions/wordstats");
    assert_eq!(
        latest["metadata"]["version"],
        new_version.as_str(),
        "{latest:#}"
    );
    assert_eq!(
        latest["spec"]["built_from"]["version"],
        source_version.as_str()
    );
    assert!(latest["spec"]["image"].as_str().is_some(), "{latest:#}");
    assert_eq!(
        latest["spec"]["lock"], source["spec"]["lock"],
        "the lock is kept"
    );
    let (_, original) = server.get(&format!(
        "/projects/p/functions/wordstats/versions/{source_version}"
    ));
    assert!(
        original["spec"].get("image").is_none(),
        "the source version is untouched"
    );
    let listed = server.cli("p", &["get", "functions", "wordstats"]);
    let table = stdout(&listed);
    assert!(
        table.contains(&source_version) && table.contains(&new_version),
        "{table}"
    );
    let inspect = std::process::Command::new("podman")
        .args(["image", "exists", &image])
        .status()
        .expect("podman");
    assert!(inspect.success(), "{image} exists on the engine");

    // A job of the built version, in its image, with a secret.
    let secret_value = "s3cr3t-token-value-42";
    let created = server.cli(
        "p",
        &["create", "secret", "api-token", "--value", secret_value],
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let (status, run) = server.post(
        "/projects/p/runs",
        &json!({"function": "wordstats", "framework": "engine",
                "parameters": {"text": "b a b c b a"},
                "secrets": {"API_TOKEN": "api-token"}}),
    );
    assert_eq!(status, 201, "{run}");
    let id = run["metadata"]["id"].as_str().expect("id").to_string();
    let run = wait_run_ended(&server, &id, Duration::from_secs(120));
    assert_eq!(run["status"]["state"], "COMPLETED", "{run:#}");
    assert_eq!(run["spec"]["function_version"], new_version.as_str());
    let results = &run["status"]["results"];
    assert_eq!(results["top"], json!({"b": 3, "a": 2, "c": 1}), "{results}");
    assert_eq!(results["has_token"], true);
    assert!(results["six"].as_str().is_some_and(|v| v.starts_with("1.")));
    let logs = stdout(&server.cli("p", &["logs", &id]));
    assert!(logs.contains("using token [REDACTED]"), "{logs}");
    assert!(!logs.contains(secret_value), "{logs}");

    // The same version as a service on the engine, through the gateway.
    let serving = server.cli(
        "p",
        &[
            "run",
            "wordstats",
            "--action",
            "serve",
            "--framework",
            "engine",
            "--wait",
        ],
    );
    assert!(
        serving.status.success(),
        "{}\n{}",
        stderr(&serving),
        server.server_log()
    );
    let answer = server.cli(
        "p",
        &[
            "invoke",
            "wordstats",
            "--data",
            r#"{"text": "to be or not to be"}"#,
        ],
    );
    assert!(answer.status.success(), "{}", stderr(&answer));
    let body: Value = serde_json::from_str(&stdout(&answer)).expect("json answer");
    assert_eq!(body["top"], json!({"to": 2, "be": 2, "or": 1}), "{body}");
    let deleted = server.cli("p", &["delete", "services", "wordstats"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    remove_image(&image);
}

#[test]
fn a_containerfile_that_fails_ends_the_build_in_error_with_the_builders_output() {
    let server = TestServer::start_with(&["--engine-socket", &socket()]);
    let (status, body) = server.post(
        "/projects/p/functions",
        &json!({"kind": "container", "metadata": {"name": "broken"},
                "spec": {"build": {"containerfile":
                    "FROM localhost/runplane-busybox:latest\nRUN echo about to fail && exit 7\n"}}}),
    );
    assert_eq!(status, 201, "{body}");
    let id = submit(
        &server,
        json!({"function": "broken", "action": "build", "framework": "engine"}),
    );
    let run = wait_run_ended(&server, &id, Duration::from_secs(120));
    assert_eq!(run["status"]["state"], "ERROR", "{run:#}");
    assert_eq!(run["status"]["reason"], "build_failed", "{run:#}");
    let logs = stdout(&server.cli("p", &["logs", &id]));
    assert!(logs.contains("about to fail"), "{logs}");
    let (_, versions) = server.get("/projects/p/functions/broken/versions");
    assert_eq!(versions.as_array().map(Vec::len), Some(1), "{versions:#}");
}

#[test]
fn container_functions_run_as_jobs_and_services_and_build_from_a_containerfile() {
    let server = TestServer::start_with(&["--engine-socket", &socket()]);
    let (status, body) = server.post(
        "/projects/p/functions",
        &json!({"kind": "container", "metadata": {"name": "shell"},
                "spec": {"image": "localhost/runplane-busybox:latest",
                         "command": ["/bin/sh", "-c"],
                         "args": ["echo \"hello $RUNPLANE_PARAM_WHO\"; echo '{\"ok\": true}' > $RUNPLANE_OUTPUTS/results.json"]}}),
    );
    assert_eq!(status, 201, "{body}");
    let id = submit(
        &server,
        json!({"function": "shell", "framework": "engine", "parameters": {"who": "ada"}}),
    );
    let run = wait_run_ended(&server, &id, Duration::from_secs(60));
    assert_eq!(run["status"]["state"], "COMPLETED", "{run:#}");
    assert_eq!(run["status"]["results"], json!({"ok": true}));
    assert!(stdout(&server.cli("p", &["logs", &id])).contains("hello ada"));

    // A build from a Containerfile: a new version whose image holds what was copied in.
    let (status, body) = server.post(
        "/projects/p/functions",
        &json!({"kind": "container", "metadata": {"name": "web"},
                "spec": {"command": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
                         "port": 8080,
                         "build": {"containerfile":
                            "FROM localhost/runplane-busybox:latest\nRUN mkdir -p /www && echo built-page > /www/index.html\n"}}}),
    );
    assert_eq!(status, 201, "{body}");
    let id = submit(
        &server,
        json!({"function": "web", "action": "build", "framework": "engine"}),
    );
    let build = wait_run_ended(&server, &id, Duration::from_secs(120));
    assert_eq!(build["status"]["state"], "COMPLETED", "{build:#}");
    let image = build["status"]["results"]["image"]
        .as_str()
        .expect("image")
        .to_string();

    // Served from the built image through the gateway.
    let serving = server.cli(
        "p",
        &[
            "run",
            "web",
            "--action",
            "serve",
            "--framework",
            "engine",
            "--wait",
        ],
    );
    assert!(
        serving.status.success(),
        "{}\n{}",
        stderr(&serving),
        server.server_log()
    );
    let response = server
        .http
        .get(format!("{}/services/p/web/index.html", server.url))
        .send()
        .expect("GET through the gateway");
    let status = response.status().as_u16();
    let page = response.text().unwrap_or_default();
    assert_eq!(status, 200, "{page}");
    assert_eq!(page.trim(), "built-page");
    let deleted = server.cli("p", &["delete", "services", "web"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    remove_image(&image);
}

#[test]
fn a_container_function_is_refused_on_a_framework_without_containers() {
    let server = TestServer::start();
    let (status, body) = server.post(
        "/projects/p/functions",
        &json!({"kind": "container", "metadata": {"name": "shell"},
                "spec": {"image": "localhost/runplane-busybox:latest", "command": ["/bin/true"]}}),
    );
    assert_eq!(status, 201, "{body}");
    let (status, problem) = server.post("/projects/p/runs", &json!({"function": "shell"}));
    assert_eq!(status, 422, "{problem}");
    assert_eq!(fields(&problem), ["framework"], "{problem}");
    assert!(problem.to_string().contains("--engine-socket"), "{problem}");
    let (_, runs) = server.get("/projects/p/runs");
    assert_eq!(runs["items"].as_array().map(Vec::len), Some(0), "{runs}");
}
