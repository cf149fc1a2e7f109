//! End-to-end tests of the local framework: real supervisors, real processes.
//!
//! This binary has its own `main` (`harness = false`) because it is also the supervisor: the
//! framework under test starts `<this binary> supervise <attempt dir>`, exactly as the server
//! starts `runplane supervise <attempt dir>`. It understands enough of libtest's command line
//! (`--list`, a name filter, `--exact`) for `cargo test` and `cargo nextest`.

use runplane_domain::{FileEntry, Job, Runnable};
use runplane_frameworks::local::protocol::{ExitFile, JobFile};
use runplane_frameworks::{EventKind, ExecutionId, Framework, FrameworkError};
use runplane_logstore::file::FileLogStore;
use runplane_logstore::{LogStore, Stream};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[macro_use]
mod support;

use support::*;

fn main() {
    support::supervise_if_asked();
    // Something a job must not inherit from the server (see the env test). Set before any
    // thread exists.
    // SAFETY: single-threaded at this point.
    unsafe { std::env::set_var("RUNPLANE_TEST_SERVER_SECRET", "leaked") };

    let tests: &[(&str, TestFn)] = &[
        (
            "job_reports_started_logs_and_outputs_in_order",
            job_reports_started_logs_and_outputs_in_order,
        ),
        (
            "exit_codes_and_signals_are_reported",
            exit_codes_and_signals_are_reported,
        ),
        (
            "missing_programs_fail_to_start",
            missing_programs_fail_to_start,
        ),
        ("stop_kills_the_whole_tree", stop_kills_the_whole_tree),
        (
            "stop_right_after_start_still_exits_cleanly",
            stop_right_after_start_still_exits_cleanly,
        ),
        (
            "jobs_ignoring_sigterm_are_killed_after_the_grace",
            jobs_ignoring_sigterm_are_killed_after_the_grace,
        ),
        (
            "leftover_background_processes_are_killed",
            leftover_background_processes_are_killed,
        ),
        (
            "cleanup_removes_working_state_of_ended_executions",
            cleanup_removes_working_state_of_ended_executions,
        ),
        (
            "supervisors_run_in_their_own_session",
            supervisors_run_in_their_own_session,
        ),
        (
            "supervisor_keeps_going_without_a_server",
            supervisor_keeps_going_without_a_server,
        ),
        (
            "supervisor_reports_exec_failures_in_exit_json",
            supervisor_reports_exec_failures_in_exit_json,
        ),
        (
            "recover_reports_executions_that_ended_or_vanished",
            recover_reports_executions_that_ended_or_vanished,
        ),
        (
            "recover_reattaches_live_supervisors_and_follows_their_logs",
            recover_reattaches_live_supervisors_and_follows_their_logs,
        ),
        (
            "stop_reaches_a_reattached_execution",
            stop_reaches_a_reattached_execution,
        ),
        (
            "output_past_the_log_limit_is_discarded_with_one_marker",
            output_past_the_log_limit_is_discarded_with_one_marker,
        ),
    ];

    run_tests(tests);
}

