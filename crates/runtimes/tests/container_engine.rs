//! The container runtime's Runnables executed by the real engine (Podman on
//! /run/runplane-podman.sock, through its CLI as a remote client), the way the engine framework
//! executes them: the job's command as the entrypoint, its env, an init process, the outputs
//! folder mounted at `RUNPLANE_OUTPUTS`. Then the outcome is read back by `interpret`. The build
//! test builds the `Build` with the engine's builder and runs a job of the version
//! `interpret` made from it. Skipped (with a message) when the engine does not answer.

use runplane_domain::{
    BuiltImage, ExitOutcome, Job, OutputFile, Run, RunMetadata, RunSettings, RunSpec, RunState,
    RunStatus, Runnable, BUILD_OUTPUT,
};
use runplane_runtimes::container::{ContainerConfig, ContainerRuntime};
use runplane_runtimes::{Interpretation, Runtime};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

const SOCKET: &str = "unix:///run/runplane-podman.sock";
const BUSYBOX: &str = "localhost/runplane-busybox:latest";
const OUTPUTS: &str = "/runplane/outputs";

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .arg("--url")
        .arg(SOCKET)
        .args(args)
        .output()
        .expect("podman runs")
}

fn engine_missing() -> bool {
    let answers = Command::new("podman")
        .args(["--url", SOCKET, "image", "exists", BUSYBOX])
        .output()
        .is_ok_and(|out| out.status.success());
    if !answers {
        eprintln!("skipped: no engine with {BUSYBOX} at {SOCKET} (run scripts/setup-engine)");
    }
    !answers
}

fn run_of(runtime: &ContainerRuntime, spec: &Value, action: &str, parameters: Value) -> Run {
    let function_spec = runtime.normalize_function(spec).expect("a valid spec");
    let parameters: Map<String, Value> = parameters.as_object().cloned().unwrap_or_default();
    runtime
        .validate_run(&function_spec, action, &parameters)
        .expect("a valid run");
    let now = chrono::Utc::now();
    Run {
        kind: format!("container+{action}:run"),
        metadata: RunMetadata {
            id: uuid_like(),
            project: "ctrtest".into(),
            labels: BTreeMap::new(),
            created: now,
            updated: now,
            created_by: "anonymous".into(),
        },
        spec: RunSpec {
            function: "store://ctrtest/function/container/hello:0123456789abcdef".into(),
            function_name: "hello".into(),
            function_version: "0123456789abcdef".into(),
            runtime: "container".into(),
            action: action.into(),
            task: None,
            framework: "engine".into(),
            parameters,
            settings: RunSettings {
                env: BTreeMap::from([("FROM_TASK".into(), "task".into())]),
                stop_grace_seconds: 2,
                ..RunSettings::default()
            },
            function_spec,
            inputs: Default::default(),
            reuse: Default::default(),
        },
        status: RunStatus {
            state: RunState::Running,
            attempt: 1,
            reason: None,
            message: None,
            results: None,
            rerun_of: None,
            service: None,
            step_of: None,
            produced_by: None,
            workflow: None,
            owner: None,
            artifacts: Default::default(),
            transitions: Vec::new(),
            attempts: Vec::new(),
        },
    }
}

/// A run id unique enough for the tags of concurrent test runs.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "0190d7a8-0000-7000-8000-{:012x}",
        (nanos ^ u128::from(std::process::id())) & 0xffff_ffff_ffff
    )
}

