//! End-to-end tests of the local framework: real supervisors, real processes.
//!
//! This binary has its own `main` (`harness = false`) because it is also the supervisor: the
//! framework under test starts `<this binary> supervise <attempt dir>`, exactly as the server
//! starts `runplane supervise <attempt dir>`. It understands enough of libtest's command line
//! (`--list`, a name filter, `--exact`) for `cargo test` and `cargo nextest`.

use runplane_domain::{FileEntry, Job, Runnable};
use runplane_frameworks::local::protocol::{ExitFile, JobFile};
use runplane_frameworks::local::STANDBY_ACK_PATIENCE;
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

    let tests: &[(&str, TestFn)] = &[
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
            "cleanup_keeps_the_supervisor_files",
            cleanup_keeps_the_supervisor_files,
        ),
        (
            "supervisors_run_in_their_own_process_group",
            supervisors_run_in_their_own_process_group,
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
            "later_executions_run_under_a_standby_supervisor",
            later_executions_run_under_a_standby_supervisor,
        ),
        (
            "standby_supervisor_follows_its_stdin",
            standby_supervisor_follows_its_stdin,
        ),
        (
            "later_executions_start_in_a_spare_folder",
            later_executions_start_in_a_spare_folder,
        ),
        (
            "recover_reports_a_dead_supervisor_as_lost",
            recover_reports_a_dead_supervisor_as_lost,
        ),
        (
            "recover_reports_attempts_whose_job_never_started",
            recover_reports_attempts_whose_job_never_started,
        ),
        (
            "recover_reattaches_live_supervisors_and_follows_their_logs",
            recover_reattaches_live_supervisors_and_follows_their_logs,
        ),
    ];

    run_tests(tests);
}

fn missing_programs_fail_to_start() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let cases: Vec<(Job, &str)> = vec![
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

/// What local cleanup keeps (the supervisor's files, read by a restarted server) and what it
/// knows; the rest of cleanup is the conformance suite's.
fn cleanup_keeps_the_supervisor_files() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let execution = exec("cleanup");
        let mut job = job(&["sh", "-c", "echo kept"]);
        job.files = vec![FileEntry {
            path: "a/b.txt".into(),
            mode: 0o600,
            contents: b"x".to_vec(),
        }];
        h.framework
            .start(execution.clone(), Runnable::Job(job))
            .await
            .map_err(|e| e.to_string())?;
        exited(&h.events_until_end(&execution).await?)?;
        let dir = h.attempt_dir(&execution);
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

fn supervisors_run_in_their_own_process_group() -> TestResult {
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
        let group = |pid: i32| -> Option<String> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after "(comm)": state ppid pgrp session ...
            stat[stat.rfind(')')? + 1..]
                .split_whitespace()
                .nth(2)
                .map(str::to_string)
        };
        let theirs = group(pid).ok_or("supervisor stat")?;
        let ours = group(std::process::id() as i32).ok_or("own stat")?;
        ensure!(
            theirs == pid.to_string(),
            "the supervisor leads its own process group ({theirs})"
        );
        ensure!(
            theirs != ours,
            "not the server's process group: a Ctrl-C on its terminal never reaches runs"
        );
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
    let dir = attempt_folder(tmp.path(), ("gone", 2), "/usr/bin/python9", &["python9"])?;
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
    let dir = attempt_folder(
        tmp.path(),
        ("orphan", 1),
        "/bin/sh",
        &[
            "sh",
            "-c",
            "sleep 0.3; i=0; while [ $i -lt 500 ]; do echo line $i; i=$((i+1)); done",
        ],
    )?;
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
    orphan_attempt_of_boot(h, execution, argv, current_boot_id())
}

fn current_boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_string())
}