fn job_reports_started_logs_and_outputs_in_order() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let script = "#!/bin/sh\n\
            echo 'out 1'\n\
            echo 'err 1' >&2\n\
            echo 'out 2'\n\
            echo 'err 2' >&2\n\
            cat data/input.txt\n\
            echo \"$GREETING\"\n\
            echo \"${RUNPLANE_TEST_SERVER_SECRET:-absent}\"\n\
            printf '{\"ok\":true}' > \"$RUNPLANE_OUTPUTS/result.json\"\n\
            printf 'partial'\n";
        let mut job = job(&["./main.sh", "arg"]);
        job.env.insert("GREETING".into(), "hello".into());
        job.files = vec![
            FileEntry {
                path: "main.sh".into(),
                mode: 0o755,
                contents: script.as_bytes().to_vec(),
            },
            FileEntry {
                path: "data/input.txt".into(),
                mode: 0o644,
                contents: b"input data\n".to_vec(),
            },
        ];
        let execution = exec("happy");
        h.framework
            .start(execution.clone(), Runnable::Job(job))
            .await
            .map_err(|e| e.to_string())?;
        let kinds = h.events_until_end(&execution).await?;

        ensure!(
            kinds.first() == Some(&EventKind::Started),
            "Started first: {kinds:?}"
        );
        let offsets: Vec<u64> = kinds
            .iter()
            .filter_map(|k| match k {
                EventKind::LogAppended { end_offset } => Some(*end_offset),
                _ => None,
            })
            .collect();
        ensure!(!offsets.is_empty(), "no LogAppended: {kinds:?}");
        ensure!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "offsets increase: {offsets:?}"
        );
        ensure!(
            kinds[1..kinds.len() - 1]
                .iter()
                .all(|k| matches!(k, EventKind::LogAppended { .. })),
            "only LogAppended between Started and Exited: {kinds:?}"
        );
        let outcome = exited(&kinds)?;
        ensure!(
            outcome.exit_code == Some(0) && outcome.signal.is_none(),
            "{outcome:?}"
        );
        let result = outcome
            .outputs
            .get("result.json")
            .ok_or("no result.json output")?;
        ensure!(
            result.contents == br#"{"ok":true}"# && result.size == 11,
            "{result:?}"
        );

        let stdout = h.lines(&execution, Stream::Stdout)?;
        ensure!(
            stdout
                == [
                    "out 1\n",
                    "out 2\n",
                    "input data\n",
                    "hello\n",
                    "absent\n",
                    "partial"
                ],
            "stdout records: {stdout:?}"
        );
        let stderr = h.lines(&execution, Stream::Stderr)?;
        ensure!(
            stderr == ["err 1\n", "err 2\n"],
            "stderr records: {stderr:?}"
        );
        let system = h.lines(&execution, Stream::System)?;
        ensure!(
            system.is_empty(),
            "no system records for a plain run: {system:?}"
        );
        let end = h
            .logs
            .read(&execution.run_id, 1, 0, usize::MAX)
            .map_err(|e| e.to_string())?
            .next_offset;
        ensure!(
            offsets.last() == Some(&end),
            "last LogAppended {offsets:?} is the log end {end}"
        );

        let exit: ExitFile = serde_json::from_slice(
            &std::fs::read(h.attempt_dir(&execution).join("exit.json"))
                .map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        ensure!(
            exit == ExitFile {
                exit_code: Some(0),
                signal: None,
                stopped: false,
                error: None,
                failure: None,
            },
            "{exit:?}"
        );
        Ok(())
    })
}

fn exit_codes_and_signals_are_reported() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let code = exec("code");
        h.framework
            .start(code.clone(), Runnable::Job(job(&["sh", "-c", "exit 3"])))
            .await
            .map_err(|e| e.to_string())?;
        let outcome = exited(&h.events_until_end(&code).await?)?.clone();
        ensure!(
            outcome.exit_code == Some(3) && outcome.signal.is_none(),
            "{outcome:?}"
        );

        let killed = exec("killed");
        h.framework
            .start(
                killed.clone(),
                Runnable::Job(job(&["sh", "-c", "kill -KILL $$"])),
            )
            .await
            .map_err(|e| e.to_string())?;
        let outcome = exited(&h.events_until_end(&killed).await?)?.clone();
        ensure!(
            outcome.exit_code.is_none() && outcome.signal == Some(9),
            "{outcome:?}"
        );
        Ok(())
    })
}

fn missing_programs_fail_to_start() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let cases: Vec<(Job, &str)> = vec![
            (job(&["/usr/bin/python9", "-c", "pass"]), "cannot start /usr/bin/python9: No such file or directory"),
            (job(&["python9-nowhere"]), "cannot start python9-nowhere: not found in PATH"),
            (
                Job {
                    files: vec![FileEntry { path: "run.py".into(), mode: 0o755, contents: b"#!/usr/bin/python9\n".to_vec() }],
                    ..job(&["./run.py"])
                },
                "cannot start ./run.py: interpreter /usr/bin/python9 (from its #! line): No such file or directory",
            ),
            (
                Job {
                    files: vec![FileEntry { path: "../escape".into(), mode: 0o644, contents: Vec::new() }],
                    ..job(&["true"])
                },
                "job file path \"../escape\" must be relative",
            ),
            (
                Job {
                    files: vec![FileEntry { path: "/etc/evil".into(), mode: 0o644, contents: Vec::new() }],
                    ..job(&["true"])
                },
                "must be relative",
            ),
            (job(&[]), "empty command"),
        ];
        for (i, (job, expected)) in cases.into_iter().enumerate() {
            let execution = exec(&format!("missing-{i}"));
            match h
                .framework
                .start(execution.clone(), Runnable::Job(job))
                .await
            {
                Err(FrameworkError::StartFailed {
                    execution: failed,
                    message,
                }) => {
                    ensure!(failed == execution, "{failed:?}");
                    ensure!(
                        message.contains(expected),
                        "message {message:?} should contain {expected:?}"
                    );
                }
                other => return Err(format!("case {i}: expected StartFailed, got {other:?}")),
            }
            ensure!(
                !h.attempt_dir(&execution).exists(),
                "case {i}: a failed start leaves no folder"
            );
            ensure!(
                matches!(
                    h.framework.stop(&execution).await,
                    Err(FrameworkError::UnknownExecution(_))
                ),
                "case {i}: a failed start is not an execution"
            );
        }
        ensure!(
            h.events.try_recv().is_err(),
            "no events after failed starts"
        );
        Ok(())
    })
}

