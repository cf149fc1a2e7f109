//! The service gateway driven over real TCP: its router served by axum, replicas played by
//! in-process axum servers (or raw sockets, to misbehave) on 127.0.0.1.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use runplane_server::gateway::{Endpoint, Gateway, GatewayOptions};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Notify};

const WAIT: Duration = Duration::from_secs(10);

async fn serve_gateway(gateway: &Gateway) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = gateway
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A replica that answers every request with what it received, as JSON; `/slow` first waits
/// for `release`.
#[derive(Clone)]
struct Replica {
    name: &'static str,
    release: Arc<Notify>,
}

async fn echo(State(replica): State<Replica>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if parts.uri.path() == "/slow" {
        replica.release.notified().await;
    }
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let headers: HashMap<String, String> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                value.to_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let status = parts
        .headers
        .get("x-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or(200);
    let document = serde_json::json!({
        "replica": replica.name,
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-reply", "yes")
        .header("connection", "x-hop")
        .header("x-hop", "must not pass")
        .header("keep-alive", "timeout=5")
        .body(Body::from(document.to_string()))
        .unwrap()
}

async fn start_replica(name: &'static str) -> (SocketAddr, Arc<Notify>) {
    let release = Arc::new(Notify::new());
    let app = axum::Router::new().fallback(echo).with_state(Replica {
        name,
        release: release.clone(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, release)
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn endpoint(replica: u32, addr: SocketAddr) -> Endpoint {
    Endpoint { replica, addr }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

async fn json(response: reqwest::Response) -> serde_json::Value {
    response.json().await.unwrap()
}

async fn replica_of(client: &reqwest::Client, url: &str) -> String {
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    json(response).await["replica"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn assert_problem(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem = json(response).await;
    assert_eq!(problem["status"], status);
    problem
}

#[tokio::test]
async fn method_path_query_headers_and_status_are_preserved_and_forwarded_headers_set() {
    let (replica, _) = start_replica("a").await;
    let gateway = Gateway::new(GatewayOptions::default());
    gateway.set_endpoints("proj", "echo", "run-1", vec![endpoint(0, replica)]);
    let addr = serve_gateway(&gateway).await;

    let response = client()
        .put(format!(
            "http://{addr}/services/proj/echo/a/b%2Fc?x=1&y=two"
        ))
        .header("x-custom", "kept")
        .header("x-status", "201")
        .header("x-forwarded-for", "10.1.2.3")
        .header("connection", "x-private")
        .header("x-private", "must not pass")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-reply"], "yes");
    for hop in ["x-hop", "keep-alive"] {
        assert!(response.headers().get(hop).is_none(), "{hop} passed");
    }
    let seen = json(response).await;
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["uri"], "/a/b%2Fc?x=1&y=two");
    assert_eq!(seen["body"], "hello");
    let headers = &seen["headers"];
    assert_eq!(headers["x-custom"], "kept");
    assert_eq!(headers["host"], replica.to_string());
    assert_eq!(headers["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], addr.to_string());
    assert_eq!(headers["x-forwarded-prefix"], "/services/proj/echo");
    assert!(headers.get("x-private").is_none());

    for (path, upstream) in [("", "/"), ("/", "/"), ("?q=1", "/?q=1")] {
        let response = client()
            .delete(format!("http://{addr}/services/proj/echo{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let seen = json(response).await;
        assert_eq!(seen["method"], "DELETE");
        assert_eq!(seen["uri"], upstream, "{path}");
    }
}

#[tokio::test]
async fn an_unknown_service_is_404_and_one_without_ready_replicas_503() {
    let (replica, _) = start_replica("a").await;
    let gateway = Gateway::new(GatewayOptions::default());
    let addr = serve_gateway(&gateway).await;
    let url = format!("http://{addr}/services/proj/svc/x");

    assert_problem(client().get(&url).send().await.unwrap(), 404).await;

    gateway.set_endpoints("proj", "svc", "run-1", vec![]);
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, 503).await;

    gateway.set_endpoints("proj", "svc", "run-1", vec![endpoint(0, replica)]);
    assert_eq!(client().get(&url).send().await.unwrap().status(), 200);
    // Another project's service of the same name is another service.
    let other = format!("http://{addr}/services/other/svc/x");
    assert_problem(client().get(&other).send().await.unwrap(), 404).await;

    assert!(gateway.drain("run-1", 0, WAIT).await);
    assert_problem(client().get(&url).send().await.unwrap(), 503).await;

    gateway.remove_run("run-1");
    assert_problem(client().get(&url).send().await.unwrap(), 404).await;
}

#[tokio::test]
async fn a_refused_connection_is_502_and_skipped_when_another_replica_works() {
    let dead = closed_port().await;
    let (live, _) = start_replica("live").await;
    let gateway = Gateway::new(GatewayOptions::default());
    gateway.set_endpoints("proj", "svc", "run-1", vec![endpoint(0, dead)]);
    let addr = serve_gateway(&gateway).await;
    let url = format!("http://{addr}/services/proj/svc/");

    let problem = assert_problem(client().get(&url).send().await.unwrap(), 502).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("connection"),
        "{problem}"
    );

    gateway.set_endpoints(
        "proj",
        "svc",
        "run-1",
        vec![endpoint(0, dead), endpoint(1, live)],
    );
    let client = client();
    for _ in 0..10 {
        // A body too: it must survive the refused attempt whole.
        let response = client.post(&url).body("payload").send().await.unwrap();
        assert_eq!(response.status(), 200);
        let seen = json(response).await;
        assert_eq!(seen["replica"], "live");
        assert_eq!(seen["body"], "payload");
    }
    assert_eq!(gateway.in_flight("run-1", 0), 0);
}

#[tokio::test]
async fn requests_spread_over_replicas_and_avoid_the_busy_one() {
    let (a, release_a) = start_replica("a").await;
    let (b, release_b) = start_replica("b").await;
    let gateway = Gateway::new(GatewayOptions::default());
    gateway.set_endpoints("proj", "svc", "run-1", vec![endpoint(0, a), endpoint(1, b)]);
    let addr = serve_gateway(&gateway).await;
    let url = format!("http://{addr}/services/proj/svc/");
    let client = client();

    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..20 {
        *counts.entry(replica_of(&client, &url).await).or_default() += 1;
    }
    assert!(counts["a"] >= 5 && counts["b"] >= 5, "{counts:?}");

    // With one request held on a replica, the others go to the idle one.
    let slow = tokio::spawn({
        let client = client.clone();
        let url = format!("{url}slow");
        async move { json(client.get(url).send().await.unwrap()).await }
    });
    wait_for("the slow request", || {
        gateway.in_flight("run-1", 0) + gateway.in_flight("run-1", 1) == 1
    })
    .await;
    let busy = if gateway.in_flight("run-1", 0) == 1 {
        "a"
    } else {
        "b"
    };
    for _ in 0..6 {
        assert_ne!(replica_of(&client, &url).await, busy);
    }
    release_a.notify_one();
    release_b.notify_one();
    assert_eq!(slow.await.unwrap()["replica"], busy);
}

#[tokio::test]
async fn the_pool_of_a_service_is_the_union_of_its_runs() {
    let (old, _) = start_replica("old").await;
    let (new, _) = start_replica("new").await;
    let gateway = Gateway::new(GatewayOptions::default());
    gateway.set_endpoints("proj", "svc", "run-old", vec![endpoint(0, old)]);
    gateway.set_endpoints("proj", "svc", "run-new", vec![endpoint(0, new)]);
    let addr = serve_gateway(&gateway).await;
    let url = format!("http://{addr}/services/proj/svc/");
    let client = client();

    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        seen.insert(replica_of(&client, &url).await);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    gateway.remove_run("run-old");
    for _ in 0..4 {
        assert_eq!(replica_of(&client, &url).await, "new");
    }
}

#[tokio::test]
async fn drain_takes_the_replica_out_and_waits_for_its_request_in_flight() {
    let (a, release_a) = start_replica("a").await;
    let (b, _) = start_replica("b").await;
    let gateway = Gateway::new(GatewayOptions::default());
    gateway.set_endpoints("proj", "svc", "run-1", vec![endpoint(0, a)]);
    let addr = serve_gateway(&gateway).await;
    let url = format!("http://{addr}/services/proj/svc/");
    let client = client();

    let slow = tokio::spawn({
        let client = client.clone();
        let url = format!("{url}slow");
        async move {
            let response = client.post(url).body("slow body").send().await.unwrap();
            (response.status(), json(response).await)
        }
    });
    wait_for("the slow request", || gateway.in_flight("run-1", 0) == 1).await;
    gateway.set_endpoints("proj", "svc", "run-1", vec![endpoint(0, a), endpoint(1, b)]);

    let drain = tokio::spawn({
        let gateway = gateway.clone();
        async move { gateway.drain("run-1", 0, WAIT).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !drain.is_finished(),
        "drain returned with a request in flight"
    );
    for _ in 0..4 {
        assert_eq!(replica_of(&client, &url).await, "b");
    }
    // Sticky: listing the replica again does not bring it back.
    gateway.set_endpoints("proj", "svc", "run-1", vec![endpoint(0, a), endpoint(1, b)]);
    for _ in 0..4 {
        assert_eq!(replica_of(&client, &url).await, "b");
    }
    assert!(!drain.is_finished());

    release_a.notify_one();
    let (status, seen) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(seen["replica"], "a");
    assert_eq!(seen["body"], "slow body");
    assert!(tokio::time::timeout(WAIT, drain).await.unwrap().unwrap());
    assert_eq!(gateway.in_flight("run-1", 0), 0);
}

#[tokio::test]
async fn drain_gives_up_after_its_timeout() {
    let (a, release_a) = start_replica("a").await;
    let gateway = Gateway::new(GatewayOptions::default());
    gateway.set_endpoints("proj", "svc", "run-1", vec![endpoint(0, a)]);
    let addr = serve_gateway(&gateway).await;

    let slow = tokio::spawn(
        client()
            .get(format!("http://{addr}/services/proj/svc/slow"))
            .send(),
    );
    wait_for("the slow request", || gateway.in_flight("run-1", 0) == 1).await;
    assert!(!gateway.drain("run-1", 0, Duration::from_millis(100)).await);
    // A replica nobody knows has nothing in flight.
    assert!(gateway.drain("run-2", 3, Duration::from_millis(100)).await);
    release_a.notify_one();
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
}

#[tokio::test]
async fn a_replica_endpoint_that_leaves_keeps_counting_its_requests_until_they_end() {
    let (a, release_a) = start_replica("a").await;
    let gateway = Gateway::new(GatewayOptions::default());
    gateway.set_endpoints("proj", "svc", "run-1", vec![endpoint(0, a)]);
    let addr = serve_gateway(&gateway).await;

    let slow = tokio::spawn(
        client()
            .get(format!("http://{addr}/services/proj/svc/slow"))
            .send(),
    );
    wait_for("the slow request", || gateway.in_flight("run-1", 0) == 1).await;
    gateway.remove_run("run-1");
    assert_eq!(gateway.in_flight("run-1", 0), 1);
    release_a.notify_one();
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
    wait_for("the request to end", || gateway.in_flight("run-1", 0) == 0).await;
}

#[tokio::test]
async fn the_response_body_streams_chunk_by_chunk() {
    let (go_on, go_on_rx) = oneshot::channel::<()>();
    let go_on_rx = Arc::new(std::sync::Mutex::new(Some(go_on_rx)));
    let app = axum::Router::new().fallback(move || {
        let go_on_rx = go_on_rx.lock().unwrap().take();
        async move {
            let (chunks, body) = mpsc::channel::<Result<&'static str, std::io::Error>>(4);
            tokio::spawn(async move {
                chunks.send(Ok("first\n")).await.unwrap();
                if let Some(go_on_rx) = go_on_rx {
                    let _ = go_on_rx.await;
                }
                chunks.send(Ok("second\n")).await.unwrap();
            });
            Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(body))
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let gateway = Gateway::new(GatewayOptions::default());
    gateway.set_endpoints("proj", "svc", "run-1", vec![endpoint(0, replica)]);
    let addr = serve_gateway(&gateway).await;

    let mut response = client()
        .get(format!("http://{addr}/services/proj/svc/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let first = tokio::time::timeout(WAIT, response.chunk())
        .await
        .expect("the first chunk did not stream")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"first\n");
    // Still streaming: the request still counts.
    assert_eq!(gateway.in_flight("run-1", 0), 1);
    go_on.send(()).unwrap();
    let rest = response.bytes().await.unwrap();
    assert_eq!(&rest[..], b"second\n");
    wait_for("the request to end", || gateway.in_flight("run-1", 0) == 0).await;
}

/// A raw replica that reads each request head, then does `answer` with the socket.
async fn raw_replica<F, Fut>(answer: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                answer(socket).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_replica_failing_after_the_request_was_sent_is_502_and_not_retried() {
    let (closing, accepted) = raw_replica(|socket| async move { drop(socket) }).await;
    let gateway = Gateway::new(GatewayOptions::default());
    gateway.set_endpoints("proj", "svc", "run-1", vec![endpoint(0, closing)]);
    let addr = serve_gateway(&gateway).await;

    let response = client()
        .post(format!("http://{addr}/services/proj/svc/"))
        .body("data")
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, 502).await;
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("replica-failed"),
        "{problem}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(gateway.in_flight("run-1", 0), 0);
}

#[tokio::test]
async fn no_response_headers_in_time_is_504() {
    let (silent, _) = raw_replica(|socket| async move {
        tokio::time::sleep(WAIT).await;
        drop(socket);
    })
    .await;
    let gateway = Gateway::new(GatewayOptions {
        response_timeout: Duration::from_millis(300),
        ..GatewayOptions::default()
    });
    gateway.set_endpoints("proj", "svc", "run-1", vec![endpoint(0, silent)]);
    let addr = serve_gateway(&gateway).await;

    let response = client()
        .get(format!("http://{addr}/services/proj/svc/"))
        .send()
        .await
        .unwrap();
    assert_problem(response, 504).await;
    assert_eq!(gateway.in_flight("run-1", 0), 0);
}

#[tokio::test]
async fn a_replica_failing_mid_body_breaks_the_client_body() {
    let (truncating, _) = raw_replica(|mut socket| async move {
        let _ = socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            .await;
        let _ = socket.flush().await;
    })
    .await;
    let gateway = Gateway::new(GatewayOptions::default());
    gateway.set_endpoints("proj", "svc", "run-1", vec![endpoint(0, truncating)]);
    let addr = serve_gateway(&gateway).await;

    let response = client()
        .get(format!("http://{addr}/services/proj/svc/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err());
    wait_for("the request to end", || gateway.in_flight("run-1", 0) == 0).await;
}
