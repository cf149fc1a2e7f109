//! The load itself: N connections, each sending requests back to back.

use crate::target::Target;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Latencies are recorded in µs up to an hour, to 3 significant digits.
const HIGHEST_MICROS: u64 = 3_600_000_000;

/// What the measured window of one URL's load gave.
pub struct Outcome {
    /// Latency of every successful request started in the window, in µs.
    pub latencies: Histogram<u64>,
    /// Transport failures, timeouts and responses other than 2xx/3xx.
    pub errors: u64,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// From the end of the warm-up until the last request ended.
    pub elapsed: Duration,
}

pub struct Plan {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
}

pub async fn load(target: Arc<Target>, plan: &Plan) -> Outcome {
    let measure_from = Instant::now() + plan.warmup;
    let end = measure_from + plan.duration;
    let workers: Vec<_> = (0..plan.connections.max(1))
        .map(|_| tokio::spawn(worker(target.clone(), measure_from, end, plan.timeout)))
        .collect();
    let mut outcome = Outcome {
        latencies: new_histogram(),
        errors: 0,
        statuses: BTreeMap::new(),
        elapsed: Duration::ZERO,
    };
    for worker in workers {
        // A worker that panicked has nothing to report; the others still count.
        let Ok(part) = worker.await else {
            continue;
        };
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = outcome.latencies.add(&part.latencies);
        outcome.errors += part.errors;
        for (status, count) in part.statuses {
            *outcome.statuses.entry(status).or_default() += count;
        }
    }
    outcome.elapsed = Instant::now().saturating_duration_since(measure_from);
    outcome
}

fn new_histogram() -> Histogram<u64> {
    // Valid bounds (1 ≤ low, high ≥ 2·low, 3 significant digits): cannot fail.
    Histogram::new_with_bounds(1, HIGHEST_MICROS, 3).expect("valid histogram bounds")
}

async fn connect(target: &Target) -> std::io::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One connection's requests, back to back; a broken connection is replaced.
async fn worker(
    target: Arc<Target>,
    measure_from: Instant,
    end: Instant,
    timeout: Duration,
) -> Outcome {
    let mut outcome = Outcome {
        latencies: new_histogram(),
        errors: 0,
        statuses: BTreeMap::new(),
        elapsed: Duration::ZERO,
    };
    let mut kept: Option<SendRequest<Full<Bytes>>> = None;
    while Instant::now() < end {
        let mut sender = match kept.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => match connect(&target).await {
                Ok(sender) => sender,
                Err(_) => {
                    if Instant::now() >= measure_from {
                        outcome.errors += 1;
                    }
                    // Do not spin on a refused port.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // The server may have closed a kept connection (`Connection: close`): not an error.
        if sender.ready().await.is_err() {
            continue;
        }
        let started = Instant::now();
        let exchange = async {
            let response = sender.send_request(target.request()).await?;
            let status = response.status();
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                frame?;
            }
            Ok::<_, hyper::Error>(status)
        };
        let result = tokio::time::timeout(timeout, exchange).await;
        let took = started.elapsed();
        let counted = started >= measure_from;
        match result {
            Ok(Ok(status)) => {
                if counted {
                    *outcome.statuses.entry(status.as_u16()).or_default() += 1;
                    if status.is_success() || status.is_redirection() {
                        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                        outcome.latencies.saturating_record(micros.max(1));
                    } else {
                        outcome.errors += 1;
                    }
                }
                kept = Some(sender);
            }
            // The connection's state is unknown after a failure or a timeout: replace it.
            Ok(Err(_)) | Err(_) => {
                if counted {
                    outcome.errors += 1;
                }
            }
        }
    }
    outcome
}
