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
        let home = tempfile::tempdir().expect("temp home");
        let work = tempfile::tempdir().expect("temp work dir");
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let log = std::fs::File::create(home.path().join("server.out")).expect("server log");
        let child = Command::new(BIN)
            .args(["server", "--listen", &format!("127.0.0.1:{port}"), "--home"])
            .arg(home.path())
            .args(extra_args)
            .env("RUNPLANE_LOG", "info,runplane_server=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start runplane server");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("http client");
        let server = TestServer {
            url,
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
        Command::new(BIN)
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
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