fn stop_kills_the_whole_tree() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let marker = unique_marker("stop");
        let grace = 5;
        let mut job = marked_job(
            &[
                "sh",
                "-c",
                r#"sleep 1000 & setsid sh -c "sleep 1000 &" ; sleep 1000"#,
            ],
            &marker,
        );
        job.stop_grace_seconds = grace;
        let execution = exec("stop");
        h.framework
            .start(execution.clone(), Runnable::Job(job))
            .await
            .map_err(|e| e.to_string())?;
        h.wait_started(&execution).await?;
        // sh, its background sleep, the daemon's sleep (re-parented), the foreground sleep.
        wait_for("the job's four processes", || {
            (marked_processes(&marker).len() >= 4).then_some(())
        })
        .await?;

        let stopped_at = Instant::now();
        h.framework
            .stop(&execution)
            .await
            .map_err(|e| e.to_string())?;
        h.framework
            .stop(&execution)
            .await
            .map_err(|e| format!("stop is idempotent: {e}"))?;
        let kinds = h.events_until_end(&execution).await?;
        let took = stopped_at.elapsed();
        let outcome = exited(&kinds)?;
        ensure!(
            took < Duration::from_secs(grace + 1),
            "Exited {took:?} after stop"
        );
        ensure!(
            outcome.signal == Some(15),
            "the main process died of SIGTERM: {outcome:?}"
        );
        let survivors = marked_processes(&marker);
        ensure!(
            survivors.is_empty(),
            "processes survived the stop: {survivors:?}"
        );

        let system = h.lines(&execution, Stream::System)?;
        ensure!(
            system.iter().any(|l| l.contains("stop requested")),
            "system records: {system:?}"
        );
        h.framework
            .stop(&execution)
            .await
            .map_err(|e| format!("stop after exit is fine: {e}"))?;
        let exit = std::fs::read_to_string(h.attempt_dir(&execution).join("exit.json"))
            .map_err(|e| e.to_string())?;
        ensure!(exit.contains("\"stopped\": true"), "{exit}");
        Ok(())
    })
}

fn stop_right_after_start_still_exits_cleanly() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        for i in 0..5 {
            let marker = unique_marker("early-stop");
            let execution = exec(&format!("early-{i}"));
            let job = marked_job(&["sh", "-c", "sleep 1000 & sleep 1000"], &marker);
            h.framework
                .start(execution.clone(), Runnable::Job(job))
                .await
                .map_err(|e| e.to_string())?;
            h.framework
                .stop(&execution)
                .await
                .map_err(|e| e.to_string())?;
            let kinds = h.events_until_end(&execution).await?;
            ensure!(kinds.first() == Some(&EventKind::Started), "{kinds:?}");
            exited(&kinds)?;
            let survivors = marked_processes(&marker);
            ensure!(survivors.is_empty(), "processes survived: {survivors:?}");
        }
        Ok(())
    })
}

