//! The environment builder, run for real: the job of a `build` run with `target: environment`
//! is written into a temporary folder and its command started there (as the local framework
//! would), with the real `uv` against PyPI and the real interpreter.
//!
//! Skipped (with a note on stderr) where `/usr/bin/python3` or `/usr/local/bin/uv` is missing.

use runplane_domain::{ExitOutcome, Job, OutputFile, Run, RunState, Runnable};
use runplane_runtimes::python::{PythonConfig, PythonRuntime};
use runplane_runtimes::{Lock, Runtime};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod support;

use support::{inspector, python_missing, run_with_action, write_files, PYTHON};

const UV: &str = "/usr/local/bin/uv";

fn uv_missing() -> bool {
    let missing = !Path::new(UV).exists();
    if missing {
        eprintln!("skipped: {UV} is not installed");
    }
    missing
}

fn runtime(environments: &Path) -> PythonRuntime {
    PythonRuntime::new(
        PythonConfig {
            interpreter: PYTHON.to_string(),
            environments_dir: environments.to_string_lossy().into_owned(),
            uv: UV.to_string(),
            ..PythonConfig::default()
        },
        inspector(),
    )
}

fn lock_of(text: &str) -> Lock {
    Lock {
        text: text.to_string(),
        hash: hex::encode(Sha256::digest(text.as_bytes())),
    }
}

/// The environment build of a function whose requirements resolved to `lock`.
fn build_run(runtime: &PythonRuntime, lock: &Lock) -> Run {
    let mut run = run_with_action(
        json!({"source": {"code": "import six\n\ndef handler():\n    return {'version': six.__version__, 'file': six.__file__}\n"}, "handler": "handler", "requirements": ["six"]}),
        json!({"target": "environment"}),
        "build",
    );
    run.spec.function_spec = runtime.with_lock(run.spec.function_spec.clone(), lock);
    // A stored spec with a lock is still a valid spec.
    runtime.normalize_function(&run.spec.function_spec).unwrap();
    run
}

fn job_of(runtime: &PythonRuntime, run: &Run) -> Job {
    match runtime.to_runnable(run).unwrap() {
        Runnable::Job(job) => job,
        other => panic!("not a job: {other:?}"),
    }
}

/// A started job in its own working folder; [`Started::wait`] collects its outcome.
struct Started {
    child: std::process::Child,
    outputs: PathBuf,
    _dir: tempfile::TempDir,
}

struct Finished {
    outcome: ExitOutcome,
    log: String,
}

fn start(job: &Job) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let outputs = dir.path().join("outputs");
    std::fs::create_dir_all(&outputs).unwrap();
    write_files(&job.files, &work);
    let mut command = Command::new(&job.command[0]);
    command
        .args(&job.command[1..])
        .current_dir(&work)
        .env_clear()
        .envs(&job.env)
        .env("RUNPLANE_OUTPUTS", &outputs)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // What the local framework passes through from the server (uv needs HOME and PATH).
    for name in ["PATH", "HOME"] {
        if let Ok(value) = std::env::var(name) {
            command.env(name, value);
        }
    }
    Started {
        child: command.spawn().unwrap(),
        outputs,
        _dir: dir,
    }
}

impl Started {
    fn wait(self) -> Finished {
        let Output {
            status,
            stdout,
            stderr,
        } = self.child.wait_with_output().unwrap();
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(&self.outputs).unwrap() {
            let entry = entry.unwrap();
            let contents = std::fs::read(entry.path()).unwrap();
            let size = contents.len() as u64;
            files.insert(
                entry.file_name().to_string_lossy().into_owned(),
                OutputFile { contents, size },
            );
        }
        Finished {
            outcome: ExitOutcome {
                exit_code: status.code(),
                signal: status.signal(),
                outputs: files,
                failure: None,
                outputs_dir: None,
            },
            log: format!(
                "{}{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            ),
        }
    }
}

fn results(finished: &Finished) -> Value {
    let file = finished
        .outcome
        .outputs
        .get("results.json")
        .unwrap_or_else(|| panic!("no results.json; log:\n{}", finished.log));
    serde_json::from_slice(&file.contents).unwrap()
}

/// Names in `dir` that are neither environments nor what builds keep (locks, uv's cache).
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".tmp-"))
        .collect()
}

#[test]
fn an_environment_is_built_once_and_then_reused() {
    if python_missing() || uv_missing() {
        return;
    }
    let envs = tempfile::tempdir().unwrap();
    let environments = envs.path().join("envs");
    let runtime = runtime(&environments);
    let lock = lock_of("six==1.17.0\n");
    let run = build_run(&runtime, &lock);
    let folder = environments.join(&lock.hash);
    let prerequisite = runtime
        .prerequisite(&run_with_lock_as_job(&runtime, &lock))
        .unwrap();
    assert_eq!(Path::new(&prerequisite.ready_path), folder);

    // A killed build's temporary folder is removed by the next build of that lock.
    let stale = environments.join(format!(".tmp-{}-999999", lock.hash));
    std::fs::create_dir_all(stale.join("half")).unwrap();

    let job = job_of(&runtime, &run);
    let started = std::time::Instant::now();
    let first = start(&job).wait();
    eprintln!("built in {:?}", started.elapsed());
    assert_eq!(first.outcome.exit_code, Some(0), "{}", first.log);
    assert_eq!(
        results(&first),
        json!({"environment": lock.hash, "reused": false})
    );
    assert!(folder.join("six.py").is_file(), "{}", first.log);
    let got = runtime.interpret(&run, &first.outcome);
    assert_eq!(got.state, RunState::Completed);
    assert_eq!(got.results, Some(results(&first)));

    // The environment works: a job of the locked function imports six from it.
    let job_run = run_with_lock_as_job(&runtime, &lock);
    let used = start(&job_of(&runtime, &job_run)).wait();
    assert_eq!(used.outcome.exit_code, Some(0), "{}", used.log);
    assert_eq!(results(&used)["version"], "1.17.0");
    assert_eq!(
        results(&used)["file"],
        json!(folder.join("six.py").to_string_lossy())
    );
    assert!(!folder.join(".lock").exists(), "uv's own lock is removed");

    let started = std::time::Instant::now();
    let second = start(&job).wait();
    eprintln!("reused in {:?}", started.elapsed());
    assert_eq!(second.outcome.exit_code, Some(0), "{}", second.log);
    assert_eq!(
        results(&second),
        json!({"environment": lock.hash, "reused": true})
    );
    assert!(second.log.contains("already built"), "{}", second.log);
    assert!(leftovers(&environments).is_empty());
}

