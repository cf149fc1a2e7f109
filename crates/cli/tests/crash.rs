//! The crash test (issue 3): a server that keeps dying — killed with SIGKILL by the test at
//! random moments, and killing itself at named failpoints (`runplane_server::failpoints`)
//! between claim, start and record — loses nothing and runs nothing twice.
//!
//! Each iteration (re)starts the server on the same home with one failpoint armed (`nth:K`),
//! or all of them at a low probability, or none; submits a mix of jobs (short,
//! long-ish, failing, chatty); and waits until the server died at its failpoint or kills it.
//! At the end a server without failpoints takes over and every run must end. Checked then:
//! every run is in one terminal state; no run executed twice (each execution appends a line to
//! a marker file of its run); every line a completed chatty job printed is in its log once, in
//! order; no process of the test is left; every failpoint was hit.
//!
//! `RUNPLANE_CRASH_ITERATIONS` (default 40) sets the number of iterations,
//! `RUNPLANE_CRASH_SEED` the random seed (printed in the report). `scripts/crash-test` runs it
//! long.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

/// Every failpoint the server has: each must be hit.
const FAILPOINTS: [&str; 6] = runplane_server::failpoints::NAMES;
const DEFAULT_ITERATIONS: usize = 40;
const CHATTY_LINES: usize = 300;
const KINDS: [&str; 4] = ["short", "long", "failing", "chatty"];
const TERMINAL: [&str; 3] = ["COMPLETED", "ERROR", "STOPPED"];

/// xorshift64: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn function_code(markers: &Path) -> String {
    format!(
        "import os, time\n\
         def handler(kind='short', context=None):\n    \
             with open(os.path.join({markers:?}, context.run_id), 'a') as f:\n        \
                 f.write(context.run_id + '\\n')\n    \
             if kind == 'long':\n        \
                 time.sleep(1.5)\n    \
             elif kind == 'failing':\n        \
                 raise RuntimeError('failing on purpose')\n    \
             elif kind == 'chatty':\n        \
                 for i in range({CHATTY_LINES}):\n            \
                     print(f'chatty {{i}}', flush=True)\n            \
                     if i % 30 == 0:\n                \
                         time.sleep(0.02)\n    \
             print(f'done {{kind}}', flush=True)\n    \
             return {{'kind': kind}}\n",
        markers = markers.display().to_string(),
    )
}

/// What a completed chatty job's log must be, exactly.
fn chatty_log() -> String {
    let mut text: String = (0..CHATTY_LINES).map(|i| format!("chatty {i}\n")).collect();
    text.push_str("done chatty\n");
    text
}

/// POSTs a run; None when the server did not answer (it died meanwhile).
fn try_submit(server: &TestServer, kind: &str) -> Option<String> {
    let response = server
        .http
        .post(server.api("/projects/p/runs"))
        .json(&json!({"function": "crashy", "parameters": {"kind": kind}}))
        .send()
        .ok()?;
    let status = response.status().as_u16();
    let body: Value = response.json().ok()?;
    assert_eq!(status, 201, "{body}");
    body["metadata"]["id"].as_str().map(str::to_string)
}

/// Every run of project `p`, following the pages.
fn all_runs(server: &TestServer) -> Vec<Value> {
    let mut runs = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(cursor) => format!("?limit=1000&cursor={cursor}"),
            None => "?limit=1000".to_string(),
        };
        let (status, page) = server.get(&format!("/projects/p/runs{query}"));
        assert_eq!(status, 200, "{page}");
        runs.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return runs,
        }
    }
}

fn state(run: &Value) -> &str {
    run["status"]["state"].as_str().unwrap_or_default()
}

