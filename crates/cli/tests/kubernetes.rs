//! The kubernetes framework wired into the server (no API server can run here: one that is
//! down stands in). A run on it ends with a clear reason and the server keeps working; the
//! outputs endpoint takes only the run's own token.

mod support;

use serde_json::json;
use std::time::Duration;
use support::*;

fn down_cluster_kubeconfig(dir: &std::path::Path) -> std::path::PathBuf {
    let port = free_port();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters: [{{name: test, cluster: {{server: \"https://127.0.0.1:{port}\", insecure-skip-tls-verify: true}}}}]\n\
             users: [{{name: test, user: {{token: abc}}}}]\n\
             contexts: [{{name: test, context: {{cluster: test, user: test, namespace: runs}}}}]\n"
        ),
    )
    .expect("kubeconfig");
    path
}

#[test]
fn a_run_on_an_unreachable_cluster_fails_clearly_and_the_server_keeps_working() {
    let dir = tempfile::tempdir().expect("tmp");
    let kubeconfig = down_cluster_kubeconfig(dir.path());
    let server = TestServer::start_with(&[
        "--kubernetes-namespace",
        "runs",
        "--kubeconfig",
        &kubeconfig.display().to_string(),
    ]);
    function(&server, "hello", "def handler():\n    return 'hi'\n");
    let id = submit(
        &server,
        json!({"function": "hello", "framework": "kubernetes"}),
    );
    let run = wait_run_ended(&server, &id, Duration::from_secs(60));
    assert_eq!(run["status"]["state"], "ERROR", "{run:#}");
    assert_eq!(run["status"]["reason"], "start_failed", "{run:#}");
    let message = run["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the Kubernetes API server cannot be reached"),
        "{message}"
    );
    // The server still runs local jobs.
    let local = submit(&server, json!({"function": "hello"}));
    let local = wait_run_ended(&server, &local, Duration::from_secs(30));
    assert_eq!(local["status"]["results"], "hi", "{local:#}");

    // Outputs uploads: a token is required, and only the attempt's own token opens it.
    let url = server.api(&format!("/outputs/{id}/1"));
    let none = server.http.put(&url).body("{}").send().expect("PUT");
    assert_eq!(none.status().as_u16(), 401);
    let wrong = server
        .http
        .put(&url)
        .bearer_auth("not-the-token")
        .body(r#"{"files": []}"#)
        .send()
        .expect("PUT");
    assert_eq!(wrong.status().as_u16(), 403);
    // Outputs may be larger than other requests (the runner keeps up to 64 MiB, base64 in
    // JSON): a 40 MiB upload is read and judged by its token, not refused for its size.
    let big = format!(r#"{{"files": [], "pad": "{}"}}"#, "x".repeat(40 << 20));
    let response = server
        .http
        .put(&url)
        .bearer_auth("not-the-token")
        .body(big)
        .send()
        .expect("PUT");
    assert_eq!(response.status().as_u16(), 403);
    // Other requests keep the general limit, refused on their Content-Length alone: the
    // headers are sent without the body (a client still writing a body the server refused
    // meets a closed connection, which is not what this checks).
    assert_eq!(
        status_for_headers_only(&server, "/projects/p/runs", 40 << 20),
        413,
        "other requests keep the general limit"
    );
}

/// The status a POST of `length` declared bytes gets before any of its body is sent.
fn status_for_headers_only(server: &TestServer, path: &str, length: usize) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let url = server.api(path);
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_at(rest.find('/').expect("a path"));
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n"
    )
    .expect("write headers");
    let mut status_line = String::new();
    BufReader::new(stream)
        .read_line(&mut status_line)
        .expect("status line");
    status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {status_line:?}"))
}

#[test]
fn without_the_kubernetes_framework_runs_on_it_are_refused_and_uploads_are_404() {
    let server = TestServer::start();
    function(&server, "hello", "def handler():\n    return 'hi'\n");
    let (status, problem) = server.post(
        "/projects/p/runs",
        &json!({"function": "hello", "framework": "kubernetes"}),
    );
    assert_eq!(status, 422, "{problem}");
    assert_eq!(fields(&problem), ["framework"]);
    let response = server
        .http
        .put(server.api("/outputs/x/1"))
        .bearer_auth("t")
        .body("{}")
        .send()
        .expect("PUT");
    assert_eq!(response.status().as_u16(), 404);
}
