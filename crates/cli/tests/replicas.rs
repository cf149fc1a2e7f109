//! Several server replicas on one PostgreSQL database: runs submitted to any replica run once,
//! a replica killed mid-run has its runs adopted by the others, events reach every replica,
//! and a scheduler fires each tick once cluster-wide.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

/// Sleeps, then appends its run id to a file every replica sees: how many times each run's
/// code executed.
const MARKER: &str = r#"
import os, time

def handler(context, seconds, marker):
    time.sleep(seconds)
    with open(marker, "a") as f:
        f.write(context.run_id + "\n")
    return {"slept": seconds}
"#;

struct Cluster {
    replicas: Vec<TestServer>,
    shared: tempfile::TempDir,
}

fn cluster(size: usize) -> Cluster {
    let url = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(runplane_store::postgres::testing::fresh_database());
    let shared = tempfile::tempdir().expect("shared dir");
    let key = shared.path().join("secret.key");
    write_key(&key);
    let replicas = (0..size)
        .map(|i| {
            TestServer::start_with(&[
                "--store",
                &url,
                "--replica-id",
                &format!("r{i}"),
                "--replica-lease-seconds",
                "3",
                "--shared-dir",
                &shared.path().display().to_string(),
                "--secret-key-file",
                &key.display().to_string(),
            ])
        })
        .collect();
    Cluster { replicas, shared }
}

fn write_key(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let bytes: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    let mut file = options.open(path).expect("key file");
    std::io::Write::write_all(&mut file, &bytes).expect("write key");
}

fn run_of(server: &TestServer, id: &str) -> Value {
    let (status, run) = server.get(&format!("/projects/p/runs/{id}"));
    assert_eq!(status, 200, "{run}");
    run
}

