//! The REST contract against the real server: bad input, versions, idempotency, listing,
//! concurrency limits, OpenAPI.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;

fn hello(code: &str) -> Value {
    json!({"kind": "python", "metadata": {"name": "hello"}, "spec": {"handler": "handler", "source": {"code": code}}})
}

const CODE: &str = "def handler(name='world'):\n    return {'greeting': 'hello ' + name}\n";

#[test]
fn bad_documents_get_problems_naming_the_field_and_store_nothing() {
    let server = TestServer::start();
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"kind": "python", "metadata": {"name": "Bad_Name"}, "spec": {"handler": "handler", "source": {"code": CODE}}}),
            "metadata.name",
        ),
        (
            json!({"kind": "cobol", "metadata": {"name": "x"}, "spec": {}}),
            "kind",
        ),
        (
            json!({"kind": "python", "metadata": {"name": "x", "colour": "red"}, "spec": {}}),
            "metadata.colour",
        ),
        (
            json!({"kind": "python", "metadata": {"name": "x"}, "spec": {"handler": "missing", "source": {"code": CODE}}}),
            "spec.handler",
        ),
        (
            json!({"kind": "python", "metadata": {"name": "x"}, "spec": {"handler": "handler", "source": {"code": "def handler(:\n"}}}),
            "spec.source.code",
        ),
        (
            json!({"kind": "python", "metadata": {"name": "x"}, "spec": {"handler": "handler", "source": {"code": CODE}, "requirements": ["-r numpy.txt"]}}),
            "spec.requirements",
        ),
        (
            json!({"kind": "python", "metadata": {"name": "x"}, "spec": {"handler": "handler", "source": {"code": CODE}, "colour": 1}}),
            "spec.colour",
        ),
    ];
    for (document, field) in cases {
        let response = server
            .http
            .post(server.api("/projects/p/functions"))
            .json(&document)
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        let problem: Value = response.json().unwrap();
        assert!((400..500).contains(&status), "{document}: {status}");
        assert_eq!(content_type, "application/problem+json");
        assert!(
            fields(&problem).iter().any(|f| f.starts_with(field)),
            "{document}: expected a problem on {field}, got {problem:#}"
        );
    }
    // Malformed JSON.
    let response = server
        .http
        .post(server.api("/projects/p/functions"))
        .header("content-type", "application/json")
        .body("{\"kind\": ")
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    // Too large: announced by Content-Length, refused before the body is read. (A raw socket,
    // because an HTTP client that keeps writing after the answer sees a broken pipe instead.)
    assert_eq!(
        status_of_oversize_post(&server, "/projects/p/functions"),
        413
    );
    let (_, functions) = server.get("/projects/p/functions");
    assert_eq!(functions, json!([]));
    // The server is still fine.
    assert_eq!(server.post("/projects/p/functions", &hello(CODE)).0, 201);
}