/// An attempt folder as a server prepares it, in the boot `boot_id`.
fn orphan_attempt_of_boot(
    h: &Harness,
    execution: &ExecutionId,
    argv: &[&str],
    boot_id: Option<String>,
) -> Result<PathBuf, String> {
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
        boot_id,
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

/// A supervisor that died without writing `exit.json` (killed with the machine, in an earlier
/// boot: its job may have run though no child.pid is left): `Lost`. The other recovery
/// outcomes are the conformance suite's.
fn recover_reports_a_dead_supervisor_as_lost() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let gone = exec("gone");
        let dir =
            orphan_attempt_of_boot(&h, &gone, &["/bin/true"], Some("an-earlier-boot".into()))?;
        let mut dead = std::process::Command::new("true")
            .spawn()
            .map_err(|e| e.to_string())?;
        dead.wait().map_err(|e| e.to_string())?;
        std::fs::write(dir.join("supervisor.pid"), format!("{}\n", dead.id()))
            .map_err(|e| e.to_string())?;
        h.framework
            .recover(vec![gone.clone()])
            .await
            .map_err(|e| e.to_string())?;
        let event = h.next_event().await?;
        ensure!(event.execution == gone, "{event:?}");
        ensure!(
            matches!(&event.kind, EventKind::Lost { message } if message.contains("gone and left no exit status")),
            "{event:?}"
        );
        Ok(())
    })
}

/// In this boot, an attempt whose job was never spawned (no folder: the server died before
/// preparing it; a folder without job.json: it died while preparing it; a folder without
/// child.pid, supervisor or word from one: it died before spawning the supervisor) is `NeverStarted`, which the controller may start again. A
/// supervisor that said something on its stderr failed on its own: `Lost`.
fn recover_reports_attempts_whose_job_never_started() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let unprepared = exec("unprepared");
        let half_prepared = exec("half-prepared");
        let unspawned = exec("unspawned");
        let complained = exec("complained");
        // The server died while filling the folder: no job.json yet.
        std::fs::create_dir_all(h.attempt_dir(&half_prepared).join("work"))
            .map_err(|e| e.to_string())?;
        orphan_attempt(&h, &unspawned, &["/bin/true"])?;
        let dir = orphan_attempt(&h, &complained, &["/bin/true"])?;
        std::fs::write(
            dir.join("supervisor.err"),
            "runplane supervise: cannot read job.json\n",
        )
        .map_err(|e| e.to_string())?;
        h.framework
            .recover(vec![
                unprepared.clone(),
                half_prepared.clone(),
                unspawned.clone(),
                complained.clone(),
            ])
            .await
            .map_err(|e| e.to_string())?;
        let mut seen = BTreeMap::new();
        for _ in 0..4 {
            let event = h.next_event().await?;
            seen.insert(event.execution.run_id.clone(), event.kind);
        }
        for never in [&unprepared, &half_prepared, &unspawned] {
            ensure!(
                matches!(
                    seen.get(&never.run_id),
                    Some(EventKind::NeverStarted { .. })
                ),
                "{}: {seen:?}",
                never.run_id
            );
        }
        ensure!(
            matches!(
                seen.get(&complained.run_id),
                Some(EventKind::Lost { message }) if message.contains("cannot read job.json")
            ),
            "{seen:?}"
        );
        Ok(())
    })
}

/// A supervisor whose server died (its control pipe closed) is re-attached through its log
/// file and a pidfd. The conformance suite restarts a framework in-process, where the old
/// instance's pipe stays open; this is the real crash's path.
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

/// `<tmp>/attempt`, prepared as the framework would for a job running `program` with `argv`,
/// its log under `<tmp>/logs`: for starting supervisors by hand.
fn attempt_folder(
    tmp: &Path,
    (run_id, attempt): (&str, u32),
    program: &str,
    argv: &[&str],
) -> Result<PathBuf, String> {
    let dir = tmp.join("attempt");
    for sub in ["", "work", "outputs"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
    }
    let spec = JobFile {
        run_id: run_id.into(),
        attempt,
        program: program.into(),
        argv: argv.iter().map(|arg| arg.to_string()).collect(),
        env: BTreeMap::new(),
        stop_grace_seconds: 1,
        log_limit_bytes: 1 << 20,
        workdir: dir.join("work"),
        outputs_dir: dir.join("outputs"),
        log_root: tmp.join("logs"),
        service: None,
        redact: Vec::new(),
        boot_id: None,
    };
    std::fs::write(
        dir.join("job.json"),
        serde_json::to_vec(&spec).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    Ok(dir)
}

/// Whether a child of this process is a standby supervisor waiting for a folder.
fn standby_waiting() -> Option<()> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // Fields after "(comm)": state ppid ...
            let ppid = stat.rsplit_once(") ")?.1.split(' ').nth(1)?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            (ppid == me && cmdline.ends_with(b"supervise\0-\0")).then_some(())
        })
}

