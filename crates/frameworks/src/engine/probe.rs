//! Readiness probes of engine replicas: `GET {readiness_path}` on the published host port
//! until the status line says 200. Plain HTTP/1.0 over a tokio socket: one request, the first
//! line of the answer, nothing else is needed.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Time between two probes of a replica that is not ready.
const INTERVAL: Duration = Duration::from_millis(100);
/// A probe that takes longer (a replica not accepting yet, its connection waiting in the
/// engine's forwarder) counts as not ready.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Returns once `127.0.0.1:port` answers `GET path` with 200; runs until then (the caller
/// aborts it when the replica goes away).
pub async fn until_ready(port: u16, path: &str) {
    loop {
        if answers_200(port, path).await {
            return;
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

async fn answers_200(port: u16, path: &str) -> bool {
    let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT;
    let connect = tokio::time::timeout_at(deadline, TcpStream::connect(("127.0.0.1", port)));
    let Ok(Ok(mut stream)) = connect.await else {
        return false;
    };
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: runplane-probe\r\n\r\n"
    );
    if !matches!(
        tokio::time::timeout_at(deadline, stream.write_all(request.as_bytes())).await,
        Ok(Ok(()))
    ) {
        return false;
    }
    // The answer is read to its end (HTTP/1.0: the server's close), briefly: closing with
    // unread bytes resets the connection, which some servers log as an error every probe.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while answer.len() < MAX_ANSWER {
        let until = if answer.len() >= 12 {
            tokio::time::Instant::now() + DRAIN
        } else {
            deadline
        };
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    answer
        .get(..12)
        .and_then(|head| <&[u8; 12]>::try_from(head).ok())
        .is_some_and(is_ok_status_line)
}

/// Readiness answers are short; a longer one is cut off rather than read.
const MAX_ANSWER: usize = 64 * 1024;
/// How long the rest of an answer may take once its status line is in.
const DRAIN: Duration = Duration::from_millis(200);

/// `HTTP/1.x 200`.
fn is_ok_status_line(head: &[u8; 12]) -> bool {
    head.starts_with(b"HTTP/1.") && head[7].is_ascii_digit() && &head[8..] == b" 200"
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn only_a_200_status_line_counts() {
        assert!(is_ok_status_line(b"HTTP/1.0 200"));
        assert!(!is_ok_status_line(b"HTTP/1.0 404"));
        assert!(!is_ok_status_line(b"SSH-2.0-Open"));
    }

    #[tokio::test]
    async fn probes_wait_for_a_200_from_a_real_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for answer in ["HTTP/1.0 503 Busy\r\n\r\n", "HTTP/1.1 200 OK\r\n\r\n"] {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = conn.read(&mut buf).await.unwrap();
                assert!(buf[..n].starts_with(b"GET /ready HTTP/1.0\r\n"));
                conn.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        assert!(!answers_200(port, "/ready").await);
        tokio::time::timeout(Duration::from_secs(5), until_ready(port, "/ready"))
            .await
            .expect("ready after the 200");
        server.await.unwrap();
    }
}
