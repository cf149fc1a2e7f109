//! Bad input and faults (issue 3): a missing interpreter, a supervisor killed under a running
//! job, a corrupt `exit.json`, a full disk under the logs. Each ends the affected run with a
//! clear reason and message while the server goes on serving every other run.

mod support;

use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

const QUICK: &str = "def handler(n=1):\n    return {'n': n}\n";

/// Starts a subprocess and sleeps; every process carries the task's `RP_MARKER` variable.
const SLEEPER: &str = "import subprocess, time\n\
def handler(seconds=1000):\n    \
    subprocess.Popen(['sleep', str(seconds)])\n    \
    print('sleeping', flush=True)\n    \
    time.sleep(seconds)\n    \
    return 'slept'\n";

/// A task for `function` whose processes all carry `marker` in their environment.
fn marked_task(server: &TestServer, task: &str, function: &str, marker: &str) {
    let (status, body) = server.post(
        "/projects/p/tasks",
        &json!({"kind": "python+job", "metadata": {"name": task}, "spec": {"function": function, "env": {"RP_MARKER": marker}}}),
    );
    assert_eq!(status, 200, "{body}");
}

fn wait_no_process(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !processes_with(marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes outlived their run: {:?}",
            processes_with(marker)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn attempt_dir(server: &TestServer, id: &str) -> std::path::PathBuf {
    server.home.path().join("runs").join(id).join("1")
}

#[test]
fn a_missing_interpreter_fails_the_start_and_other_servers_and_runs_go_on() {
    let bad = TestServer::start_with(&["--python", "/usr/bin/python9"]);
    let good = TestServer::start();
    function(&bad, "quick", QUICK);
    function(&good, "quick", QUICK);
    let failing = submit(&bad, json!({"function": "quick"}));
    let fine = submit(&good, json!({"function": "quick", "parameters": {"n": 2}}));

    let run = wait_run_ended(&bad, &failing, Duration::from_secs(30));
    assert_eq!(run["status"]["state"], "ERROR", "{run:#}");
    assert_eq!(run["status"]["reason"], "start_failed", "{run:#}");
    let message = run["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("/usr/bin/python9"), "{message}");

    let run = wait_run_ended(&good, &fine, Duration::from_secs(30));
    assert_eq!(run["status"]["state"], "COMPLETED", "{run:#}");
    assert_eq!(run["status"]["results"], json!({"n": 2}));

    // The bad server still answers, and fails the next run the same way.
    let again = submit(&bad, json!({"function": "quick"}));
    let run = wait_run_ended(&bad, &again, Duration::from_secs(30));
    assert_eq!(run["status"]["reason"], "start_failed", "{run:#}");
    let (status, listed) = bad.get("/projects/p/runs");
    assert_eq!(status, 200, "{listed}");
}

#[test]
fn a_killed_supervisor_ends_its_run_lost_and_leaves_no_process() {
    let server = TestServer::start();
    let marker = format!("rp-fault-sup-{}", free_port());
    function(&server, "sleeper", SLEEPER);
    function(&server, "quick", QUICK);
    marked_task(&server, "marked", "sleeper", &marker);
    let victim = submit(&server, json!({"function": "sleeper", "task": "marked"}));
    let bystander = submit(
        &server,
        json!({"function": "sleeper", "task": "marked", "parameters": {"seconds": 3}}),
    );
    server.wait_state("p", &victim, "RUNNING", Duration::from_secs(30));
    server.wait_state("p", &bystander, "RUNNING", Duration::from_secs(30));
    // The job has started its subprocess once it printed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server
        .get_text(&format!("/projects/p/runs/{victim}/logs"))
        .1
        .contains("sleeping")
    {
        assert!(Instant::now() < deadline, "the job never printed");
        std::thread::sleep(Duration::from_millis(50));
    }

    let pid_file = attempt_dir(&server, &victim).join("supervisor.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
    let killed = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .expect("kill");
    assert!(killed.success());

    let run = wait_run_ended(&server, &victim, Duration::from_secs(30));
    assert_eq!(run["status"]["state"], "ERROR", "{run:#}");
    assert_eq!(run["status"]["reason"], "lost", "{run:#}");
    let message = run["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("supervisor"), "{message}");

    let run = wait_run_ended(&server, &bystander, Duration::from_secs(30));
    assert_eq!(run["status"]["state"], "COMPLETED", "{run:#}");
    assert_eq!(run["status"]["results"], "slept");
    wait_no_process(&marker);

    // And the server takes new runs.
    let next = submit(&server, json!({"function": "quick"}));
    let run = wait_run_ended(&server, &next, Duration::from_secs(30));
    assert_eq!(run["status"]["state"], "COMPLETED", "{run:#}");
}

#[test]
fn a_corrupt_exit_json_found_on_restart_ends_the_run_lost() {
    let mut server = TestServer::start();
    function(&server, "sleeper", SLEEPER);
    function(&server, "quick", QUICK);
    let id = submit(
        &server,
        json!({"function": "sleeper", "parameters": {"seconds": 1}}),
    );
    server.wait_state("p", &id, "RUNNING", Duration::from_secs(30));
    // The server dies; the job ends while nobody watches, and its exit.json gets damaged.
    server.kill9();
    let exit_json = attempt_dir(&server, &id).join("exit.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !exit_json.exists() {
        assert!(
            Instant::now() < deadline,
            "the supervisor never wrote exit.json"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(&exit_json, b"{\"exit_code\": 0, \"sig").expect("corrupt exit.json");
    server.restart(&[]);

    let run = wait_run_ended(&server, &id, Duration::from_secs(30));
    assert_eq!(run["status"]["state"], "ERROR", "{run:#}");
    assert_eq!(run["status"]["reason"], "lost", "{run:#}");
    let message = run["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("exit.json"), "{message}");

    let next = submit(&server, json!({"function": "quick"}));
    let run = wait_run_ended(&server, &next, Duration::from_secs(30));
    assert_eq!(run["status"]["state"], "COMPLETED", "{run:#}");
}

/// A small tmpfs mounted over a folder for as long as it lives (lazily unmounted).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_under_the_logs_ends_the_run_and_the_server_goes_on() {
    let server = TestServer::start();
    let Some(_full) = Tmpfs::mount(&server.home.path().join("logs"), "256k") else {
        // CI runs as root, where mounting must work: only a non-root developer run may skip.
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        assert_ne!(
            String::from_utf8_lossy(&uid).trim(),
            "0",
            "root could not mount a tmpfs"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let marker = format!("rp-fault-disk-{}", free_port());
    function(
        &server,
        "chatty",
        "import time\ndef handler():\n    for i in range(100000):\n        print(f'line {i:06} ' + 'x' * 90, flush=True)\n    time.sleep(1000)\n",
    );
    function(&server, "quick", QUICK);
    marked_task(&server, "marked", "chatty", &marker);
    let id = submit(&server, json!({"function": "chatty", "task": "marked"}));
    let run = wait_run_ended(&server, &id, Duration::from_secs(60));
    assert_eq!(run["status"]["state"], "ERROR", "{run:#}");
    let message = run["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("cannot write the log") && message.contains("No space left on device"),
        "{message}"
    );
    assert_eq!(run["status"]["reason"], "lost", "{run:#}");
    wait_no_process(&marker);
    // What fitted is readable.
    let (status, text) = server.get_text(&format!("/projects/p/runs/{id}/logs"));
    assert_eq!(status, 200, "{text}");
    assert!(
        text.starts_with("line 000000 "),
        "{}",
        &text[..text.len().min(200)]
    );

    // A run that does not log still completes on the same server.
    let next = submit(
        &server,
        json!({"function": "quick", "parameters": {"n": 3}}),
    );
    let run = wait_run_ended(&server, &next, Duration::from_secs(30));
    assert_eq!(run["status"]["state"], "COMPLETED", "{run:#}");
    assert_eq!(run["status"]["results"], json!({"n": 3}));
}