/// The first execution's supervisor is spawned for it; once a standby waits, the next
/// execution runs under it, told its folder on stdin: the same job, the same log, its
/// diagnostics in `supervisor.err`, and it leaves once `cleanup` has run.
fn later_executions_run_under_a_standby_supervisor() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let mut parents = Vec::new();
        for name in ["first", "second"] {
            if name == "second" {
                wait_for("a standby supervisor", standby_waiting).await?;
            }
            let execution = exec(name);
            let job = job(&["sh", "-c", "tr '\\0' ' ' < /proc/$PPID/cmdline"]);
            h.framework
                .start(execution.clone(), Runnable::Job(job))
                .await
                .map_err(|e| e.to_string())?;
            let outcome = exited(&h.events_until_end(&execution).await?)?.clone();
            ensure!(outcome.exit_code == Some(0), "{name}: {outcome:?}");
            let dir = h.attempt_dir(&execution);
            ensure!(
                dir.join("supervisor.err").exists(),
                "{name}: supervisor.err is there"
            );
            let supervisor: i32 = std::fs::read_to_string(dir.join("supervisor.pid"))
                .map_err(|e| e.to_string())?
                .trim()
                .parse()
                .map_err(|e| format!("supervisor.pid: {e}"))?;
            h.framework
                .cleanup(&execution)
                .await
                .map_err(|e| e.to_string())?;
            // Cleanup acknowledges the end (or, at worst, closes the pipe): either way the
            // supervisor leaves at once, not after STANDBY_ACK_PATIENCE. Whether it skipped
            // its fsyncs is not visible here (strace shows it; see bench/workflow).
            let told = Instant::now();
            while std::fs::read(format!("/proc/{supervisor}/cmdline"))
                .is_ok_and(|cmdline| !cmdline.is_empty())
            {
                ensure!(
                    told.elapsed() < STANDBY_ACK_PATIENCE / 2,
                    "{name}: the supervisor still runs {:?} after cleanup",
                    told.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            parents.push(h.lines(&execution, Stream::Stdout)?.concat());
        }
        let first_dir = h.attempt_dir(&exec("first"));
        ensure!(
            parents[0]
                .trim_end()
                .ends_with(&format!("supervise {}", first_dir.display())),
            "the first supervisor is spawned for its folder: {parents:?}"
        );
        ensure!(
            parents[1].trim_end().ends_with("supervise -"),
            "the second is the standby: {parents:?}"
        );
        Ok(())
    })
}

/// The spare attempt folders in `runs_dir`.
fn spares(runs_dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(runs_dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(".spare-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Once an execution started, a spare attempt folder is made for the next, shaped like the
/// first job's files. The next execution takes it: its job finds its own files (contents and
/// modes) and none of the first job's, and its log is where the log store reads it.
fn later_executions_start_in_a_spare_folder() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let file = |path: &str, mode: u32, contents: &str| FileEntry {
            path: path.into(),
            mode,
            contents: contents.as_bytes().to_vec(),
        };
        let script = "#!/bin/sh\nfind . | sort\nstat -c '%n %a %s' run.sh *.txt lib/*.txt 2>/dev/null\ncat *.txt lib/*.txt 2>/dev/null\ntrue\n";
        let first = Job {
            files: vec![
                file("run.sh", 0o755, script),
                file("lib/x.txt", 0o644, "one\n"),
            ],
            ..job(&["./run.sh"])
        };
        let second = Job {
            files: vec![file("run.sh", 0o750, script), file("b.txt", 0o600, "two\n")],
            ..job(&["./run.sh"])
        };
        let mut outputs = Vec::new();
        for (name, job) in [("shaped-1", first), ("shaped-2", second)] {
            let before = if name == "shaped-2" {
                let runs_dir = h.runs_dir.clone();
                wait_for("a spare attempt folder", || {
                    Some(spares(&runs_dir)).filter(|s| !s.is_empty())
                })
                .await?
            } else {
                Vec::new()
            };
            let inodes: BTreeMap<String, u64> = before
                .iter()
                .filter_map(|spare| {
                    use std::os::unix::fs::MetadataExt;
                    let meta = std::fs::metadata(h.runs_dir.join(spare)).ok()?;
                    Some((spare.clone(), meta.ino()))
                })
                .collect();
            let execution = exec(name);
            h.framework
                .start(execution.clone(), Runnable::Job(job))
                .await
                .map_err(|e| e.to_string())?;
            if !inodes.is_empty() {
                // The run's folder is the spare, renamed: the same inode.
                use std::os::unix::fs::MetadataExt;
                let taken = std::fs::metadata(h.runs_dir.join(&execution.run_id))
                    .map(|meta| meta.ino())
                    .map_err(|e| e.to_string())?;
                ensure!(
                    inodes.values().any(|&inode| inode == taken),
                    "{name}: the run's folder is one of the spares {inodes:?}"
                );
            }
            let outcome = exited(&h.events_until_end(&execution).await?)?.clone();
            ensure!(outcome.exit_code == Some(0), "{name}: {outcome:?}");
            outputs.push(h.lines(&execution, Stream::Stdout)?.concat());
            h.framework
                .cleanup(&execution)
                .await
                .map_err(|e| e.to_string())?;
        }
        let expected = [
            ".\n./lib\n./lib/x.txt\n./run.sh\nrun.sh 755 SIZE\nlib/x.txt 644 4\none\n",
            ".\n./b.txt\n./run.sh\nrun.sh 750 SIZE\nb.txt 600 4\ntwo\n",
        ]
        .map(|text| text.replace("SIZE", &script.len().to_string()));
        ensure!(
            outputs == expected,
            "each job sees its own files only: {outputs:?}, expected {expected:?}"
        );
        Ok(())
    })
}