fn jobs_ignoring_sigterm_are_killed_after_the_grace() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let marker = unique_marker("stubborn");
        let grace = 1;
        let mut job = marked_job(
            &[
                "sh",
                "-c",
                "trap '' TERM; echo ready; while true; do sleep 0.1; done",
            ],
            &marker,
        );
        job.stop_grace_seconds = grace;
        let execution = exec("stubborn");
        h.framework
            .start(execution.clone(), Runnable::Job(job))
            .await
            .map_err(|e| e.to_string())?;
        h.wait_started(&execution).await?;
        // The trap is in place once "ready" is in the log.
        let logs = &h;
        wait_for("the ready line", || {
            logs.lines(&execution, Stream::Stdout)
                .ok()
                .filter(|lines| lines.iter().any(|l| l == "ready\n"))
        })
        .await?;

        let stopped_at = Instant::now();
        h.framework
            .stop(&execution)
            .await
            .map_err(|e| e.to_string())?;
        let kinds = h.events_until_end(&execution).await?;
        let took = stopped_at.elapsed();
        let outcome = exited(&kinds)?;
        ensure!(outcome.signal == Some(9), "SIGKILLed: {outcome:?}");
        ensure!(
            took >= Duration::from_millis(900),
            "killed only after the grace: {took:?}"
        );
        ensure!(
            took < Duration::from_secs(grace + 10),
            "killed soon after the grace: {took:?}"
        );
        let survivors = marked_processes(&marker);
        ensure!(survivors.is_empty(), "processes survived: {survivors:?}");
        let system = h.lines(&execution, Stream::System)?;
        ensure!(
            system.iter().any(|l| l.contains("SIGKILL")),
            "system records: {system:?}"
        );
        Ok(())
    })
}

fn leftover_background_processes_are_killed() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let marker = unique_marker("leftover");
        // The background sleep keeps the job's stdout open: capture can only finish once it is
        // killed.
        let job = marked_job(
            &["sh", "-c", "sleep 1000 & setsid sleep 1000 & echo done"],
            &marker,
        );
        let execution = exec("leftover");
        h.framework
            .start(execution.clone(), Runnable::Job(job))
            .await
            .map_err(|e| e.to_string())?;
        let kinds = h.events_until_end(&execution).await?;
        let outcome = exited(&kinds)?;
        ensure!(outcome.exit_code == Some(0), "{outcome:?}");
        let survivors = marked_processes(&marker);
        ensure!(survivors.is_empty(), "processes survived: {survivors:?}");
        ensure!(h.lines(&execution, Stream::Stdout)? == ["done\n"], "stdout");
        let system = h.lines(&execution, Stream::System)?;
        ensure!(
            system.iter().any(|l| l.contains("left behind")),
            "system records: {system:?}"
        );
        Ok(())
    })
}

fn cleanup_removes_working_state_of_ended_executions() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let execution = exec("cleanup");
        let mut job = job(&["sh", "-c", "echo kept; sleep 1000"]);
        job.files = vec![FileEntry {
            path: "a/b.txt".into(),
            mode: 0o600,
            contents: b"x".to_vec(),
        }];
        job.stop_grace_seconds = 1;
        h.framework
            .start(execution.clone(), Runnable::Job(job))
            .await
            .map_err(|e| e.to_string())?;
        h.wait_started(&execution).await?;
        let dir = h.attempt_dir(&execution);
        ensure!(dir.join("work/a/b.txt").is_file(), "job files are written");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join("work/a/b.txt"))
                .map_err(|e| e.to_string())?
                .permissions(),
        );
        ensure!(mode & 0o777 == 0o600, "file mode {mode:o}");
        let logs = &h;
        wait_for("the kept line", || {
            logs.lines(&execution, Stream::Stdout)
                .ok()
                .filter(|l| l.len() == 1)
        })
        .await?;
        ensure!(
            h.framework.cleanup(&execution).await.is_err(),
            "no cleanup while running"
        );
        ensure!(
            matches!(
                h.framework
                    .start(execution.clone(), Runnable::Job(self::job(&["true"])))
                    .await,
                Err(FrameworkError::StartFailed { .. })
            ),
            "no second start while running"
        );

        h.framework
            .stop(&execution)
            .await
            .map_err(|e| e.to_string())?;
        exited(&h.events_until_end(&execution).await?)?;
        h.framework
            .cleanup(&execution)
            .await
            .map_err(|e| e.to_string())?;
        for gone in ["work", "outputs", "job.json"] {
            ensure!(!dir.join(gone).exists(), "{gone} is removed");
        }
        for kept in ["exit.json", "supervisor.err", "supervisor.pid", "child.pid"] {
            ensure!(dir.join(kept).exists(), "{kept} is kept");
        }
        ensure!(
            h.lines(&execution, Stream::Stdout)? == ["kept\n"],
            "logs are kept"
        );
        h.framework
            .cleanup(&execution)
            .await
            .map_err(|e| format!("cleanup is idempotent: {e}"))?;
        h.framework
            .stop(&execution)
            .await
            .map_err(|e| format!("stop after cleanup: {e}"))?;
        ensure!(
            matches!(
                h.framework.cleanup(&exec("never-started")).await,
                Err(FrameworkError::UnknownExecution(_))
            ),
            "unknown executions are reported"
        );
        Ok(())
    })
}

