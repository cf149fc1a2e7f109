//! A real `runplane server` on a free loopback port with its own home, and helpers to drive
//! it through the real CLI and the REST API.

#![allow(dead_code)]

use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_runplane");

pub struct TestServer {
    /// The `runplane` binary this server and [`TestServer::cli`] run: [`BIN`] unless the test
    /// chose another (the upgrade tests start the previous release's).
    pub bin: PathBuf,
    pub url: String,
    pub home: tempfile::TempDir,
    pub work: tempfile::TempDir,
    child: Child,
    pub http: reqwest::blocking::Client,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(&[])
    }

    pub fn start_with(extra_args: &[&str]) -> TestServer {
        Self::start_binary(Path::new(BIN), extra_args)
    }

    /// Starts the server of another `runplane` binary (see [`TestServer::bin`]).
    pub fn start_binary(bin: &Path, extra_args: &[&str]) -> TestServer {
        let home = tempfile::tempdir().expect("temp home");
        let work = tempfile::tempdir().expect("temp work dir");
        let listen = format!("127.0.0.1:{}", free_port());
        let child = spawn_server(bin, home.path(), &listen, extra_args, &[]);
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("http client");
        let server = TestServer {
            bin: bin.to_path_buf(),
            url: format!("http://{listen}"),
            home,
            work,
            child,
            http,
        };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(response) = self.http.get(format!("{}/healthz", self.url)).send() {
                if response.status().is_success() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not become healthy: {}", self.server_log());
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("server.out")).unwrap_or_default()
    }

    /// Runs the CLI against this server in project `project`.
    pub fn cli(&self, project: &str, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env("RUNPLANE_URL", &self.url)
            .env("RUNPLANE_PROJECT", project)
            .current_dir(self.work.path())
            .stdin(Stdio::null())
            .output()
            .expect("run the runplane CLI")
    }

    /// Writes a file into the test's working directory.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.work.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write file");
        path
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.api(path)).send().expect("GET");
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(Value::Null))
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.api(path))
            .json(body)
            .send()
            .expect("POST");
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(Value::Null))
    }

    /// Waits for a run to reach `state` (by polling the API, in the test only).
    pub fn wait_state(&self, project: &str, id: &str, state: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (_, run) = self.get(&format!("/projects/{project}/runs/{id}"));
            if run["status"]["state"] == state {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} never reached {state}: {run:#}\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestServer {
    /// Kills the server and anything still running under its home (supervisors and jobs a
    /// failed test left behind), so that one failure does not leak processes into the next.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let home = self.home.path().display().to_string();
        for pid in processes_with(&home) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Starts `runplane server` on `listen` with `home`; its output goes (appended) to
/// `<home>/server.out`.
fn spawn_server(
    bin: &Path,
    home: &Path,
    listen: &str,
    extra_args: &[&str],
    env: &[(&str, &str)],
) -> Child {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(home.join("server.out"))
        .expect("server log");
    Command::new(bin)
        .args(["server", "--listen", listen, "--home"])
        .arg(home)
        .args(extra_args)
        .env("RUNPLANE_LOG", "info,runplane_server=debug")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start runplane server")
}

/// The field paths of a problem+json body's errors.
pub fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("free port")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// PIDs of live processes whose command line or environment contains `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let mut pids = vec![];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let dir = entry.path();
        if is_zombie(&dir) {
            continue;
        }
        for file in ["cmdline", "environ"] {
            if let Ok(bytes) = std::fs::read(dir.join(file)) {
                if String::from_utf8_lossy(&bytes).contains(marker) {
                    pids.push(pid);
                    break;
                }
            }
        }
    }
    pids
}

fn is_zombie(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

impl TestServer {
    /// GET of a plain-text resource (logs): status and body.
    pub fn get_text(&self, path: &str) -> (u16, String) {
        let response = self.http.get(self.api(path)).send().expect("GET");
        let status = response.status().as_u16();
        (status, response.text().unwrap_or_default())
    }
}

impl TestServer {
    /// Kills the server with SIGKILL — a crash: no shutdown code runs — and reaps it. Its runs'
    /// supervisors live on in their own sessions.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a new server process on the same home, port and `extra_args` (after
    /// [`TestServer::kill9`]); its output is appended to the same `server.out`.
    pub fn restart(&mut self, extra_args: &[&str]) {
        assert!(
            self.restart_with_env(extra_args, &[]),
            "the restarted server died: {}",
            self.server_log()
        );
    }
}

impl TestServer {
    /// Kills the server (SIGKILL: nothing is flushed on the way out) and starts a new one on
    /// the same home, working directory and port (so that clients can reconnect). What the
    /// store committed must be there after it.
    pub fn restart_same_home(mut self) -> TestServer {
        self.kill9();
        self.restart(&[]);
        self
    }

    /// Opens `GET /api/v1/events{query}` (e.g. `?after=0&project=p`), with `Last-Event-ID`
    /// when given. Returns once the server has answered: the stream's start is fixed then.
    pub fn open_events(&self, query: &str, last_event_id: Option<u64>) -> EventStream {
        let mut request = self.http.get(format!("{}/api/v1/events{query}", self.url));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().expect("GET /events");
        assert_eq!(response.status().as_u16(), 200, "GET /events{query}");
        EventStream {
            lines: std::io::BufReader::new(response),
        }
    }
}

/// One Server-Sent Event of `/api/v1/events`.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: u64,
    pub event: String,
    pub data: Value,
}