/// Runs `job` as the engine framework does and collects its outputs.
fn execute(job: &Job, outputs: &Path) -> ExitOutcome {
    let entrypoint = serde_json::to_string(&job.command).unwrap();
    let mount = format!("{}:{OUTPUTS}:rw", outputs.display());
    let mut args: Vec<String> = vec![
        "run".into(),
        "--rm".into(),
        "--init".into(),
        "-v".into(),
        mount,
        "--entrypoint".into(),
        entrypoint,
        "-e".into(),
        format!("RUNPLANE_OUTPUTS={OUTPUTS}"),
    ];
    for (name, value) in &job.env {
        args.push("-e".into());
        args.push(format!("{name}={value}"));
    }
    for volume in &job.volumes {
        args.push("-v".into());
        let mode = if volume.read_only { "ro" } else { "rw" };
        args.push(format!(
            "{}:{}:{mode}",
            volume.host_path, volume.container_path
        ));
    }
    args.push(job.image.clone().expect("a container job names its image"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = podman(&refs);
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    let code = output.status.code().expect("podman exited");
    let (exit_code, signal) = match code {
        129..=192 => (None, Some(code - 128)),
        _ => (Some(code), None),
    };
    let mut collected = BTreeMap::new();
    for entry in std::fs::read_dir(outputs).unwrap() {
        let entry = entry.unwrap();
        let contents = std::fs::read(entry.path()).unwrap();
        collected.insert(
            entry.file_name().to_string_lossy().into_owned(),
            OutputFile {
                size: contents.len() as u64,
                contents,
            },
        );
    }
    ExitOutcome {
        exit_code,
        signal,
        outputs: collected,
        failure: None,
        outputs_dir: None,
    }
}

fn job_of(runtime: &ContainerRuntime, run: &Run) -> Job {
    match runtime.to_runnable(run).unwrap() {
        Runnable::Job(job) => job,
        other => panic!("not a job: {other:?}"),
    }
}

fn run_job(runtime: &ContainerRuntime, run: &Run) -> Interpretation {
    let outputs = tempfile::tempdir().unwrap();
    let ended = execute(&job_of(runtime, run), outputs.path());
    runtime.interpret(run, &ended)
}

/// The script reads its parameters and env, and a mounted volume, and writes results.json.
const SCRIPT: &str = r#"printf '{"n": %s, "name": "%s", "task": "%s", "spec": "%s", "data": "%s", "run": "%s"}' "$RUNPLANE_PARAM_N" "$RUNPLANE_PARAM_NAME" "$FROM_TASK" "$FROM_SPEC" "$(cat /data/in.txt)" "$RUNPLANE_RUN_ID" > "$RUNPLANE_OUTPUTS/results.json""#;

#[test]
fn a_job_runs_in_its_image_and_its_results_come_back() {
    if engine_missing() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("in.txt"), "mounted").unwrap();
    let runtime = ContainerRuntime::new(ContainerConfig::default());
    let spec = json!({
        "image": BUSYBOX,
        "command": ["/bin/sh", "-c"],
        "args": [SCRIPT],
        "env": {"FROM_SPEC": "spec"},
        "volumes": [{"host_path": data.path().to_str().unwrap(), "container_path": "/data", "read_only": true}],
    });
    let run = run_of(&runtime, &spec, "job", json!({"n": 3, "name": "ada"}));
    let got = run_job(&runtime, &run);
    assert_eq!(
        (got.state, got.reason.as_str()),
        (RunState::Completed, "succeeded"),
        "{got:?}"
    );
    assert_eq!(
        got.results,
        Some(json!({
            "n": 3, "name": "ada", "task": "task", "spec": "spec", "data": "mounted",
            "run": run.metadata.id,
        }))
    );
}

#[test]
fn a_failing_job_reports_its_exit_code() {
    if engine_missing() {
        return;
    }
    let runtime = ContainerRuntime::default();
    let spec = json!({"image": BUSYBOX, "command": ["/bin/sh", "-c", "echo no >&2; exit 7"]});
    let got = run_job(&runtime, &run_of(&runtime, &spec, "job", json!({})));
    assert_eq!(
        (got.state, got.reason.as_str(), got.message.as_deref()),
        (
            RunState::Error,
            "failed",
            Some("the container exited with code 7")
        )
    );
    // Killed by a signal: the engine reports 128 + the signal.
    let spec = json!({"image": BUSYBOX, "command": ["/bin/sh", "-c", "kill -9 $$"]});
    let got = run_job(&runtime, &run_of(&runtime, &spec, "job", json!({})));
    assert_eq!(
        (got.state, got.reason.as_str()),
        (RunState::Error, "killed"),
        "{got:?}"
    );
}

#[test]
fn a_built_image_becomes_a_version_whose_job_runs_it() {
    if engine_missing() {
        return;
    }
    let runtime = ContainerRuntime::default();
    // The context as `runplane apply` packs it: a gzip'd tar of a folder, in base64.
    let archive = {
        let mut tar = tar::Builder::new(Vec::new());
        let script = b"#!/bin/sh\necho \"{\\\"built\\\": \\\"$1\\\"}\" > \"$RUNPLANE_OUTPUTS/results.json\"\n";
        let mut header = tar::Header::new_gnu();
        header.set_size(script.len() as u64);
        header.set_mode(0o755);
        tar.append_data(&mut header, "bin/hello.sh", &script[..])
            .unwrap();
        let bytes = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &bytes).unwrap();
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
    };
    let spec = json!({
        "command": ["/app/bin/hello.sh"],
        "args": ["yes"],
        "build": {
            "containerfile": format!("FROM {BUSYBOX}\nCOPY . /app\n"),
            "context": {"archive": archive},
        },
    });
    let run = run_of(&runtime, &spec, "build", json!({}));
    let Runnable::Build(build) = runtime.to_runnable(&run).unwrap() else {
        panic!("not a build");
    };

    // What the engine framework does with a Build: the context folder, the builder, image.json.
    let context = tempfile::tempdir().unwrap();
    for file in &build.context {
        let path = context.path().join(&file.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &file.contents).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode)).unwrap();
    }
    std::fs::write(context.path().join("Containerfile"), &build.containerfile).unwrap();
    let built = podman(&[
        "build",
        "-q",
        "-f",
        context.path().join("Containerfile").to_str().unwrap(),
        "-t",
        &build.image,
        context.path().to_str().unwrap(),
    ]);
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let id = String::from_utf8_lossy(&built.stdout).trim().to_string();
    let image_json = serde_json::to_vec(&BuiltImage {
        image: build.image.clone(),
        id: format!("sha256:{id}"),
        digest: None,
    })
    .unwrap();
    let ended = ExitOutcome {
        exit_code: Some(0),
        signal: None,
        outputs: BTreeMap::from([(
            BUILD_OUTPUT.to_string(),
            OutputFile {
                size: image_json.len() as u64,
                contents: image_json,
            },
        )]),
        failure: None,
        outputs_dir: None,
    };
    let got = runtime.interpret(&run, &ended);
    assert_eq!(
        (got.state, got.reason.as_str()),
        (RunState::Completed, "succeeded"),
        "{got:?}"
    );
    let new_version = got.new_version.expect("a new version");
    assert_eq!(new_version["image"], build.image.as_str());

    let job_run = run_of(&runtime, &new_version, "job", json!({}));
    let result = run_job(&runtime, &job_run);
    let removed = podman(&["rmi", "-f", &build.image]);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    assert_eq!(
        (result.state, result.results),
        (RunState::Completed, Some(json!({"built": "yes"})))
    );
}