fn supervisors_run_in_their_own_session() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let execution = exec("session");
        let mut job = job(&["sleep", "1000"]);
        job.stop_grace_seconds = 1;
        h.framework
            .start(execution.clone(), Runnable::Job(job))
            .await
            .map_err(|e| e.to_string())?;
        h.wait_started(&execution).await?;
        let pid_text = std::fs::read_to_string(h.attempt_dir(&execution).join("supervisor.pid"))
            .map_err(|e| e.to_string())?;
        let pid: i32 = pid_text
            .trim()
            .parse()
            .map_err(|e| format!("supervisor.pid: {e}"))?;
        let session = |pid: i32| -> Option<String> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after "(comm)": state ppid pgrp session ...
            stat[stat.rfind(')')? + 1..]
                .split_whitespace()
                .nth(3)
                .map(str::to_string)
        };
        let theirs = session(pid).ok_or("supervisor stat")?;
        let ours = session(std::process::id() as i32).ok_or("own stat")?;
        ensure!(
            theirs == pid.to_string(),
            "the supervisor leads its own session ({theirs})"
        );
        ensure!(theirs != ours, "not the server's session");
        h.framework
            .stop(&execution)
            .await
            .map_err(|e| e.to_string())?;
        exited(&h.events_until_end(&execution).await?)?;
        Ok(())
    })
}

