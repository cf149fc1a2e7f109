//! A large upload streams through the gateway without being buffered. In its own test binary so
//! that nothing else running in the process moves its memory measurement.

use axum::extract::Request;
use bytes::Bytes;
use futures::StreamExt;
use runplane_server::gateway::{Endpoint, Gateway, GatewayOptions};
use std::net::SocketAddr;
use tokio::net::TcpListener;

const CHUNK: usize = 64 * 1024;
const CHUNKS: usize = 4096; // 256 MiB

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

fn chunk(index: usize) -> Bytes {
    Bytes::from(vec![(index % 251) as u8; CHUNK])
}

/// Counts the body's bytes and sums them, as it streams in.
async fn count(request: Request) -> String {
    let mut stream = request.into_body().into_data_stream();
    let (mut bytes, mut sum) = (0u64, 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        bytes += chunk.len() as u64;
        sum += chunk.iter().map(|&b| u64::from(b)).sum::<u64>();
    }
    format!("{bytes} {sum}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_upload_streams_through_without_raising_memory() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(count)).await });
    let gateway = Gateway::new(GatewayOptions::default());
    gateway.set_endpoints(
        "proj",
        "sink",
        "run-1",
        vec![Endpoint {
            replica: 0,
            addr: replica,
        }],
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = gateway
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = reqwest::Client::new();
    let url = format!("http://{addr}/services/proj/sink/upload");
    // Warm up every path once so that lazily made state is not counted as growth.
    let warm = client
        .post(&url)
        .body(vec![1u8; CHUNK])
        .send()
        .await
        .unwrap();
    assert_eq!(warm.text().await.unwrap(), format!("{CHUNK} {CHUNK}"));

    let before = rss();
    let body = futures::stream::iter(0..CHUNKS).map(|index| Ok::<_, std::io::Error>(chunk(index)));
    let response = client
        .post(&url)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer = response.text().await.unwrap();
    let after = rss();

    let expected_sum: u64 = (0..CHUNKS)
        .map(|index| (index % 251) as u64 * CHUNK as u64)
        .sum();
    assert_eq!(answer, format!("{} {expected_sum}", CHUNK * CHUNKS));
    let growth = after.saturating_sub(before);
    eprintln!(
        "RSS before {} KiB, after {} KiB",
        before / 1024,
        after / 1024
    );
    assert!(
        growth < 50 * 1024 * 1024,
        "RSS grew by {} MiB",
        growth / (1024 * 1024)
    );
}