#[test]
fn runs_end_once_across_replicas_and_a_dead_replicas_runs_are_adopted() {
    let mut cluster = cluster(3);
    let marker = cluster.shared.path().join("executed.txt");
    function(&cluster.replicas[0], "work", MARKER);

    // Every replica accepts runs; whichever claims one owns it.
    let mut ids = Vec::new();
    for i in 0..24 {
        let server = &cluster.replicas[i % 3];
        let seconds = 0.5 + (i % 4) as f64 * 0.75;
        ids.push(submit(
            server,
            json!({"function": "work", "parameters": {
                "seconds": seconds, "marker": marker.display().to_string()}}),
        ));
    }
    // Wait until r1 runs one of the long runs (>= 2 s, so it is still running when
    // the kill lands), then kill r1 (SIGKILL: no shutdown code runs).
    let long = |id: &String| {
        let i = ids.iter().position(|other| other == id).unwrap_or(0);
        i % 4 >= 2
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running_long_on_r1 = ids.iter().filter(|id| long(id)).any(|id| {
            let run = run_of(&cluster.replicas[0], id);
            run["status"]["owner"] == "r1" && run["status"]["state"] == "RUNNING"
        });
        if running_long_on_r1 {
            break;
        }
        assert!(Instant::now() < deadline, "r1 never ran a long run");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.replicas[1].kill9();
    // What r1 had finished before it died stays r1's; what it had not, another
    // replica must take over.
    let unfinished_on_r1: Vec<String> = ids
        .iter()
        .filter(|id| {
            let run = run_of(&cluster.replicas[0], id);
            run["status"]["owner"] == "r1"
                && !["COMPLETED", "ERROR", "STOPPED"]
                    .contains(&run["status"]["state"].as_str().unwrap_or(""))
        })
        .cloned()
        .collect();
    assert!(!unfinished_on_r1.is_empty(), "r1 had no unfinished run");

    // A wait on r2 for a run r0 accepted: r2 learns of it through the event log.
    let (status, waited) = cluster.replicas[2].get(&format!("/projects/p/runs/{}?wait=60", ids[0]));
    assert_eq!(status, 200);
    assert!(
        waited["status"]["state"] == "COMPLETED",
        "{waited:#}\n{}",
        cluster.replicas[2].server_log()
    );

    let survivors = [&cluster.replicas[0], &cluster.replicas[2]];
    let mut ended = BTreeMap::new();
    for id in &ids {
        let run = wait_run_ended(survivors[0], id, Duration::from_secs(90));
        ended.insert(id.clone(), run);
    }
    let executed = std::fs::read_to_string(&marker).unwrap_or_default();
    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    for line in executed.lines() {
        *times.entry(line).or_default() += 1;
    }
    for (id, run) in &ended {
        let terminal: Vec<&Value> = run["status"]["transitions"]
            .as_array()
            .expect("transitions")
            .iter()
            .filter(|t| ["COMPLETED", "ERROR", "STOPPED"].contains(&t["to"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(terminal.len(), 1, "ended once: {run:#}");
        // An attempt whose replica died before it started is requeued; only one starts.
        let started = run["status"]["attempts"]
            .as_array()
            .expect("attempts")
            .iter()
            .filter(|attempt| attempt["started"].is_string())
            .count();
        assert_eq!(started, 1, "started once: {run:#}");
        assert_eq!(
            run["status"]["state"],
            "COMPLETED",
            "{run:#}\nr0:\n{}\nr2:\n{}",
            survivors[0].server_log(),
            survivors[1].server_log()
        );
        assert_eq!(
            times.get(id.as_str()),
            Some(&1),
            "{id} executed once: {executed}"
        );
    }
    // The runs r1 had not finished were finished by another replica, which took them over.
    for id in &unfinished_on_r1 {
        let owner = ended[id]["status"]["owner"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(owner == "r0" || owner == "r2", "{id}: {owner}");
    }
    // Every replica claimed some of the runs.
    let owners: std::collections::BTreeSet<String> = ended
        .values()
        .filter_map(|run| run["status"]["owner"].as_str().map(str::to_string))
        .collect();
    assert!(owners.len() >= 2, "{owners:?}");
}

#[test]
fn a_scheduler_fires_each_tick_once_across_replicas() {
    let cluster = cluster(3);
    function(
        &cluster.replicas[0],
        "tick",
        "def handler(at):\n    return at\n",
    );
    let (status, body) = cluster.replicas[1].post(
        "/projects/p/triggers",
        &json!({"kind": "scheduler", "metadata": {"name": "every-second"},
                "spec": {"schedule": "* * * * * *", "catch_up": "skip",
                         "template": {"function": "tick",
                                      "parameters": {"at": "${{ fire.scheduled_time }}"}}}}),
    );
    assert_eq!(status, 201, "{body}");
    std::thread::sleep(Duration::from_secs(4));
    let (_, paused) =
        cluster.replicas[2].post("/projects/p/triggers/every-second/pause", &json!({}));
    assert_eq!(paused["status"]["paused"], true, "{paused}");
    let (_, fires) = cluster.replicas[0].get("/projects/p/triggers/every-second/fires?limit=1000");
    let fires = fires.as_array().expect("fires").clone();
    assert!(fires.len() >= 2, "{fires:#?}");
    let mut ticks: Vec<String> = fires
        .iter()
        .map(|fire| {
            fire["scheduled_for"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let total = ticks.len();
    ticks.sort();
    ticks.dedup();
    assert_eq!(ticks.len(), total, "a tick fired twice: {fires:#?}");
}

#[test]
fn a_task_limit_holds_across_replicas() {
    let cluster = cluster(3);
    function(
        &cluster.replicas[0],
        "span",
        "import time\n\ndef handler():\n    start = time.time()\n    time.sleep(0.4)\n    return [start, time.time()]\n",
    );
    let (status, task) = cluster.replicas[0].post(
        "/projects/p/tasks",
        &json!({"kind": "python+job", "metadata": {"name": "two-at-a-time"},
                "spec": {"function": "span", "max_concurrency": 2}}),
    );
    assert_eq!(status, 200, "{task}");
    let ids: Vec<String> = (0..9)
        .map(|i| submit(&cluster.replicas[i % 3], json!({"function": "span"})))
        .collect();
    let mut spans = Vec::new();
    for id in &ids {
        let run = wait_run_ended(&cluster.replicas[0], id, Duration::from_secs(60));
        assert_eq!(run["status"]["state"], "COMPLETED", "{run:#}");
        let span = run["status"]["results"].as_array().expect("span").clone();
        spans.push((span[0].as_f64().unwrap(), span[1].as_f64().unwrap()));
    }
    // At any run's start, how many were running (itself included).
    let most = spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(most <= 2, "{most} ran at once: {spans:?}");
    assert_eq!(most, 2, "the limit was used: {spans:?}");
}