/// Where an iteration's server dies.
#[derive(Clone, Copy)]
enum Target {
    /// At this failpoint, its n-th hit (n random, 1 to 5; the first for `after_recover`).
    One(&'static str),
    /// At any failpoint, each hit with probability 1/30, or killed by the test.
    All,
    /// Killed by the test at a random moment.
    None,
}

#[derive(Default)]
struct Report {
    iterations: usize,
    runs: usize,
    by_state: BTreeMap<String, usize>,
    failpoint_crashes: BTreeMap<String, usize>,
    random_kills: usize,
    submit_failures: usize,
    requeued: usize,
    lost_before_start: usize,
    lost_after_executing: usize,
    duplicated_executions: usize,
    missing_log_lines: usize,
    duplicated_log_lines: usize,
    checked_logs: usize,
    uncleaned_attempts: usize,
    problems: Vec<String>,
}

impl Report {
    fn print(&self, seed: u64, elapsed: Duration) {
        eprintln!("\n== crash test report (RUNPLANE_CRASH_SEED={seed}) ==");
        eprintln!("iterations: {}", self.iterations);
        eprintln!("elapsed: {:.1} s", elapsed.as_secs_f64());
        eprintln!("runs: {} {:?}", self.runs, self.by_state);
        eprintln!("crashes per failpoint:");
        for name in FAILPOINTS {
            eprintln!(
                "  {name}: {}",
                self.failpoint_crashes.get(name).copied().unwrap_or(0)
            );
        }
        eprintln!("random kill -9: {}", self.random_kills);
        eprintln!("submissions without an answer: {}", self.submit_failures);
        eprintln!(
            "runs requeued (server died between claim and start; never executed): {}",
            self.requeued
        );
        eprintln!(
            "lost runs (never executed, requeued too often): {}",
            self.lost_before_start
        );
        eprintln!("lost runs that had executed: {}", self.lost_after_executing);
        eprintln!("duplicated executions: {}", self.duplicated_executions);
        eprintln!(
            "logs of completed chatty runs checked: {}",
            self.checked_logs
        );
        eprintln!("missing log lines: {}", self.missing_log_lines);
        eprintln!("duplicated log lines: {}", self.duplicated_log_lines);
        eprintln!("ended attempts not cleaned up: {}", self.uncleaned_attempts);
        eprintln!("problems: {}", self.problems.len());
        for problem in self.problems.iter().take(50) {
            eprintln!("  {problem}");
        }
    }
}

/// Compares a chatty job's log with what it printed: (missing lines, duplicated lines,
/// whether the order is right).
fn compare_log(log: &str) -> (usize, usize, bool) {
    let expected: Vec<String> = chatty_log().lines().map(str::to_string).collect();
    let got: Vec<&str> = log.lines().collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for line in &got {
        *counts.entry(line).or_default() += 1;
    }
    let missing = expected
        .iter()
        .filter(|line| !counts.contains_key(line.as_str()))
        .count();
    let duplicated = counts.values().map(|n| n.saturating_sub(1)).sum();
    (missing, duplicated, got == expected)
}

#[test]
fn no_run_is_lost_or_executed_twice_across_crashes() {
    let iterations = std::env::var("RUNPLANE_CRASH_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_ITERATIONS);
    let seed = std::env::var("RUNPLANE_CRASH_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let mut rng = Rng(seed | 1);
    let began = Instant::now();

    let mut server = TestServer::start();
    let markers = server.work.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let (status, body) = server.post(
        "/projects/p/functions",
        &json!({"kind": "python", "metadata": {"name": "crashy"},
                "spec": {"handler": "handler", "source": {"code": function_code(&markers)}}}),
    );
    assert_eq!(status, 201, "{body}");
    let failpoints_log = server.work.path().join("failpoints.log");
    let failpoints_log_text = failpoints_log.display().to_string();
    let crashes_at = |name: &str| -> usize {
        std::fs::read_to_string(&failpoints_log)
            .unwrap_or_default()
            .lines()
            .filter(|line| *line == name)
            .count()
    };
    let mut report = Report::default();

    // The scheduled iterations, then (a few) more for any failpoint not hit yet.
    let mut iteration = 0;
    loop {
        // Each failpoint in turn, then all of them at a low probability, then none (only the
        // test's kill -9 at a random moment).
        let target = if iteration < iterations {
            match iteration % 8 {
                i if i < FAILPOINTS.len() => Target::One(FAILPOINTS[i]),
                6 => Target::All,
                _ => Target::None,
            }
        } else if iteration < iterations + 2 * FAILPOINTS.len() {
            match FAILPOINTS.iter().find(|name| crashes_at(name) == 0) {
                Some(name) => Target::One(name),
                None => break,
            }
        } else {
            break;
        };
        iteration += 1;
        let failpoints = match target {
            Target::One("after_recover") => "after_recover=nth:1".to_string(),
            Target::One(name) => format!("{name}=nth:{}", 1 + rng.below(5)),
            Target::All => FAILPOINTS
                .iter()
                .map(|name| format!("{name}=1/30"))
                .collect::<Vec<_>>()
                .join(","),
            Target::None => String::new(),
        };
        server.kill9();
        let env = [
            ("RUNPLANE_FAILPOINTS", failpoints.as_str()),
            ("RUNPLANE_FAILPOINTS_LOG", failpoints_log_text.as_str()),
        ];
        if !server.restart_with_env(&[], &env) {
            continue; // It died during start-up (recovery): the next iteration restarts it.
        }
        let jobs = 6 + rng.below(4);
        for _ in 0..jobs {
            let kind = KINDS[rng.below(KINDS.len() as u64) as usize];
            if try_submit(&server, kind).is_none() {
                report.submit_failures += 1;
                break;
            }
        }
        // Until it dies at its failpoint, or a random moment to kill it.
        let window = match target {
            Target::One(_) => Duration::from_millis(4000),
            Target::All | Target::None => Duration::from_millis(200 + rng.below(2300)),
        };
        let deadline = Instant::now() + window;
        while server.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if server.is_running() {
            report.random_kills += 1;
        }
    }
    report.iterations = iteration;

    // A server without failpoints takes over; every run must end.
    server.kill9();
    assert!(
        server.restart_with_env(&[], &[]),
        "the final server died: {}",
        server.server_log()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let runs = loop {
        let runs = all_runs(&server);
        if runs.iter().all(|run| TERMINAL.contains(&state(run))) {
            break runs;
        }
        if Instant::now() > deadline {
            let stuck: Vec<String> = runs
                .iter()
                .filter(|run| !TERMINAL.contains(&state(run)))
                .map(|run| format!("{} {}", run["metadata"]["id"], state(run)))
                .collect();
            panic!("runs never ended: {stuck:?}\n{}", server.server_log());
        }
        std::thread::sleep(Duration::from_millis(100));
    };

    report.runs = runs.len();
    for name in FAILPOINTS {
        report
            .failpoint_crashes
            .insert(name.to_string(), crashes_at(name));
    }
    for run in &runs {
        let id = run["metadata"]["id"].as_str().unwrap_or_default();
        let state = state(run);
        let why = run["status"]["reason"].as_str().unwrap_or_default();
        let kind = run["spec"]["parameters"]["kind"]
            .as_str()
            .unwrap_or_default();
        *report.by_state.entry(state.to_string()).or_default() += 1;
        let marker = std::fs::read_to_string(markers.join(id)).unwrap_or_default();
        let executions = marker.lines().count();
        if marker.lines().any(|line| line != id) {
            report.problems.push(format!("{id}: marker of another run"));
        }
        if executions > 1 {
            report.duplicated_executions += 1;
            report
                .problems
                .push(format!("{id} ({kind}) executed {executions} times"));
        }
        // Only an attempt that never ran its code (the server died between claim and start)
        // makes another one.
        let attempt = run["status"]["attempt"].as_u64().unwrap_or(0);
        let requeues = run["status"]["transitions"]
            .as_array()
            .map_or(0, |transitions| {
                transitions
                    .iter()
                    .filter(|t| t["reason"] == "requeued")
                    .count() as u64
            });
        if requeues > 0 {
            report.requeued += 1;
        }
        if attempt != 1 + requeues {
            report
                .problems
                .push(format!("{id}: attempt {attempt} after {requeues} requeues"));
        }
        // What a finished attempt no longer needs is gone (job.json holds its environment).
        let run_dir = server.home.path().join("runs").join(id);
        // (The server cleans up just after it records the end: give it a moment.)
        let cleanup_deadline = Instant::now() + Duration::from_secs(5);
        let left = loop {
            let left: Vec<String> = (1..=attempt)
                .flat_map(|n| {
                    ["work", "outputs", "job.json"]
                        .into_iter()
                        .map(move |name| format!("{n}/{name}"))
                })
                .filter(|name| run_dir.join(name).exists())
                .collect();
            if left.is_empty() || Instant::now() > cleanup_deadline {
                break left;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !left.is_empty() {
            report.uncleaned_attempts += 1;
            report.problems.push(format!(
                "{id} ({kind}, {state}): {left:?} left in its attempt folder"
            ));
        }
        if state == "ERROR" && why == "lost" {
            if executions == 0 {
                report.lost_before_start += 1;
            } else {
                report.lost_after_executing += 1;
                report.problems.push(format!(
                    "{id} ({kind}) executed but ended lost: {}",
                    run["status"]["message"]
                ));
            }
            continue;
        }
        let expected = if kind == "failing" {
            "ERROR"
        } else {
            "COMPLETED"
        };
        if (state, executions) != (expected, 1) {
            report.problems.push(format!(
                "{id} ({kind}): {state} ({why}: {}) after {executions} executions, expected {expected}",
                run["status"]["message"]
            ));
        }
        if kind == "chatty" && state == "COMPLETED" {
            let (status, log) =
                server.get_text(&format!("/projects/p/runs/{id}/logs?attempt={attempt}"));
            assert_eq!(status, 200, "{log}");
            let (missing, duplicated, in_order) = compare_log(&log);
            report.checked_logs += 1;
            report.missing_log_lines += missing;
            report.duplicated_log_lines += duplicated;
            if missing + duplicated > 0 || !in_order {
                report.problems.push(format!(
                    "{id}: log has {missing} missing and {duplicated} duplicated lines, in order: {in_order}"
                ));
            }
        }
    }

    // No process of the test is left once every run ended (the server aside).
    server.kill9();
    let home = server.home.path().display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut orphans = processes_with(&home);
    while !orphans.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        orphans = processes_with(&home);
    }
    if !orphans.is_empty() {
        report
            .problems
            .push(format!("processes left behind: {orphans:?}"));
    }
    for name in FAILPOINTS {
        if crashes_at(name) == 0 {
            report
                .problems
                .push(format!("failpoint {name} was never hit"));
        }
    }

    report.print(seed, began.elapsed());
    if !report.problems.is_empty() {
        let log = server.server_log();
        let tail: Vec<&str> = log.lines().rev().take(200).collect();
        eprintln!("--- the servers' log, last lines ---");
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
    }
    assert!(
        report.problems.is_empty(),
        "{} problems, see the report above",
        report.problems.len()
    );
}
