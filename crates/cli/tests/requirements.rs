//! Python requirements end to end: locked once at apply, the environment built once per lock
//! by a build run the runs wait for, reused by every later run; failures named.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;

const SIX: &str =
    "import six\n\ndef handler():\n    return {'six': six.__version__, 'file': six.__file__}\n";

fn with_requirements(server: &TestServer, name: &str, requirements: Value) -> (u16, Value) {
    server.post(
        "/projects/p/functions",
        &json!({"kind": "python", "metadata": {"name": name},
                "spec": {"handler": "handler", "source": {"code": SIX}, "requirements": requirements}}),
    )
}

fn build_runs(server: &TestServer) -> Vec<Value> {
    let (status, page) = server.get("/projects/p/runs?label=runplane.io/build-for=python-env");
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().cloned().unwrap_or_default()
}

#[test]
fn requirements_are_locked_once_and_their_environment_built_once() {
    let server = TestServer::start();
    let (status, version) = with_requirements(&server, "sixer", json!(["six>=1.16,<2"]));
    assert_eq!(status, 201, "{version}");
    let lock = version["spec"]["lock"]["text"]
        .as_str()
        .expect("a lock")
        .to_string();
    assert!(
        lock.lines().any(|line| line.starts_with("six==1.")),
        "{lock}"
    );

    // The same spec again: the same version, not resolved again.
    let (status, again) = with_requirements(&server, "sixer", json!(["six>=1.16,<2"]));
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["metadata"]["version"], version["metadata"]["version"]);
    assert_eq!(again["spec"]["lock"]["text"], lock.as_str());

    // Three runs at once share one build.
    let ids: Vec<String> = (0..3)
        .map(|_| submit(&server, json!({"function": "sixer"})))
        .collect();
    // While the build runs they wait in the queue, saying for which build.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, waiting) = server.get(&format!("/projects/p/runs/{}", ids[2]));
        if waiting["status"]["reason"] == "waiting_for_build" {
            assert_eq!(waiting["status"]["state"], "READY", "{waiting:#}");
            assert!(
                waiting["status"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("build run")),
                "{waiting:#}"
            );
            break;
        }
        if waiting["status"]["state"] != "READY" || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut files = vec![];
    for id in &ids {
        let run = wait_run_ended(&server, id, Duration::from_secs(180));
        assert_eq!(run["status"]["state"], "COMPLETED", "{run:#}");
        let results = &run["status"]["results"];
        assert!(
            results["six"].as_str().is_some_and(|v| v.starts_with("1.")),
            "{results}"
        );
        files.push(results["file"].as_str().expect("six's file").to_string());
    }
    let envs = server.home.path().join("envs");
    for file in &files {
        assert!(
            file.starts_with(&envs.display().to_string()),
            "six comes from the built environment, not the interpreter's: {file}"
        );
    }
    let builds = build_runs(&server);
    assert_eq!(builds.len(), 1, "one build for one lock: {builds:#?}");
    assert_eq!(builds[0]["status"]["state"], "COMPLETED", "{:#}", builds[0]);
    assert_eq!(builds[0]["spec"]["action"], "build");

    // A later run reuses the environment: no new build.
    let id = submit(&server, json!({"function": "sixer"}));
    let run = wait_run_ended(&server, &id, Duration::from_secs(60));
    assert_eq!(run["status"]["state"], "COMPLETED", "{run:#}");
    assert_eq!(build_runs(&server).len(), 1);
}

#[test]
fn an_unsatisfiable_requirement_is_refused_when_applied() {
    let server = TestServer::start();
    let (status, problem) = with_requirements(
        &server,
        "nothere",
        json!(["runplane-no-such-package-anywhere==1.0"]),
    );
    assert_eq!(status, 422, "{problem}");
    assert_eq!(fields(&problem), ["spec.requirements"], "{problem}");
    assert!(
        problem
            .to_string()
            .contains("runplane-no-such-package-anywhere"),
        "the resolver's reason is shown: {problem}"
    );
    let (status, _) = server.get("/projects/p/functions/nothere");
    assert_eq!(status, 404, "nothing stored");
}

#[test]
fn a_failed_environment_build_fails_the_runs_waiting_for_it() {
    // A uv that resolves for real but cannot install: an index outage at build time.
    let work = tempfile::tempdir().expect("temp dir");
    let uv = work.path().join("uv");
    std::fs::write(
        &uv,
        "#!/bin/sh\nif [ \"$2\" = install ]; then echo 'simulated index outage' >&2; exit 2; fi\nexec uv \"$@\"\n",
    )
    .expect("write uv wrapper");
    std::process::Command::new("chmod")
        .args(["+x", &uv.display().to_string()])
        .status()
        .expect("chmod");
    let server = TestServer::start_with(&["--uv", &uv.display().to_string()]);
    let (status, version) = with_requirements(&server, "broken", json!(["six"]));
    assert_eq!(status, 201, "{version}");

    let first = submit(&server, json!({"function": "broken"}));
    let second = submit(&server, json!({"function": "broken"}));
    for id in [&first, &second] {
        let run = wait_run_ended(&server, id, Duration::from_secs(120));
        assert_eq!(run["status"]["state"], "ERROR", "{run:#}");
        assert_eq!(run["status"]["reason"], "build_failed", "{run:#}");
        assert!(
            run["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("build run")),
            "{run:#}"
        );
    }
    let builds = build_runs(&server);
    assert_eq!(builds.len(), 1, "{builds:#?}");
    assert_eq!(builds[0]["status"]["state"], "ERROR", "{:#}", builds[0]);
    let build_id = builds[0]["metadata"]["id"].as_str().expect("id");
    let logs = server.cli("p", &["logs", build_id]);
    assert!(
        stdout(&logs).contains("simulated index outage"),
        "{}",
        stdout(&logs)
    );
    let leftovers: Vec<_> = std::fs::read_dir(server.home.path().join("envs"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "no half-built environment: {leftovers:?}"
    );
}
