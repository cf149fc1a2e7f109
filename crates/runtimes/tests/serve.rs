//! The runner in serve mode, run for real: `to_runnable` turns a serve run into a `Service`,
//! its replica's files are written into a temporary folder and its command is started with
//! `/usr/bin/python3` on a listening socket the test bound (fd 3, `RUNPLANE_LISTEN_FD`), as
//! the local framework does. The tests then speak HTTP/1.1 to it over plain `TcpStream`s, so
//! that keep-alive, chunked framing and timing are seen exactly as a client sees them.
//!
//! Skipped (with a note on stderr) where `/usr/bin/python3` does not exist.

mod support;

use runplane_domain::{ExitOutcome, Runnable, Service};
use runplane_runtimes::python::READINESS_PATH;
use runplane_runtimes::Runtime;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use support::{python_missing, run_with_action, runtime, write_files};

/// The function every test serves. `load` records each call and can be held at a gate;
/// `handler` routes on the path. Gates are files the test creates in the scratch folder.
const APP: &str = r#"
import os
import threading
import time

CALLS = {"count": 0}
LOCK = threading.Lock()
SCRATCH = None


def wait_for(name, timeout=20):
    path = os.path.join(SCRATCH, name)
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if time.time() > deadline:
            raise TimeoutError("no " + name)
        time.sleep(0.01)


def mark(name):
    open(os.path.join(SCRATCH, name), "w").close()


def load(context, scratch, hold=False):
    global SCRATCH
    SCRATCH = scratch
    with open(os.path.join(scratch, "inits"), "a") as f:
        f.write("replica %s\n" % context.replica)
    if hold:
        wait_for("init-gate")


def handler(request, context):
    with LOCK:
        CALLS["count"] += 1
    path = request.path
    if path == "/echo":
        return {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": {name.lower(): value for name, value in request.headers.items()},
            "x_custom": request.headers.get("X-CUSTOM"),
            "has_custom": "x-Custom" in request.headers,
            "body": request.body.decode(),
            "json": request.json,
            "replica": context.replica,
            "run_id": context.run_id,
        }
    if path == "/inits":
        with open(os.path.join(SCRATCH, "inits")) as f:
            return {"inits": f.read().splitlines()}
    if path == "/calls":
        return {"calls": CALLS["count"]}
    if path == "/boom":
        raise KeyError("boom")
    if path == "/str":
        return "h\u00e9llo"
    if path == "/bytes":
        return b"\x00\x01\xff"
    if path == "/none":
        return None
    if path == "/created":
        return 201, {"id": 7}
    if path == "/csv":
        return 202, "a,b\n", {"Content-Type": "text/csv", "X-Extra": "1", "Content-Length": "999"}
    if path == "/bad":
        return object()
    if path == "/stream":
        gate = request.query["gate"]

        def produce():
            yield "first\n"
            wait_for(gate)
            yield {"last": True}

        return produce()
    if path == "/broken-stream":
        def produce():
            yield b"partial"
            raise RuntimeError("the stream broke")

        return produce()
    if path == "/upload":
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        size = reads = 0
        checksum = 0
        while True:
            data = request.stream.read(1 << 20)
            if not data:
                break
            size += len(data)
            reads += 1
            checksum = (checksum + sum(data[:16])) % 1000003
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        return {"size": size, "reads": reads, "grown_kib": grown}
    if path == "/sleep":
        time.sleep(0.5)
        return "slept"
    if path == "/slow":
        mark("slow-started")
        wait_for("slow-gate")
        return "finished"
    return 404, {"error": "no route"}
"#;

/// A replica started the way the local framework starts one.
struct Replica {
    child: Child,
    port: u16,
    scratch: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    outputs: PathBuf,
    _dir: tempfile::TempDir,
}

impl Replica {
    /// Serves `APP`, its init held at a gate when `hold_init`.
    fn start(hold_init: bool) -> Replica {
        Self::start_code(APP, Some(json!({"hold": hold_init})), true)
    }