/// `supervise -` runs the folder it is told on stdin and, once `exit.json` is written and its
/// control channel closed, waits for the server's acknowledgement, and exits when it comes.
/// A standby told nothing before its stdin ends exits at once, writing nothing.
fn standby_supervisor_follows_its_stdin() -> TestResult {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let standby = || {
        Command::new(&exe)
            .args(["supervise", runplane_frameworks::local::STANDBY_ARG])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())
    };

    let mut idle = standby()?;
    drop(idle.stdin.take());
    let output = idle.wait_with_output().map_err(|e| e.to_string())?;
    ensure!(
        output.status.success() && output.stdout.is_empty(),
        "an idle standby leaves quietly: {output:?}"
    );

    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = attempt_folder(
        tmp.path(),
        ("standby", 1),
        "/bin/sh",
        &["sh", "-c", "echo hi"],
    )?;
    let mut supervisor = standby()?;
    let mut acks = supervisor.stdin.take().ok_or("no stdin")?;
    let mut told = dir.as_os_str().as_encoded_bytes().to_vec();
    told.push(0);
    acks.write_all(&told).map_err(|e| e.to_string())?;
    let mut control = String::new();
    supervisor
        .stdout
        .take()
        .ok_or("no stdout")?
        .read_to_string(&mut control)
        .map_err(|e| e.to_string())?;
    ensure!(control.contains("started"), "control messages: {control}");
    let exit: ExitFile =
        serde_json::from_slice(&std::fs::read(dir.join("exit.json")).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    ensure!(exit.exit_code == Some(0), "{exit:?}");
    ensure!(
        dir.join("supervisor.err").exists(),
        "the standby made supervisor.err its stderr"
    );
    ensure!(
        supervisor.try_wait().map_err(|e| e.to_string())?.is_none(),
        "the supervisor waits for the acknowledgement"
    );
    let told = Instant::now();
    acks.write_all(&[runplane_frameworks::local::STANDBY_ACK])
        .map_err(|e| e.to_string())?;
    let status = supervisor.wait().map_err(|e| e.to_string())?;
    ensure!(status.success(), "supervisor exit status {status:?}");
    // Unacknowledged, it would have waited out STANDBY_ACK_PATIENCE.
    ensure!(
        told.elapsed() < STANDBY_ACK_PATIENCE / 2,
        "the acknowledgement ends the wait ({:?})",
        told.elapsed()
    );
    let logs = FileLogStore::new(tmp.path().join("logs"));
    let chunk = logs
        .read("standby", 1, 0, 1 << 20)
        .map_err(|e| e.to_string())?;
    ensure!(
        chunk.records.iter().any(|r| r.data == b"hi\n"),
        "{:?}",
        chunk.records
    );
    Ok(())
}
