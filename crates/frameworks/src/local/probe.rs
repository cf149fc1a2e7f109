//! Readiness probes of service replicas: `GET {readiness_path}` on the replica's port until it
//! answers `HTTP/1.x 200`, from a thread of its own per replica process.
//!
//! A thread each, because the supervisor binds the listening sockets itself: a replica that is
//! not accepting yet still completes TCP handshakes (the kernel queues them in the backlog), so
//! a probe of a starting replica blocks until its read timeout. That must hold up neither the
//! supervisor's main thread nor the probes of the other replicas.

use super::supervise::Wake;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

/// Time between two probes of a replica that is not ready.
const INTERVAL: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
const IO_TIMEOUT: Duration = Duration::from_millis(500);

/// Probes `port` until it answers 200, then sends [`Wake::Ready`]; gives up silently once
/// `cancel` is set (the process exited or is being stopped).
pub(super) fn spawn_prober(
    index: u32,
    pid: i32,
    port: u16,
    path: String,
    cancel: Arc<AtomicBool>,
    wake: mpsc::Sender<Wake>,
) -> io::Result<()> {
    thread::Builder::new()
        .name(format!("probe-{index}"))
        .spawn(move || loop {
            if cancel.load(Ordering::Relaxed) {
                return;
            }
            if answers_200(port, &path) {
                if !cancel.load(Ordering::Relaxed) {
                    let _ = wake.send(Wake::Ready { index, pid });
                }
                return;
            }
            thread::sleep(INTERVAL);
        })?;
    Ok(())
}

/// One `GET path` on `127.0.0.1:port`: whether the status line says `HTTP/1.x 200`.
pub(super) fn answers_200(port: u16, path: &str) -> bool {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) else {
        return false;
    };
    if stream.set_read_timeout(Some(IO_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(IO_TIMEOUT)).is_err()
    {
        return false;
    }
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: runplane-probe\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    // The status line is all that counts: "HTTP/1.1 200 OK".
    let mut head = [0u8; 12];
    let mut filled = 0;
    while filled < head.len() {
        match stream.read(&mut head[filled..]) {
            Ok(0) => return false,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    is_ok_status_line(&head)
}

fn is_ok_status_line(head: &[u8; 12]) -> bool {
    head.starts_with(b"HTTP/1.") && head[7].is_ascii_digit() && &head[8..] == b" 200"
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn only_a_200_status_line_counts() {
        assert!(is_ok_status_line(b"HTTP/1.1 200"));
        assert!(is_ok_status_line(b"HTTP/1.0 200"));
        assert!(!is_ok_status_line(b"HTTP/1.1 503"));
        assert!(!is_ok_status_line(b"HTTP/2.0 200"));
        assert!(!is_ok_status_line(b"garbage 200 "));
    }

    #[test]
    fn probes_read_the_answer_of_a_real_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            for answer in ["HTTP/1.1 503 Busy\r\n\r\n", "HTTP/1.0 200 OK\r\n\r\n"] {
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let n = conn.read(&mut buf).unwrap();
                assert!(buf[..n].starts_with(b"GET /ready HTTP/1.1\r\n"));
                conn.write_all(answer.as_bytes()).unwrap();
            }
        });
        assert!(!answers_200(port, "/ready"));
        assert!(answers_200(port, "/ready"));
        server.join().unwrap();
    }
}