    /// Serves `code` with `load` as its init function when `init_parameters` are given; the
    /// run's parameters are `{"scratch": <the test's folder>}` when `pass_scratch`.
    fn start_code(code: &str, init_parameters: Option<Value>, pass_scratch: bool) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        let mut spec = json!({"source": {"code": code}, "handler": "handler"});
        let mut parameters = json!({});
        if let Some(init_parameters) = init_parameters {
            spec["init_function"] = json!("load");
            spec["init_parameters"] = init_parameters;
        }
        if pass_scratch {
            // Run parameters are merged over the function's init_parameters.
            parameters = json!({"scratch": scratch});
        }
        let run = run_with_action(spec, parameters, "serve");
        let Runnable::Service(service) = runtime().to_runnable(&run).unwrap() else {
            panic!("a serve run is a service");
        };
        assert_eq!(service.readiness_path, READINESS_PATH);
        Self::spawn(&service, dir, scratch)
    }

    fn spawn(service: &Service, dir: tempfile::TempDir, scratch: PathBuf) -> Replica {
        let job = &service.replica;
        let work = dir.path().join("work");
        let outputs = dir.path().join("outputs");
        std::fs::create_dir_all(&outputs).unwrap();
        write_files(&job.files, &work);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fd = listener.as_raw_fd();
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr");
        let mut command = Command::new(&job.command[0]);
        command
            .args(&job.command[1..])
            .current_dir(&work)
            .env_clear()
            .envs(&job.env)
            .env("RUNPLANE_OUTPUTS", &outputs)
            .env("RUNPLANE_LISTEN_FD", "3")
            .env("RUNPLANE_REPLICA", "0")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        // The replica holds the socket now; connections queue on it until it accepts.
        drop(listener);
        Replica {
            child,
            port,
            scratch,
            stdout,
            stderr,
            outputs,
            _dir: dir,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn connect(&self) -> Conn {
        Conn::open(self.port)
    }

    fn get(&self, path: &str) -> Response {
        self.connect().request("GET", path, &[], b"")
    }

    /// Waits until the readiness path answers 200.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the replica exited ({status}): {}", self.stderr());
            }
            if self.get(READINESS_PATH).status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "never ready: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn gate(&self, name: &str) {
        std::fs::write(self.scratch.join(name), b"").unwrap();
    }

    fn wait_for_file(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.scratch.join(name).exists() {
            assert!(Instant::now() < deadline, "no {name}: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn terminate(&self) {
        // SAFETY: signalling our own child by its pid.
        let sent = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(sent, 0);
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {:?}", String::from_utf8_lossy(&self.body));
        })
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
}

/// One client connection, read and written by hand.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Conn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    fn send_head(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        self.send(head.as_bytes());
    }

    fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let length = body.len().to_string();
        let mut all = headers.to_vec();
        if !body.is_empty() {
            all.push(("Content-Length", &length));
        }
        self.send_head(method, path, &all);
        self.send(body);
        self.read_response(method == "HEAD")
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line
    }

    fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        let status_line = self.line();
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line:?}");
        let status = parts.next().unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let line = self.line();
            let line = line.trim_end();
            if line.is_empty() {
                return (status, headers);
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.to_string(), value.trim().to_string()));
        }
    }

    /// The next chunk of a chunked body; None at its last (empty) chunk.
    fn chunk(&mut self) -> Option<Vec<u8>> {
        let size = self.line();
        let size = usize::from_str_radix(size.trim(), 16)
            .unwrap_or_else(|_| panic!("not a chunk size: {size:?}"));
        if size == 0 {
            // Trailer fields (none expected), then the empty line that ends the body.
            while self.line() != "\r\n" {}
            return None;
        }
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data).unwrap();
        assert_eq!(&data[size..], b"\r\n");
        data.truncate(size);
        Some(data)
    }

    fn read_response(&mut self, head_only: bool) -> Response {
        let (status, headers) = self.read_head();
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if head_only {
            return response;
        }
        if response.header("Transfer-Encoding") == Some("chunked") {
            while let Some(chunk) = self.chunk() {
                response.body.extend(chunk);
            }
        } else if let Some(length) = response.header("Content-Length") {
            let mut body = vec![0; length.parse().unwrap()];
            self.reader.read_exact(&mut body).unwrap();
            response.body = body;
        }
        response
    }

    /// Whether the server closed the connection (reads end).
    fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0) | Err(_))
    }
}