/// A blocking reader of an SSE response. Reads fail after the test client's timeout, so a
/// missing event fails the test instead of hanging it.
pub struct EventStream {
    lines: std::io::BufReader<reqwest::blocking::Response>,
}

impl EventStream {
    /// The next event (keep-alive comments skipped).
    pub fn next_event(&mut self) -> SseEvent {
        use std::io::BufRead;
        let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
        loop {
            let mut line = String::new();
            let read = self
                .lines
                .read_line(&mut line)
                .expect("read the event stream");
            assert!(read > 0, "the event stream ended");
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if data.is_empty() && id.is_none() {
                    continue;
                }
                return SseEvent {
                    id: id.expect("every event has an id"),
                    event,
                    data: serde_json::from_str(&data).expect("event data is JSON"),
                };
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.parse().expect("numeric event id")),
                "event" => event = value.to_string(),
                "data" => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                _ => {}
            }
        }
    }

    /// Events (not `ready`) up to and including the first for which `last` holds.
    pub fn until(&mut self, last: impl Fn(&SseEvent) -> bool) -> Vec<SseEvent> {
        let mut events = vec![];
        loop {
            let event = self.next_event();
            if event.event == "ready" {
                continue;
            }
            let done = last(&event);
            events.push(event);
            if done {
                return events;
            }
        }
    }
}

impl TestServer {
    /// Starts a new server process on the same home and port (after [`TestServer::kill9`], or
    /// after it died) with extra environment variables; its output is appended to
    /// `server.out`. Returns false when the process died before answering `/healthz` (a
    /// failpoint at start-up): the test decides what comes next.
    pub fn restart_with_env(&mut self, extra_args: &[&str], env: &[(&str, &str)]) -> bool {
        let listen = self.url.trim_start_matches("http://").to_string();
        self.child = spawn_server(&self.bin, self.home.path(), &listen, extra_args, env);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !self.is_running() {
                return false;
            }
            if let Ok(response) = self.http.get(format!("{}/healthz", self.url)).send() {
                if response.status().is_success() {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server did not become healthy: {}", self.server_log());
    }

    /// Whether the server process is alive (false once it died or was killed, and reaped).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Waits for run `id` of project `p` to reach a terminal state (by polling, in the test only).
pub fn wait_run_ended(server: &TestServer, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, run) = server.get(&format!("/projects/p/runs/{id}"));
        if ["COMPLETED", "ERROR", "STOPPED"]
            .contains(&run["status"]["state"].as_str().unwrap_or(""))
        {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} never ended: {run:#}\n{}",
            server.server_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `(event, id, data)` of every event in a complete SSE body.
pub fn sse_events(body: &str) -> Vec<(String, String, String)> {
    let mut events = vec![];
    for block in body.split("\n\n") {
        let (mut event, mut id, mut data) = (String::from("message"), String::new(), String::new());
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("event:") {
                event = value.trim().to_string();
            } else if let Some(value) = line.strip_prefix("id:") {
                id = value.trim().to_string();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.trim_start());
            }
        }
        if !data.is_empty() {
            events.push((event, id, data));
        }
    }
    events
}

impl TestServer {
    /// Asks the server to shut down (SIGTERM, as a service manager would) and waits for it to
    /// exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(
            sent.is_ok_and(|status| status.success()),
            "kill -TERM {pid}"
        );
        self.child.wait().is_ok_and(|status| status.success())
    }
}

/// Applies an inline Python function `name` (handler `handler`) in project `p`.
pub fn function(server: &TestServer, name: &str, code: &str) {
    let (status, body) = server.post(
        "/projects/p/functions",
        &serde_json::json!({"kind": "python", "metadata": {"name": name}, "spec": {"handler": "handler", "source": {"code": code}}}),
    );
    assert_eq!(status, 201, "{body}");
}

/// Submits a run request in project `p`; returns the run's id.
pub fn submit(server: &TestServer, request: Value) -> String {
    let (status, run) = server.post("/projects/p/runs", &request);
    assert_eq!(status, 201, "{run}");
    run["metadata"]["id"].as_str().expect("run id").to_string()
}

impl TestServer {
    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Resident memory of a process in KiB (`VmRSS`), 0 when it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}