/// The supervisor's own fallback, for programs that vanish between `start`'s check and exec.
fn supervisor_reports_exec_failures_in_exit_json() -> TestResult {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = tmp.path().join("attempt");
    for sub in ["", "work", "outputs"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
    }
    let spec = JobFile {
        run_id: "gone".into(),
        attempt: 2,
        program: "/usr/bin/python9".into(),
        argv: vec!["python9".into()],
        env: BTreeMap::new(),
        stop_grace_seconds: 1,
        log_limit_bytes: 1 << 20,
        workdir: dir.join("work"),
        outputs_dir: dir.join("outputs"),
        log_root: tmp.path().join("logs"),
        service: None,
        redact: Vec::new(),
    };
    std::fs::write(
        dir.join("job.json"),
        serde_json::to_vec(&spec).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let output = std::process::Command::new(exe)
        .arg("supervise")
        .arg(&dir)
        .output()
        .map_err(|e| e.to_string())?;
    ensure!(
        output.status.success(),
        "supervisor exit status {:?}",
        output.status
    );
    let control = String::from_utf8_lossy(&output.stdout);
    ensure!(
        !control.contains("started"),
        "no started message: {control}"
    );
    let exit: ExitFile =
        serde_json::from_slice(&std::fs::read(dir.join("exit.json")).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    ensure!(
        exit.error.as_deref() == Some("cannot start /usr/bin/python9: No such file or directory")
            && exit.exit_code.is_none(),
        "{exit:?}"
    );
    let logs = FileLogStore::new(tmp.path().join("logs"));
    let chunk = logs
        .read("gone", 2, 0, 1 << 20)
        .map_err(|e| e.to_string())?;
    ensure!(
        chunk.records.len() == 1
            && chunk.records[0].stream == Stream::System
            && String::from_utf8_lossy(&chunk.records[0].data)
                .contains("No such file or directory"),
        "{:?}",
        chunk.records
    );
    Ok(())
}

/// The server dies (its end of the control pipe closes) while the job runs: the job goes on,
/// its whole output is logged and `exit.json` is written.
fn supervisor_keeps_going_without_a_server() -> TestResult {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = tmp.path().join("attempt");
    for sub in ["", "work", "outputs"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
    }
    let spec = JobFile {
        run_id: "orphan".into(),
        attempt: 1,
        program: "/bin/sh".into(),
        argv: vec![
            "sh".into(),
            "-c".into(),
            "sleep 0.3; i=0; while [ $i -lt 500 ]; do echo line $i; i=$((i+1)); done".into(),
        ],
        env: BTreeMap::new(),
        stop_grace_seconds: 1,
        log_limit_bytes: 1 << 20,
        workdir: dir.join("work"),
        outputs_dir: dir.join("outputs"),
        log_root: tmp.path().join("logs"),
        service: None,
        redact: Vec::new(),
    };
    std::fs::write(
        dir.join("job.json"),
        serde_json::to_vec(&spec).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut supervisor = std::process::Command::new(exe)
        .arg("supervise")
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    // The "server" goes away at once.
    drop(supervisor.stdout.take());
    let status = supervisor.wait().map_err(|e| e.to_string())?;
    ensure!(status.success(), "supervisor exit status {status:?}");
    let exit: ExitFile =
        serde_json::from_slice(&std::fs::read(dir.join("exit.json")).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    ensure!(exit.exit_code == Some(0), "{exit:?}");
    let logs = FileLogStore::new(tmp.path().join("logs"));
    let mut lines = Vec::new();
    let mut offset = 0;
    loop {
        let chunk = logs
            .read("orphan", 1, offset, 1 << 20)
            .map_err(|e| e.to_string())?;
        if chunk.records.is_empty() {
            break;
        }
        offset = chunk.next_offset;
        lines.extend(
            chunk
                .records
                .into_iter()
                .map(|r| String::from_utf8_lossy(&r.data).into_owned()),
        );
    }
    let expected: Vec<String> = (0..500).map(|i| format!("line {i}\n")).collect();
    ensure!(lines == expected, "{} lines logged", lines.len());
    Ok(())
}

/// Writes the attempt folder of `execution` (job.json for `argv`) the way a previous server
/// process would have, without any framework.
fn orphan_attempt(h: &Harness, execution: &ExecutionId, argv: &[&str]) -> Result<PathBuf, String> {
    let dir = h.attempt_dir(execution);
    for sub in ["", "work", "outputs"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
    }
    let spec = JobFile {
        run_id: execution.run_id.clone(),
        attempt: execution.attempt,
        program: argv[0].into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::from([(
            "RUNPLANE_OUTPUTS".to_string(),
            dir.join("outputs").display().to_string(),
        )]),
        stop_grace_seconds: 1,
        log_limit_bytes: 1 << 20,
        workdir: dir.join("work"),
        outputs_dir: dir.join("outputs"),
        log_root: h.logs.root().to_path_buf(),
        service: None,
        redact: Vec::new(),
    };
    std::fs::write(
        dir.join("job.json"),
        serde_json::to_vec(&spec).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    Ok(dir)
}

/// Starts a supervisor for `dir` as a server that then died would have: its control pipe is
/// closed at once, and `supervisor.pid` records it.
fn orphan_supervisor(dir: &Path) -> Result<std::process::Child, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut supervisor = std::process::Command::new(exe)
        .arg("supervise")
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join("supervisor.err")).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| e.to_string())?;
    drop(supervisor.stdout.take());
    std::fs::write(dir.join("supervisor.pid"), format!("{}\n", supervisor.id()))
        .map_err(|e| e.to_string())?;
    Ok(supervisor)
}

fn recover_reports_executions_that_ended_or_vanished() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        // Ended while no server watched: exit.json and outputs are there.
        let ended = exec("ended");
        let dir = orphan_attempt(&h, &ended, &["/bin/true"])?;
        std::fs::write(dir.join("outputs/results.json"), b"{\"x\": 1}")
            .map_err(|e| e.to_string())?;
        std::fs::write(
            dir.join("exit.json"),
            br#"{"exit_code":0,"signal":null,"stopped":false}"#,
        )
        .map_err(|e| e.to_string())?;
        h.framework
            .recover(vec![ended.clone()])
            .await
            .map_err(|e| e.to_string())?;
        let kinds = h.events_until_end(&ended).await?;
        ensure!(kinds.first() == Some(&EventKind::Started), "{kinds:?}");
        let outcome = exited(&kinds)?;
        ensure!(outcome.exit_code == Some(0), "{outcome:?}");
        ensure!(
            outcome
                .outputs
                .get("results.json")
                .map(|f| f.contents.as_slice())
                == Some(b"{\"x\": 1}".as_slice()),
            "{outcome:?}"
        );

        // Vanished: a folder whose supervisor is dead without exit.json, and no folder at all.
        let gone = exec("gone");
        let dir = orphan_attempt(&h, &gone, &["/bin/true"])?;
        let mut dead = std::process::Command::new("true")
            .spawn()
            .map_err(|e| e.to_string())?;
        dead.wait().map_err(|e| e.to_string())?;
        std::fs::write(dir.join("supervisor.pid"), format!("{}\n", dead.id()))
            .map_err(|e| e.to_string())?;
        let never = exec("never-started");
        h.framework
            .recover(vec![gone.clone(), never.clone()])
            .await
            .map_err(|e| e.to_string())?;
        for (execution, expected) in [
            (&gone, "gone and left no exit status"),
            (&never, "no attempt folder"),
        ] {
            let event = h.next_event().await?;
            ensure!(&event.execution == execution, "{event:?}");
            ensure!(
                matches!(&event.kind, EventKind::Lost { message } if message.contains(expected)),
                "{event:?}"
            );
        }
        // A lost execution is not known to stop; an ended one is.
        ensure!(
            matches!(
                h.framework.stop(&never).await,
                Err(FrameworkError::UnknownExecution(_))
            ),
            "unknown"
        );
        h.framework.stop(&ended).await.map_err(|e| e.to_string())?;
        Ok(())
    })
}