#[test]
fn readiness_waits_for_init_which_runs_once() {
    if python_missing() {
        return;
    }
    let mut replica = Replica::start(true);
    // Init is held at its gate: the replica answers, but is not ready.
    replica.wait_for_file("inits");
    let early = replica.get(READINESS_PATH);
    assert_eq!(early.status, 503, "{}", replica.stderr());
    assert_eq!(early.json()["error"], "NotReady");
    assert_eq!(replica.get("/echo").status, 503);

    replica.gate("init-gate");
    replica.wait_ready();
    let ready = replica.get(READINESS_PATH);
    assert_eq!(ready.header("Content-Type"), Some("application/json"));
    assert_eq!(ready.json()["ready"], true);
    for _ in 0..3 {
        let inits = replica.get("/inits");
        assert_eq!(inits.status, 200);
        assert_eq!(inits.json(), json!({"inits": ["replica 0"]}));
    }
    assert_eq!(replica.stdout(), "");
}

#[test]
fn requests_are_echoed() {
    if python_missing() {
        return;
    }
    let mut replica = Replica::start(false);
    replica.wait_ready();
    let response = replica.connect().request(
        "POST",
        "/echo?a=1&a=2&b=x%20y&empty=",
        &[
            ("X-Custom", "yes"),
            ("Content-Type", "application/json; charset=utf-8"),
        ],
        br#"{"k": [1, 2], "s": "\u00e9"}"#,
    );
    assert_eq!(response.status, 200, "{}", replica.stderr());
    assert_eq!(response.header("Content-Type"), Some("application/json"));
    let echo = response.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo");
    assert_eq!(
        echo["query"],
        json!({"a": ["1", "2"], "b": "x y", "empty": ""})
    );
    assert_eq!(echo["headers"]["x-custom"], "yes");
    assert_eq!(echo["headers"]["host"], "test");
    assert_eq!(echo["x_custom"], "yes");
    assert_eq!(echo["has_custom"], true);
    assert_eq!(echo["body"], r#"{"k": [1, 2], "s": "\u00e9"}"#);
    assert_eq!(echo["json"], json!({"k": [1, 2], "s": "é"}));
    assert_eq!(echo["replica"], 0);
    assert_eq!(echo["run_id"], "0190d7a8-0000-7000-8000-00000000abcd");

    // No JSON content type: `json` is None, the body is still there.
    let response =
        replica
            .connect()
            .request("PUT", "/echo", &[("Content-Type", "text/plain")], b"{x");
    assert_eq!(response.json()["json"], Value::Null);
    assert_eq!(response.json()["body"], "{x");
}

#[test]
fn two_requests_share_a_keep_alive_connection() {
    if python_missing() {
        return;
    }
    let mut replica = Replica::start(false);
    replica.wait_ready();
    let mut conn = replica.connect();
    let first = conn.request("POST", "/echo", &[], b"one");
    let second = conn.request("POST", "/echo", &[], b"two");
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.json()["body"], "one");
    assert_eq!(second.json()["body"], "two");
    assert_eq!(second.header("Connection"), None);
    // A body the handler does not read is skipped, and the connection goes on.
    let ignored = conn.request("POST", "/calls", &[], &[b'x'; 10_000]);
    assert_eq!(ignored.status, 200);
    assert_eq!(conn.request("GET", "/str", &[], b"").text(), "héllo");
}