/// A job run of the same locked function (what needs the environment).
fn run_with_lock_as_job(runtime: &PythonRuntime, lock: &Lock) -> Run {
    let mut run = build_run(runtime, lock);
    run.spec.action = "job".into();
    run.spec.parameters.clear();
    run
}

#[test]
fn two_builds_at_once_build_one_environment() {
    if python_missing() || uv_missing() {
        return;
    }
    let envs = tempfile::tempdir().unwrap();
    let environments = envs.path().join("envs");
    let runtime = runtime(&environments);
    let lock = lock_of("six==1.17.0\n");
    let job = job_of(&runtime, &build_run(&runtime, &lock));

    let (one, two) = (start(&job), start(&job));
    let (one, two) = (one.wait(), two.wait());
    for finished in [&one, &two] {
        assert_eq!(finished.outcome.exit_code, Some(0), "{}", finished.log);
    }
    let mut reused = [
        results(&one)["reused"].clone(),
        results(&two)["reused"].clone(),
    ];
    reused.sort_by_key(|v| v.as_bool());
    assert_eq!(
        reused,
        [json!(false), json!(true)],
        "{}\n---\n{}",
        one.log,
        two.log
    );
    assert!(environments.join(&lock.hash).join("six.py").is_file());
    assert!(leftovers(&environments).is_empty());
}

#[test]
fn a_lock_that_cannot_be_installed_leaves_nothing() {
    if python_missing() || uv_missing() {
        return;
    }
    let envs = tempfile::tempdir().unwrap();
    let environments = envs.path().join("envs");
    let runtime = runtime(&environments);
    let lock = lock_of("runplane-no-such-package==1.0\n");
    let run = build_run(&runtime, &lock);
    let finished = start(&job_of(&runtime, &run)).wait();
    assert_ne!(finished.outcome.exit_code, Some(0), "{}", finished.log);
    assert!(!environments.join(&lock.hash).exists());
    assert!(leftovers(&environments).is_empty());
    assert!(
        finished.log.contains("runplane-no-such-package"),
        "{}",
        finished.log
    );
    let got = runtime.interpret(&run, &finished.outcome);
    assert_eq!(
        (got.state, got.reason.as_str()),
        (RunState::Error, "build_failed")
    );
    assert!(
        got.message
            .as_deref()
            .unwrap_or_default()
            .contains("uv pip install exited with code"),
        "{got:?}"
    );

    // A uv that does not exist is a clear failure too.
    let broken = PythonRuntime::new(
        PythonConfig {
            uv: "/nonexistent/uv".to_string(),
            ..runtime.config().clone()
        },
        inspector(),
    );
    let finished = start(&job_of(&broken, &run)).wait();
    assert_eq!(finished.outcome.exit_code, Some(1), "{}", finished.log);
    let got = broken.interpret(&run, &finished.outcome);
    assert!(
        got.message
            .as_deref()
            .unwrap_or_default()
            .contains("cannot start /nonexistent/uv"),
        "{got:?}"
    );
    assert!(!environments.join(&lock.hash).exists());
}

#[test]
fn a_stopped_build_leaves_nothing() {
    if python_missing() {
        return;
    }
    let envs = tempfile::tempdir().unwrap();
    let environments = envs.path().join("envs");
    // A uv that starts installing and never finishes: the build is stopped meanwhile.
    let slow_uv = envs.path().join("slow-uv");
    std::fs::write(
        &slow_uv,
        "#!/bin/sh\nmkdir -p \"$4\" && touch \"$4/partial.py\"\nexec sleep 60\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &slow_uv,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let runtime = PythonRuntime::new(
        PythonConfig {
            uv: slow_uv.to_string_lossy().into_owned(),
            ..runtime(&environments).config().clone()
        },
        inspector(),
    );
    let lock = lock_of("six==1.17.0\n");
    let run = build_run(&runtime, &lock);
    let started = start(&job_of(&runtime, &run));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while leftovers_with(&environments, "partial.py").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the install never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = i32::try_from(started.child.id()).unwrap();
    // SAFETY: signalling our own child, which has not been waited for yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let finished = started.wait();
    assert_eq!(finished.outcome.exit_code, Some(143), "{}", finished.log);
    assert!(finished.log.contains("stopped"), "{}", finished.log);
    assert!(leftovers(&environments).is_empty());
    assert!(!environments.join(&lock.hash).exists());
}

/// Temporary folders under `dir` that hold `file`.
fn leftovers_with(dir: &Path, file: &str) -> Vec<String> {
    if !dir.exists() {
        return Vec::new();
    }
    leftovers(dir)
        .into_iter()
        .filter(|name| dir.join(name).join(file).exists())
        .collect()
}