fn recover_reattaches_live_supervisors_and_follows_their_logs() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let execution = exec("live");
        let gate = h.runs_dir.join("live.gate");
        let gate2 = h.runs_dir.join("live.gate2");
        // Bounded waits, so that a failing test leaves nothing running for long.
        let script = format!(
            "echo one; i=0; while [ ! -e '{0}' ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; \
             echo two; i=0; while [ ! -e '{1}' ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; \
             echo '{{}}' > \"$RUNPLANE_OUTPUTS/results.json\"",
            gate.display(),
            gate2.display()
        );
        let dir = orphan_attempt(&h, &execution, &["/bin/sh", "-c", &script])?;
        let mut supervisor = orphan_supervisor(&dir)?;
        wait_for("the job's first line", || {
            let lines = h.lines(&execution, Stream::Stdout).ok()?;
            (lines == ["one\n"]).then_some(())
        })
        .await?;

        h.framework
            .recover(vec![execution.clone()])
            .await
            .map_err(|e| e.to_string())?;
        h.wait_started(&execution).await?;
        // What was logged while no server watched is announced first.
        let event = h.next_event().await?;
        ensure!(
            matches!(event.kind, EventKind::LogAppended { end_offset } if end_offset > 0),
            "{event:?}"
        );
        // Recovering again changes nothing: it is already followed.
        h.framework
            .recover(vec![execution.clone()])
            .await
            .map_err(|e| e.to_string())?;

        // A line written now is announced while the job still runs (the log file is watched).
        let opened = Instant::now();
        std::fs::write(&gate, b"").map_err(|e| e.to_string())?;
        let event = h.next_event().await?;
        let EventKind::LogAppended {
            end_offset: announced,
        } = event.kind
        else {
            return Err(format!("expected LogAppended, got {event:?}"));
        };
        eprintln!(
            "    a re-attached execution's new line was announced after {:?}",
            opened.elapsed()
        );
        std::fs::write(&gate2, b"").map_err(|e| e.to_string())?;
        let kinds = h.events_until_end(&execution).await?;
        let outcome = exited(&kinds)?;
        ensure!(outcome.exit_code == Some(0), "{outcome:?}");
        ensure!(outcome.outputs.contains_key("results.json"), "{outcome:?}");
        let log_end = h
            .logs
            .read(&execution.run_id, execution.attempt, 0, 1 << 20)
            .map_err(|e| e.to_string())?
            .next_offset;
        ensure!(
            announced == log_end,
            "the whole log was announced: {announced} of {log_end}"
        );
        ensure!(
            h.lines(&execution, Stream::Stdout)? == ["one\n", "two\n"],
            "{:?}",
            h.lines(&execution, Stream::Stdout)
        );
        supervisor.wait().map_err(|e| e.to_string())?;
        Ok(())
    })
}