#[test]
fn an_exception_is_a_500_and_the_server_goes_on() {
    if python_missing() {
        return;
    }
    let mut replica = Replica::start(false);
    replica.wait_ready();
    let mut conn = replica.connect();
    let failed = conn.request("GET", "/boom", &[], b"");
    assert_eq!(failed.status, 500);
    assert_eq!(failed.header("Content-Type"), Some("application/json"));
    assert_eq!(
        failed.json(),
        json!({"error": "KeyError", "message": "'boom'"})
    );
    let next = conn.request("GET", "/str", &[], b"");
    assert_eq!(next.status, 200);
    let stderr = replica.stderr();
    assert!(
        stderr.contains("Traceback (most recent call last):"),
        "{stderr}"
    );
    assert!(stderr.contains("KeyError: 'boom'"), "{stderr}");
    assert!(stderr.contains("main.py\", line"), "{stderr}");
    assert!(
        !stderr.contains("runner.py") && !stderr.contains("runner_serve.py"),
        "the runner's frames are left out: {stderr}"
    );
    assert_eq!(replica.stdout(), "");
}

#[test]
fn malformed_json_is_a_400_without_calling_the_handler() {
    if python_missing() {
        return;
    }
    let mut replica = Replica::start(false);
    replica.wait_ready();
    let mut conn = replica.connect();
    let before = conn.request("GET", "/calls", &[], b"").json()["calls"].clone();
    let bad = conn.request(
        "POST",
        "/echo",
        &[("Content-Type", "application/json")],
        b"{\"k\": ",
    );
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], "BadRequest");
    assert!(
        bad.json()["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{:?}",
        bad.json()
    );
    let after = conn.request("GET", "/calls", &[], b"").json()["calls"].clone();
    // Only the two /calls requests reached the handler.
    assert_eq!(after.as_u64(), before.as_u64().map(|n| n + 1));
}

#[test]
fn return_values_become_responses() {
    if python_missing() {
        return;
    }
    let mut replica = Replica::start(false);
    replica.wait_ready();
    // All on one connection: every response must be framed for keep-alive to go on.
    let mut conn = replica.connect();

    let text = conn.request("GET", "/str", &[], b"");
    assert_eq!(
        (text.status, text.header("Content-Type")),
        (200, Some("text/plain; charset=utf-8"))
    );
    assert_eq!(text.text(), "héllo");

    let bytes = conn.request("GET", "/bytes", &[], b"");
    assert_eq!(
        bytes.header("Content-Type"),
        Some("application/octet-stream")
    );
    assert_eq!(bytes.body, [0, 1, 255]);

    let none = conn.request("GET", "/none", &[], b"");
    assert_eq!(none.status, 204);
    assert!(none.body.is_empty());

    let created = conn.request("GET", "/created", &[], b"");
    assert_eq!(created.status, 201);
    assert_eq!(created.json(), json!({"id": 7}));

    let csv = conn.request("GET", "/csv", &[], b"");
    assert_eq!(csv.status, 202);
    assert_eq!(csv.header("Content-Type"), Some("text/csv"));
    assert_eq!(csv.header("X-Extra"), Some("1"));
    assert_eq!(csv.header("Content-Length"), Some("4")); // the runner's, not the handler's
    assert_eq!(csv.text(), "a,b\n");

    let bad = conn.request("GET", "/bad", &[], b"");
    assert_eq!(bad.status, 500);
    assert_eq!(bad.json()["error"], "ResponseError");

    let missing = conn.request("GET", "/nowhere", &[], b"");
    assert_eq!(missing.status, 404);

    let head = conn.request("HEAD", "/str", &[], b"");
    assert_eq!(
        (head.status, head.header("Content-Length")),
        (200, Some("6"))
    );
    assert_eq!(conn.request("GET", "/none", &[], b"").status, 204);
}