fn status_of_oversize_post(server: &TestServer, path: &str) -> u16 {
    use std::io::{Read, Write};
    let address = server.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let head = format!(
        "POST /api/v1{path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        30 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&[b' '; 64 * 1024]).unwrap();
    let mut answer = [0u8; 512];
    let n = stream.read(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(text.contains("application/problem+json"), "{text}");
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[test]
fn runs_with_parameters_the_handler_does_not_take_are_rejected() {
    let server = TestServer::start();
    server.post("/projects/p/functions", &hello(CODE));
    let (status, problem) = server.post(
        "/projects/p/runs",
        &json!({"function": "hello", "parameters": {"nmae": "x"}}),
    );
    assert_eq!(status, 422, "{problem}");
    assert_eq!(fields(&problem), ["parameters.nmae"]);
    let (status, problem) = server.post("/projects/p/runs", &json!({"function": "nope"}));
    assert_eq!(status, 422);
    assert_eq!(fields(&problem), ["function"]);
    let (status, problem) = server.post(
        "/projects/p/runs",
        &json!({"function": "hello", "action": "fly"}),
    );
    assert_eq!(status, 422);
    assert_eq!(fields(&problem), ["action"]);
    let (status, problem) = server.post(
        "/projects/p/runs",
        &json!({"function": "hello", "framework": "mainframe"}),
    );
    assert_eq!(status, 422);
    assert_eq!(fields(&problem), ["framework"]);
    let (_, page) = server.get("/projects/p/runs");
    assert_eq!(page["items"], json!([]));
}

#[test]
fn the_cli_prints_problems_readably_and_exits_2() {
    let server = TestServer::start();
    let file = server.write("bad.yaml", "kind: python\nmetadata: {name: Bad}\nspec: {handler: h, source: {code: 'def h(): pass'}}\n");
    let output = server.cli("p", &["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("metadata.name"),
        "{}",
        stderr(&output)
    );
    let broken = server.write("broken.yaml", "kind: [\n");
    assert_eq!(
        server
            .cli("p", &["apply", "-f", broken.to_str().unwrap()])
            .status
            .code(),
        Some(2)
    );
    let unreachable = std::process::Command::new(BIN)
        .args(["get", "runs"])
        .env("RUNPLANE_URL", format!("http://127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(3));
}

#[test]
fn identical_specs_make_no_new_version() {
    let server = TestServer::start();
    let (status, v1) = server.post("/projects/p/functions", &hello(CODE));
    assert_eq!(status, 201);
    let (status, again) = server.post("/projects/p/functions", &hello(CODE));
    assert_eq!(status, 200);
    assert_eq!(again["metadata"]["version"], v1["metadata"]["version"]);
    let (status, v2) = server.post(
        "/projects/p/functions",
        &hello(&CODE.replace("hello ", "hi ")),
    );
    assert_eq!(status, 201);
    assert_ne!(v2["metadata"]["version"], v1["metadata"]["version"]);
    // Same as an older version: still no new version, latest stays the newest.
    let (status, back) = server.post("/projects/p/functions", &hello(CODE));
    assert_eq!(status, 200);
    assert_eq!(back["metadata"]["version"], v1["metadata"]["version"]);
    let (_, versions) = server.get("/projects/p/functions/hello/versions");
    assert_eq!(versions.as_array().unwrap().len(), 2);
    let (_, latest) = server.get("/projects/p/functions/hello");
    assert_eq!(latest["metadata"]["version"], v2["metadata"]["version"]);
    // Running a pinned version.
    let pinned = format!("hello:{}", v1["metadata"]["version"].as_str().unwrap());
    let (status, run) = server.post("/projects/p/runs", &json!({"function": pinned}));
    assert_eq!(status, 201);
    assert_eq!(run["spec"]["function_version"], v1["metadata"]["version"]);
}

#[test]
fn a_retried_run_request_with_the_same_idempotency_key_creates_one_run() {
    let server = TestServer::start();
    server.post("/projects/p/functions", &hello(CODE));
    let post = |key: &str, body: &Value| {
        let response = server
            .http
            .post(server.api("/projects/p/runs"))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().unwrap(),
        )
    };
    let body = json!({"function": "hello", "parameters": {"name": "A"}});
    let (first_status, first) = post("k-1", &body);
    let (second_status, second) = post("k-1", &body);
    assert_eq!((first_status, second_status), (201, 200));
    assert_eq!(first["metadata"]["id"], second["metadata"]["id"]);
    let (status, problem) = post(
        "k-1",
        &json!({"function": "hello", "parameters": {"name": "B"}}),
    );
    assert_eq!(status, 422, "{problem}");
    let (_, page) = server.get("/projects/p/runs");
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
}

#[test]
fn runs_are_listed_newest_first_with_filters_and_cursor_pages() {
    let server = TestServer::start();
    server.post("/projects/p/functions", &hello(CODE));
    let mut ids = vec![];
    for i in 0..5 {
        let (_, run) = server.post(
            "/projects/p/runs",
            &json!({"function": "hello", "labels": {"batch": if i % 2 == 0 { "even" } else { "odd" }}}),
        );
        ids.push(run["metadata"]["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        server.wait_state("p", id, "COMPLETED", Duration::from_secs(30));
    }
    let mut seen = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/projects/p/runs?limit=2&cursor={cursor}"),
            None => "/projects/p/runs?limit=2".to_string(),
        };
        let (status, page) = server.get(&path);
        assert_eq!(status, 200, "{page}");
        for run in page["items"].as_array().unwrap() {
            seen.push(run["metadata"]["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    let (_, odd) = server.get("/projects/p/runs?label=batch=odd");
    assert_eq!(odd["items"].as_array().unwrap().len(), 2);
    let (_, completed) = server.get("/projects/p/runs?state=COMPLETED&function=hello");
    assert_eq!(completed["items"].as_array().unwrap().len(), 5);
    let (_, none) = server.get("/projects/p/runs?state=RUNNING");
    assert_eq!(none["items"], json!([]));
    let (status, problem) = server.get("/projects/p/runs?state=FLYING");
    assert_eq!(status, 400);
    assert_eq!(fields(&problem), ["state"]);
}

#[test]
fn a_task_concurrency_limit_holds_runs_in_ready_with_a_reason() {
    let server = TestServer::start();
    let gate = server.work.path().join("open");
    let code = format!(
        "import os, time\ndef handler():\n    while not os.path.exists({:?}):\n        time.sleep(0.02)\n",
        gate.display().to_string()
    );
    server.post(
        "/projects/p/functions",
        &json!({"kind": "python", "metadata": {"name": "gated"}, "spec": {"handler": "handler", "source": {"code": code}}}),
    );
    let (status, task) = server.post(
        "/projects/p/tasks",
        &json!({"kind": "python+job", "metadata": {"name": "one-at-a-time"}, "spec": {"function": "gated", "max_concurrency": 1}}),
    );
    assert_eq!(status, 200, "{task}");
    let (_, first) = server.post("/projects/p/runs", &json!({"function": "gated"}));
    let (_, second) = server.post("/projects/p/runs", &json!({"function": "gated"}));
    let first_id = first["metadata"]["id"].as_str().unwrap();
    let second_id = second["metadata"]["id"].as_str().unwrap();
    assert_eq!(first["spec"]["task"], "one-at-a-time");
    server.wait_state("p", first_id, "RUNNING", Duration::from_secs(20));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, run) = server.get(&format!("/projects/p/runs/{second_id}"));
        assert_eq!(run["status"]["state"], "READY");
        if run["status"]["reason"] == "task_concurrency_limit" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{run}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(&gate, "").unwrap();
    server.wait_state("p", first_id, "COMPLETED", Duration::from_secs(20));
    server.wait_state("p", second_id, "COMPLETED", Duration::from_secs(20));
}

#[test]
fn a_run_stopped_before_it_starts_never_executes_and_can_be_resumed() {
    let server = TestServer::start_with(&["--max-concurrent-runs", "1"]);
    let gate = server.work.path().join("open");
    let code = format!(
        "import os, time\ndef handler():\n    while not os.path.exists({:?}):\n        time.sleep(0.02)\n    return 'ran'\n",
        gate.display().to_string()
    );
    server.post(
        "/projects/p/functions",
        &json!({"kind": "python", "metadata": {"name": "gated"}, "spec": {"handler": "handler", "source": {"code": code}}}),
    );
    let (_, first) = server.post("/projects/p/runs", &json!({"function": "gated"}));
    let (_, queued) = server.post("/projects/p/runs", &json!({"function": "gated"}));
    let first_id = first["metadata"]["id"].as_str().unwrap();
    let queued_id = queued["metadata"]["id"].as_str().unwrap();
    server.wait_state("p", first_id, "RUNNING", Duration::from_secs(20));
    let (status, stopped) = server.post(&format!("/projects/p/runs/{queued_id}/stop"), &json!({}));
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["status"]["state"], "STOPPED");
    assert_eq!(stopped["status"]["attempts"], json!([]));
    let (status, resumed) =
        server.post(&format!("/projects/p/runs/{queued_id}/resume"), &json!({}));
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["status"]["attempt"], 2);
    std::fs::write(&gate, "").unwrap();
    let done = server.wait_state("p", queued_id, "COMPLETED", Duration::from_secs(20));
    assert_eq!(done["status"]["results"], "ran");
}

#[test]
fn deleting_a_run_purges_its_logs_and_leaves_a_tombstone() {
    let server = TestServer::start();
    server.post(
        "/projects/p/functions",
        &json!({"kind": "python", "metadata": {"name": "talk"}, "spec": {"handler": "handler", "source": {"code": "def handler():\n    print('secret-ish output')\n    return 1\n"}}}),
    );
    let (_, run) = server.post("/projects/p/runs", &json!({"function": "talk"}));
    let id = run["metadata"]["id"].as_str().unwrap();
    server.wait_state("p", id, "COMPLETED", Duration::from_secs(20));
    assert!(stdout(&server.cli("p", &["logs", id])).contains("secret-ish"));
    let deleted = server.cli("p", &["delete", "run", id]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let (_, tombstone) = server.get(&format!("/projects/p/runs/{id}"));
    assert_eq!(tombstone["status"]["state"], "DELETED");
    assert!(tombstone["status"]["results"].is_null());
    assert_eq!(stdout(&server.cli("p", &["logs", id])), "");
}

#[test]
fn openapi_health_and_unknown_routes() {
    let server = TestServer::start();
    let spec: Value = server
        .http
        .get(format!("{}/openapi.json", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    for path in [
        "/api/v1/projects",
        "/api/v1/projects/{project}/functions",
        "/api/v1/projects/{project}/functions/{name}/versions/{version}",
        "/api/v1/projects/{project}/tasks",
        "/api/v1/projects/{project}/runs",
        "/api/v1/projects/{project}/runs/{id}/stop",
        "/api/v1/projects/{project}/runs/{id}/rerun",
        "/api/v1/projects/{project}/runs/{id}/logs",
        "/api/v1/version",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from openapi.json"
        );
    }
    assert!(spec["components"]["schemas"]["Run"].is_object());
    let (status, version) = server.get("/version");
    assert_eq!(status, 200);
    assert_eq!(
        version,
        json!({"server": env!("CARGO_PKG_VERSION"), "api": "v1"})
    );
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            server
                .http
                .get(format!("{}{path}", server.url))
                .send()
                .unwrap()
                .status()
                .as_u16(),
            200
        );
    }
    let response = server.http.get(server.api("/nothing/here")).send().unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

#[test]
fn schemas_describe_every_spec_kind() {
    let server = TestServer::start();
    let (status, kinds) = server.get("/schemas");
    assert_eq!(status, 200);
    assert_eq!(
        kinds,
        json!([
            "container",
            "pipeline",
            "python",
            "container+job",
            "container+deploy",
            "container+serve",
            "container+build",
            "pipeline+pipeline",
            "python+job",
            "python+serve",
            "python+build"
        ])
    );
    let (status, python) = server.get("/schemas/python");
    assert_eq!(status, 200);
    assert_eq!(python["required"], json!(["source", "handler"]));
    assert_eq!(python["additionalProperties"], false);
    let (status, task) = server.get("/schemas/python+job");
    assert_eq!(status, 200, "{task}");
    assert!(task["properties"]["function"].is_object(), "{task:#}");
    assert!(
        task["properties"]["timeout_seconds"].is_object(),
        "{task:#}"
    );
    // Self-contained: no reference into an OpenAPI document.
    assert!(!task.to_string().contains("$ref"), "{task:#}");
    let (status, problem) = server.get("/schemas/cobol");
    assert_eq!(status, 404, "{problem}");
}