fn stop_reaches_a_reattached_execution() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let execution = exec("stopped");
        let marker = unique_marker("reattached-stop");
        let dir = orphan_attempt(&h, &execution, &["/bin/sh", "-c", "sleep 60 & wait"])?;
        // Mark the job's processes so the test can find them.
        let job_path = dir.join("job.json");
        let mut spec: JobFile =
            serde_json::from_slice(&std::fs::read(&job_path).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        spec.env
            .insert("RUNPLANE_TEST_MARKER".into(), marker.clone());
        std::fs::write(
            &job_path,
            serde_json::to_vec(&spec).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let mut supervisor = orphan_supervisor(&dir)?;
        wait_for("the job to run", || {
            (marked_processes(&marker).len() >= 2 && dir.join("child.pid").exists()).then_some(())
        })
        .await?;

        h.framework
            .recover(vec![execution.clone()])
            .await
            .map_err(|e| e.to_string())?;
        h.wait_started(&execution).await?;
        h.framework
            .stop(&execution)
            .await
            .map_err(|e| e.to_string())?;
        let kinds = h.events_until_end(&execution).await?;
        let outcome = exited(&kinds)?;
        ensure!(outcome.signal == Some(libc_sigterm()), "{outcome:?}");
        let exit: ExitFile = serde_json::from_slice(
            &std::fs::read(dir.join("exit.json")).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        ensure!(exit.stopped, "{exit:?}");
        ensure!(
            marked_processes(&marker).is_empty(),
            "left behind: {:?}",
            marked_processes(&marker)
        );
        supervisor.wait().map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// SIGTERM's number (15 on Linux), without a libc dependency in the test.
fn libc_sigterm() -> i32 {
    15
}

/// A chatty job under a small log limit: its output up to the limit is kept in order, one
/// `system` record marks the cut, the rest is discarded, and the job is not held up by its
/// pipes (it writes far more than a pipe buffer and still finishes).
fn output_past_the_log_limit_is_discarded_with_one_marker() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let limit: u64 = 64 * 1024;
        let script = "#!/bin/sh\n\
            i=0\n\
            while [ $i -lt 20000 ]; do\n\
              echo \"line $i ................................................................\"\n\
              i=$((i+1))\n\
            done\n\
            echo 'late err' >&2\n\
            echo done > \"$RUNPLANE_OUTPUTS/done.txt\"\n";
        let mut job = job(&["./main.sh"]);
        job.log_limit_bytes = Some(limit);
        job.files = vec![FileEntry {
            path: "main.sh".into(),
            mode: 0o755,
            contents: script.as_bytes().to_vec(),
        }];
        let execution = exec("capped");
        h.framework
            .start(execution.clone(), Runnable::Job(job))
            .await
            .map_err(|e| e.to_string())?;
        let kinds = h.events_until_end(&execution).await?;
        let outcome = exited(&kinds)?;
        ensure!(
            outcome.exit_code == Some(0) && outcome.outputs.contains_key("done.txt"),
            "the job ran to its end: {outcome:?}"
        );
        let records = h.log(&execution)?;
        let system: Vec<String> = records
            .iter()
            .filter(|r| r.stream == Stream::System)
            .map(|r| String::from_utf8_lossy(&r.data).into_owned())
            .collect();
        ensure!(
            system == ["runplane: log limit of 65536 bytes reached; further output is discarded\n"],
            "one marker: {system:?}"
        );
        let marker_at = records
            .iter()
            .position(|r| r.stream == Stream::System)
            .ok_or("no marker")?;
        ensure!(
            marker_at == records.len() - 1,
            "nothing after the marker: {} records, marker at {marker_at}",
            records.len()
        );
        let stdout = h.lines(&execution, Stream::Stdout)?;
        ensure!(
            stdout.len() > 100 && stdout.len() < 20000,
            "a prefix was kept: {} lines",
            stdout.len()
        );
        for (i, line) in stdout.iter().enumerate() {
            ensure!(
                line.starts_with(&format!("line {i} ")),
                "in order: {i}: {line:?}"
            );
        }
        let size = std::fs::metadata(
            h.logs
                .log_path(&execution.run_id, 1)
                .map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?
        .len();
        ensure!(
            size <= limit + 200,
            "the log stops near the limit: {size} bytes"
        );
        Ok(())
    })
}