#[test]
fn a_stream_reaches_the_client_as_it_is_produced() {
    if python_missing() {
        return;
    }
    let mut replica = Replica::start(false);
    replica.wait_ready();
    let mut conn = replica.connect();
    conn.send_head("GET", "/stream?gate=stream-gate", &[]);
    let (status, headers) = conn.read_head();
    assert_eq!(status, 200);
    let response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    assert_eq!(response.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(
        response.header("Content-Type"),
        Some("text/plain; charset=utf-8")
    );
    // The generator is now blocked on its gate: the first chunk arrived before the last one
    // was produced.
    assert_eq!(conn.chunk().as_deref(), Some(&b"first\n"[..]));
    assert!(!replica.scratch.join("stream-gate").exists());
    replica.gate("stream-gate");
    assert_eq!(conn.chunk().as_deref(), Some(&b"{\"last\":true}\n"[..]));
    assert_eq!(conn.chunk(), None);
    // The connection is still good.
    assert_eq!(conn.request("GET", "/str", &[], b"").status, 200);
}

#[test]
fn a_stream_that_fails_breaks_off() {
    if python_missing() {
        return;
    }
    let mut replica = Replica::start(false);
    replica.wait_ready();
    let mut conn = replica.connect();
    conn.send_head("GET", "/broken-stream", &[]);
    let (status, _) = conn.read_head();
    assert_eq!(status, 200);
    assert_eq!(conn.chunk().as_deref(), Some(&b"partial"[..]));
    // No last chunk: the connection ends in the middle of the body.
    assert!(conn.closed());
    assert!(
        replica.stderr().contains("RuntimeError: the stream broke"),
        "{}",
        replica.stderr()
    );
    assert_eq!(replica.get("/str").status, 200);
}

#[test]
fn a_chunked_upload_is_read_through_the_stream() {
    if python_missing() {
        return;
    }
    let mut replica = Replica::start(false);
    replica.wait_ready();
    let mut conn = replica.connect();
    conn.send_head(
        "POST",
        "/upload",
        &[
            ("Transfer-Encoding", "chunked"),
            ("Content-Type", "application/json"),
        ],
    );
    // 64 MiB in 1 MiB chunks: the handler must not hold it all.
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..64 {
        conn.send(format!("{:x}\r\n", chunk.len()).as_bytes());
        conn.send(&chunk);
        conn.send(b"\r\n");
    }
    conn.send(b"3;ext=1\r\nend\r\n0\r\nX-Trailer: t\r\n\r\n");
    let response = conn.read_response(false);
    assert_eq!(response.status, 200, "{}", replica.stderr());
    let got = response.json();
    assert_eq!(got["size"], 64 * (1 << 20) + 3);
    assert!(got["reads"].as_u64().unwrap() >= 65, "{got}");
    assert!(
        got["grown_kib"].as_u64().unwrap() < 32 * 1024,
        "the upload was held in memory: {got}"
    );
    // The trailer was consumed: the connection goes on.
    assert_eq!(conn.request("GET", "/str", &[], b"").status, 200);

    // A chunked body read whole through `request.body`.
    let mut conn = replica.connect();
    conn.send_head("POST", "/echo", &[("Transfer-Encoding", "chunked")]);
    conn.send(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    assert_eq!(conn.read_response(false).json()["body"], "hello world");
}

#[test]
fn requests_are_served_concurrently() {
    if python_missing() {
        return;
    }
    let mut replica = Replica::start(false);
    replica.wait_ready();
    let port = replica.port;
    let started = Instant::now();
    let clients: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || Conn::open(port).request("GET", "/sleep", &[], b"")))
        .collect();
    for client in clients {
        let response = client.join().unwrap();
        assert_eq!((response.status, response.text().as_str()), (200, "slept"));
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(900),
        "two 0.5 s requests took {elapsed:?}"
    );
}

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    if python_missing() {
        return;
    }
    let mut replica = Replica::start(false);
    replica.wait_ready();
    // An idle keep-alive connection, and a request in flight on another.
    let mut idle = replica.connect();
    assert_eq!(idle.request("GET", "/str", &[], b"").status, 200);
    let port = replica.port;
    let slow = std::thread::spawn(move || Conn::open(port).request("GET", "/slow", &[], b""));
    replica.wait_for_file("slow-started");

    replica.terminate();
    // The idle connection is closed; the process waits for the slow request.
    assert!(idle.closed());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        replica.child.try_wait().unwrap().is_none(),
        "exited too early"
    );

    replica.gate("slow-gate");
    let response = slow.join().unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "finished");
    assert_eq!(response.header("Connection"), Some("close"));
    let status = replica.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status:?}: {}", replica.stderr());
    assert_eq!(replica.stdout(), "");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn an_init_failure_exits_1_with_its_traceback() {
    if python_missing() {
        return;
    }
    let code =
        "def load(context, path):\n    open(path)\n\ndef handler(request):\n    return 'never'\n";
    let mut replica =
        Replica::start_code(code, Some(json!({"path": "/nonexistent/model.bin"})), false);
    let status = replica.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
    let stderr = replica.stderr();
    assert!(stderr.contains("FileNotFoundError"), "{stderr}");
    assert!(stderr.contains("main.py\", line 2, in load"), "{stderr}");
    assert_eq!(replica.stdout(), "");
    let error: Value =
        serde_json::from_slice(&std::fs::read(replica.outputs.join("error.json")).unwrap())
            .unwrap();
    assert_eq!(error["type"], "FileNotFoundError");
    assert_eq!(error["where"], "main.py:2");

    // Had it reached `interpret` (it ended on its own), the run failed with that error.
    let run = run_with_action(
        json!({"source": {"code": code}, "handler": "handler", "init_function": "load", "init_parameters": {"path": "x"}}),
        json!({}),
        "serve",
    );
    let outcome = ExitOutcome {
        exit_code: status.code(),
        signal: status.signal(),
        outputs: [(
            "error.json".to_string(),
            runplane_domain::OutputFile {
                contents: std::fs::read(replica.outputs.join("error.json")).unwrap(),
                size: 0,
            },
        )]
        .into_iter()
        .map(|(name, mut file)| {
            file.size = file.contents.len() as u64;
            (name, file)
        })
        .collect(),
        failure: None,
        outputs_dir: None,
    };
    let got = runtime().interpret(&run, &outcome);
    assert_eq!(got.reason, "failed");
    assert!(
        got.message
            .as_deref()
            .unwrap()
            .contains("FileNotFoundError"),
        "{got:?}"
    );
}

