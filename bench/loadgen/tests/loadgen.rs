//! Runs the `loadgen` binary against an in-process axum server.

use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::process::Command;

async fn serve() -> SocketAddr {
    let app = axum::Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route(
            "/echo",
            post(|headers: HeaderMap, body: String| async move {
                let json = headers
                    .get("content-type")
                    .is_some_and(|value| value == "application/json");
                if json && body == r#"{"x":1}"# && headers.get("x-token").is_some() {
                    StatusCode::OK
                } else {
                    StatusCode::BAD_REQUEST
                }
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn loadgen(args: &[&str]) -> (i32, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .args(["--duration", "500ms", "--warmup", "100ms", "--json"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    assert!(
        json.is_array() || output.status.code() == Some(2),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    (output.status.code().unwrap_or(-1), json)
}

#[tokio::test(flavor = "multi_thread")]
async fn loads_each_url_and_reports_latencies() {
    let addr = serve().await;
    let ok = format!("http://{addr}/");
    let fail = format!("http://{addr}/fail");
    let (code, reports) = loadgen(&["--url", &ok, "--url", &fail, "--connections", "4"]).await;
    assert_eq!(code, 1, "{reports}");
    let [good, bad] = reports.as_array().unwrap().as_slice() else {
        panic!("{reports}")
    };
    assert_eq!(good["url"], ok);
    assert_eq!(good["connections"], 4);
    assert!(good["requests"].as_u64().unwrap() > 10, "{good}");
    assert_eq!(good["errors"], 0);
    assert!(good["rps"].as_f64().unwrap() > 0.0);
    let (p50, p99, max) = (
        good["p50_us"].as_u64().unwrap(),
        good["p99_us"].as_u64().unwrap(),
        good["max_us"].as_u64().unwrap(),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{good}");
    assert_eq!(bad["requests"], 0);
    assert!(bad["errors"].as_u64().unwrap() > 0);
    assert!(bad["statuses"]["500"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sends_the_method_body_and_headers() {
    let addr = serve().await;
    let url = format!("http://{addr}/echo");
    let (code, reports) = loadgen(&[
        "--url",
        &url,
        "--connections",
        "2",
        "--method",
        "POST",
        "--body",
        r#"{"x":1}"#,
        "-H",
        "X-Token: t",
    ])
    .await;
    assert_eq!(code, 0, "{reports}");
    assert_eq!(reports[0]["errors"], 0, "{reports}");
    assert!(reports[0]["requests"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_port_counts_errors_and_a_bad_url_is_refused() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let (code, reports) = loadgen(&["--url", &url, "--connections", "1"]).await;
    assert_eq!(code, 1);
    assert!(reports[0]["errors"].as_u64().unwrap() > 0);

    let (code, _) = loadgen(&["--url", "https://example.invalid/"]).await;
    assert_eq!(code, 2);
}