#[test]
fn a_replica_binds_runplane_port_itself_and_answers_503_until_ready() {
    if python_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let run = run_with_action(
        json!({"source": {"code": APP}, "handler": "handler", "init_function": "load", "init_parameters": {"hold": true}}),
        json!({"scratch": scratch}),
        "serve",
    );
    let Runnable::Service(service) = runtime().to_runnable(&run).unwrap() else {
        panic!("a serve run is a service");
    };
    let job = &service.replica;
    let work = dir.path().join("work");
    let outputs = dir.path().join("outputs");
    std::fs::create_dir_all(&outputs).unwrap();
    write_files(&job.files, &work);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&job.command[0])
        .args(&job.command[1..])
        .current_dir(&work)
        .env_clear()
        .envs(&job.env)
        .env("RUNPLANE_OUTPUTS", &outputs)
        .env("RUNPLANE_PORT", port.to_string())
        .env("RUNPLANE_REPLICA", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut replica = Replica {
        child,
        port,
        scratch,
        stdout: dir.path().join("none"),
        stderr: dir.path().join("none"),
        outputs,
        _dir: dir,
    };
    replica.wait_for_file("inits");
    // Bound by the runner: it answers while init runs.
    wait_until(|| {
        TcpStream::connect(("127.0.0.1", port)).is_ok() && replica.get(READINESS_PATH).status == 503
    });
    replica.gate("init-gate");
    replica.wait_ready();
    assert_eq!(replica.get("/echo").json()["replica"], 1);
    replica.terminate();
    assert_eq!(replica.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
}
