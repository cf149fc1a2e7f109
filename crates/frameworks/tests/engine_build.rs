//! Image builds on the engine framework against the real Podman service that `scripts/setup`
//! starts (socket `/run/runplane-podman.sock`, or `$RUNPLANE_ENGINE_SOCKET`), its local busybox
//! image, and the registry `scripts/setup-registry` starts on 127.0.0.1:5000.

use bollard::query_parameters::RemoveImageOptions;
use bollard::Docker;
use runplane_domain::{
    reason, Build, BuiltImage, ContextDir, ExitOutcome, FileEntry, Job, Runnable, BUILD_OUTPUT,
};
use runplane_frameworks::engine::{EngineFramework, EngineOptions, DEFAULT_SOCKET};
use runplane_frameworks::{EventKind, ExecutionId, Framework, FrameworkError};
use runplane_logstore::file::FileLogStore;
use runplane_logstore::{LogStore, Stream};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BUSYBOX: &str = "localhost/runplane-busybox:latest";
const REGISTRY: &str = "127.0.0.1:5000";
/// Generous: CI machines have two cores and other work.
const PATIENCE: Duration = Duration::from_secs(120);

fn socket() -> PathBuf {
    std::env::var_os("RUNPLANE_ENGINE_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

struct Harness {
    tmp: tempfile::TempDir,
    framework: EngineFramework,
    events: runplane_frameworks::EventReceiver,
    logs: FileLogStore,
    docker: Docker,
    /// Images to remove when the test ends, however it ends.
    images: Vec<String>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let docker = self.docker.clone();
        let images = std::mem::take(&mut self.images);
        // Drop cannot await: a thread with its own runtime removes them.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Runtime::new() else {
                return;
            };
            runtime.block_on(async {
                for image in images {
                    let options = RemoveImageOptions {
                        force: true,
                        ..Default::default()
                    };
                    let _ = docker.remove_image(&image, Some(options), None).await;
                }
            });
        })
        .join();
    }
}

async fn connect(dir: &Path) -> (EngineFramework, runplane_frameworks::EventReceiver) {
    let (tx, events) =
        runplane_frameworks::events::channel(runplane_frameworks::events::DEFAULT_CAPACITY);
    let options = EngineOptions {
        socket: socket(),
        runs_dir: dir.join("runs"),
        logs_dir: dir.join("logs"),
        default_image: BUSYBOX.into(),
    };
    match EngineFramework::connect(options, tx).await {
        Ok(framework) => (framework, events),
        Err(e) => panic!(
            "no container engine at {}: {e}; run scripts/setup (it installs Podman and starts its socket)",
            socket().display()
        ),
    }
}

async fn harness() -> Harness {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (framework, events) = connect(tmp.path()).await;
    let logs = FileLogStore::new(tmp.path().join("logs"));
    let docker = Docker::connect_with_unix(
        &socket().to_string_lossy(),
        60,
        bollard::API_DEFAULT_VERSION,
    )
    .expect("connect")
    .negotiate_version()
    .await
    .expect("negotiate");
    Harness {
        tmp,
        framework,
        events,
        logs,
        docker,
        images: Vec::new(),
    }
}

impl Harness {
    /// A tag no other test (or concurrent test run) uses; removed when the test ends.
    fn image(&mut self, registry: &str, name: &str) -> String {
        let image = format!(
            "{registry}/runplane-test-build-{name}-{}:v1",
            std::process::id()
        );
        self.images.push(image.clone());
        image
    }

    async fn image_exists(&self, image: &str) -> bool {
        self.docker.inspect_image(image).await.is_ok()
    }
}

fn exec(name: &str) -> ExecutionId {
    ExecutionId {
        run_id: name.into(),
        attempt: 1,
    }
}

fn build(containerfile: &str, image: &str) -> Build {
    Build {
        containerfile: containerfile.into(),
        context: Vec::new(),
        context_dirs: Vec::new(),
        image: image.into(),
        push: false,
        args: BTreeMap::new(),
        log_limit_bytes: None,
    }
}

/// The events of `execution` until it ends (`Exited` or `Lost`).
async fn until_end(
    events: &mut runplane_frameworks::EventReceiver,
    execution: &ExecutionId,
) -> Vec<EventKind> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("{execution:?} did not end; events so far: {seen:?}"))
            .expect("event channel closed");
        if &event.execution != execution {
            continue;
        }
        let end = matches!(event.kind, EventKind::Exited(_) | EventKind::Lost { .. });
        seen.push(event.kind);
        if end {
            return seen;
        }
    }
}

fn outcome(events: &[EventKind]) -> ExitOutcome {
    match events.last() {
        Some(EventKind::Exited(outcome)) => outcome.clone(),
        other => panic!("expected Exited, got {other:?} (all: {events:?})"),
    }
}

async fn run_to_end(h: &mut Harness, name: &str, runnable: Runnable) -> Vec<EventKind> {
    let execution = exec(name);
    h.framework
        .start(execution.clone(), runnable)
        .await
        .expect("start");
    until_end(&mut h.events, &execution).await
}

fn log_text(logs: &FileLogStore, execution: &ExecutionId) -> Vec<(Stream, String)> {
    logs.read(&execution.run_id, execution.attempt, 0, 1 << 20)
        .expect("read log")
        .records
        .into_iter()
        .map(|r| (r.stream, String::from_utf8_lossy(&r.data).into_owned()))
        .collect()
}

fn log_has(lines: &[(Stream, String)], stream: Stream, needle: &str) -> bool {
    lines
        .iter()
        .any(|(found, text)| *found == stream && text.contains(needle))
}

fn built_image(outcome: &ExitOutcome) -> BuiltImage {
    let file = outcome
        .outputs
        .get(BUILD_OUTPUT)
        .unwrap_or_else(|| panic!("no {BUILD_OUTPUT} in {outcome:?}"));
    serde_json::from_slice(&file.contents).expect("image.json is a BuiltImage")
}

fn assert_build_failed(outcome: &ExitOutcome, needle: &str) {
    assert_eq!(outcome.exit_code, Some(1), "{outcome:?}");
    let failure = outcome.failure.as_ref().expect("a failure");
    assert_eq!(failure.reason, reason::BUILD_FAILED);
    assert!(
        failure.message.contains(needle),
        "the failure should mention {needle:?}: {failure:?}"
    );
    assert!(!outcome.outputs.contains_key(BUILD_OUTPUT), "{outcome:?}");
}

#[tokio::test]
async fn a_build_tags_an_image_holding_its_context_files_and_dirs() {
    let mut h = harness().await;
    let image = h.image("localhost", "context");
    let host = h.tmp.path().join("host-data");
    std::fs::create_dir_all(host.join("sub")).expect("mkdir");
    std::fs::write(host.join("a.txt"), "file a from the host folder\n").expect("write");
    std::fs::write(host.join("sub/b.txt"), "file b, one level down\n").expect("write");
    std::os::unix::fs::symlink("a.txt", host.join("link")).expect("symlink");

    let mut spec = build(
        "FROM localhost/runplane-busybox:latest\n\
         ARG GREETING=none\n\
         COPY hello.txt /hello.txt\n\
         COPY data /data\n\
         RUN cat /hello.txt /data/a.txt && echo \"greeting=$GREETING\"\n",
        &image,
    );
    spec.context.push(FileEntry {
        path: "hello.txt".into(),
        mode: 0o644,
        contents: b"hello from the context\n".to_vec(),
    });
    spec.context_dirs.push(ContextDir {
        host_path: host.to_string_lossy().into_owned(),
        path: "data".into(),
    });
    spec.args.insert("GREETING".into(), "bonjour".into());

    let events = run_to_end(&mut h, "built", Runnable::Build(spec)).await;
    assert_eq!(events.first(), Some(&EventKind::Started), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EventKind::LogAppended { .. })),
        "{events:?}"
    );
    let ended = outcome(&events);
    assert_eq!(ended.exit_code, Some(0), "{ended:?}");
    assert_eq!(ended.failure, None);
    let built = built_image(&ended);
    assert_eq!(built.image, image);
    assert_eq!(built.digest, None, "not pushed");
    let inspected = h
        .docker
        .inspect_image(&image)
        .await
        .expect("the tag exists");
    assert_eq!(inspected.id.as_deref(), Some(built.id.as_str()));
    assert!(built.id.starts_with("sha256:"), "{built:?}");

    let log = log_text(&h.logs, &exec("built"));
    for needle in [
        "STEP 1/5: FROM localhost/runplane-busybox:latest",
        "hello from the context",
        "file a from the host folder",
        "greeting=bonjour",
    ] {
        assert!(
            log_has(&log, Stream::Stdout, needle),
            "{needle:?} not in {log:?}"
        );
    }

    // The image runs, with every context file in place and the link kept as a link.
    let job = Job {
        command: vec![
            "sh".into(),
            "-c".into(),
            "cat /hello.txt /data/sub/b.txt; readlink /data/link; cat /data/link".into(),
        ],
        stop_grace_seconds: 1,
        image: Some(image.clone()),
        ..Default::default()
    };
    let events = run_to_end(&mut h, "run-built", Runnable::Job(job)).await;
    assert_eq!(outcome(&events).exit_code, Some(0), "{events:?}");
    let lines: Vec<String> = log_text(&h.logs, &exec("run-built"))
        .into_iter()
        .filter(|(stream, _)| *stream == Stream::Stdout)
        .map(|(_, text)| text)
        .collect();
    assert_eq!(
        lines,
        [
            "hello from the context\n",
            "file b, one level down\n",
            "a.txt\n",
            "file a from the host folder\n"
        ]
    );

    for name in ["built", "run-built"] {
        h.framework.cleanup(&exec(name)).await.expect("cleanup");
    }
    assert!(
        !h.tmp.path().join("runs/built").join("1").exists(),
        "cleanup leaves the build's folder"
    );
    assert!(
        !log_text(&h.logs, &exec("built")).is_empty(),
        "cleanup keeps the log"
    );
}

#[tokio::test]
async fn a_failing_step_fails_the_build_with_its_output_and_tags_nothing() {
    let mut h = harness().await;
    let image = h.image("localhost", "failing");
    let spec = build(
        "FROM localhost/runplane-busybox:latest\n\
         RUN echo the step says goodbye && exit 3\n",
        &image,
    );
    let events = run_to_end(&mut h, "failing", Runnable::Build(spec)).await;
    assert_eq!(events.first(), Some(&EventKind::Started), "{events:?}");
    let outcome = outcome(&events);
    assert_build_failed(&outcome, "exit status 3");
    let log = log_text(&h.logs, &exec("failing"));
    assert!(
        log_has(&log, Stream::Stdout, "the step says goodbye"),
        "{log:?}"
    );
    assert!(log_has(&log, Stream::System, "build failed"), "{log:?}");
    assert!(!h.image_exists(&image).await, "{image} is tagged");
    h.framework
        .cleanup(&exec("failing"))
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn a_missing_base_image_fails_the_build_with_a_clear_message() {
    let mut h = harness().await;
    let image = h.image("localhost", "nobase");
    let spec = build(
        "FROM localhost/runplane-no-such-base:latest\nRUN true\n",
        &image,
    );
    let events = run_to_end(&mut h, "nobase", Runnable::Build(spec)).await;
    assert_build_failed(&outcome(&events), "localhost/runplane-no-such-base:latest");
    assert!(!h.image_exists(&image).await);

    let spec = build("FROMM busybox\n", &image);
    let events = run_to_end(&mut h, "garbled", Runnable::Build(spec)).await;
    assert_build_failed(&outcome(&events), "FROM");
    assert!(!h.image_exists(&image).await);
}

#[tokio::test]
async fn bad_input_is_refused_at_start_naming_the_field() {
    let mut h = harness().await;
    let image = h.image("localhost", "refused");
    let mut escaping = build("FROM scratch\n", &image);
    escaping.context.push(FileEntry {
        path: "../outside".into(),
        mode: 0o644,
        contents: Vec::new(),
    });
    let mut no_dir = build("FROM scratch\n", &image);
    no_dir.context_dirs.push(ContextDir {
        host_path: "/nonexistent/runplane/folder".into(),
        path: "data".into(),
    });
    let mut relative_dir = build("FROM scratch\n", &image);
    relative_dir.context_dirs.push(ContextDir {
        host_path: "relative/folder".into(),
        path: "data".into(),
    });
    let cases = [
        (escaping, "build.context[0].path"),
        (no_dir, "build.context_dirs[0].host_path"),
        (relative_dir, "build.context_dirs[0].host_path"),
        (build("", &image), "build.containerfile"),
        (build("FROM scratch\n", "Not A Reference"), "build.image"),
    ];
    for (index, (spec, field)) in cases.into_iter().enumerate() {
        let execution = exec(&format!("refused-{index}"));
        match h
            .framework
            .start(execution.clone(), Runnable::Build(spec))
            .await
        {
            Err(FrameworkError::StartFailed { message, .. }) => {
                assert!(message.contains(field), "{field} not in {message:?}")
            }
            other => panic!("case {index}: expected StartFailed, got {other:?}"),
        }
    }
    assert!(
        h.events.try_recv().is_err(),
        "a refused start sends nothing"
    );
}

#[tokio::test]
async fn stop_ends_a_long_build_promptly_and_tags_nothing() {
    let mut h = harness().await;
    let image = h.image("localhost", "stopped");
    let spec = build(
        "FROM localhost/runplane-busybox:latest\n\
         RUN echo build is sleeping && sleep 30\n\
         RUN echo never reached\n",
        &image,
    );
    let execution = exec("stopped");
    h.framework
        .start(execution.clone(), Runnable::Build(spec))
        .await
        .expect("start");
    // Stop once the long step runs.
    let deadline = Instant::now() + PATIENCE;
    while !log_has(
        &log_text(&h.logs, &execution),
        Stream::Stdout,
        "build is sleeping",
    ) {
        assert!(Instant::now() < deadline, "the long step never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped_at = Instant::now();
    h.framework.stop(&execution).await.expect("stop");
    let events = until_end(&mut h.events, &execution).await;
    assert!(
        stopped_at.elapsed() < Duration::from_secs(5),
        "the stop took {:?}",
        stopped_at.elapsed()
    );
    let outcome = outcome(&events);
    assert_eq!(outcome.exit_code, None, "{outcome:?}");
    assert!(!outcome.outputs.contains_key(BUILD_OUTPUT));
    h.framework.stop(&execution).await.expect("a second stop");
    assert!(!h.image_exists(&image).await, "{image} is tagged");
    h.framework.cleanup(&execution).await.expect("cleanup");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), h.events.recv())
            .await
            .is_err(),
        "nothing after Exited"
    );
}

#[tokio::test]
async fn a_build_in_flight_when_the_server_died_is_lost_on_recovery() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let execution = exec("cut-off");
    let ended = exec("ended");
    let image = format!(
        "localhost/runplane-test-build-cutoff-{}:v1",
        std::process::id()
    );
    {
        let (framework, mut events) = connect(tmp.path()).await;
        let spec = build(
            "FROM localhost/runplane-busybox:latest\nRUN sleep 5\n",
            &image,
        );
        framework
            .start(execution.clone(), Runnable::Build(spec.clone()))
            .await
            .expect("start");
        assert_eq!(
            events.recv().await.map(|e| e.kind),
            Some(EventKind::Started)
        );
        // A build that ended, then the server died before its cleanup.
        let mut quick = build("FROM localhost/runplane-busybox:latest\n", &image);
        quick.image = format!("{image}-quick");
        framework
            .start(ended.clone(), Runnable::Build(quick))
            .await
            .expect("start");
        until_end(&mut events, &ended).await;
        // The server dies: its framework goes with it.
    }
    assert!(tmp.path().join("runs/ended/1").exists());
    let (framework, mut events) = connect(tmp.path()).await;
    framework
        .recover(vec![execution.clone()])
        .await
        .expect("recover");
    let ended = until_end(&mut events, &execution).await;
    match ended.last() {
        Some(EventKind::Lost { message }) => {
            assert!(message.contains("build"), "{message:?}")
        }
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(
        !tmp.path().join("runs/ended/1").exists(),
        "recovery removes the folder of a build that ended without a cleanup"
    );
    framework.cleanup(&execution).await.expect("cleanup");
    assert!(!tmp.path().join("runs/cut-off/1").exists());
    let docker = Docker::connect_with_unix(
        &socket().to_string_lossy(),
        60,
        bollard::API_DEFAULT_VERSION,
    )
    .expect("connect")
    .negotiate_version()
    .await
    .expect("negotiate");
    let _ = docker
        .remove_image(&format!("{image}-quick"), None::<RemoveImageOptions>, None)
        .await;
}

/// `GET http://127.0.0.1:5000{path}`'s body.
fn registry_get(path: &str) -> String {
    registry_request("GET", path)
}

/// `{method} http://127.0.0.1:5000{path}`'s body.
fn registry_request(method: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(REGISTRY)
        .unwrap_or_else(|e| panic!("no registry on {REGISTRY} ({e}): run scripts/setup-registry"));
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {REGISTRY}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_pushed_build_has_its_digest_and_is_in_the_registry() {
    let mut h = harness().await;
    registry_get("/v2/");
    let image = h.image(REGISTRY, "pushed");
    let mut spec = build(
        "FROM localhost/runplane-busybox:latest\nRUN echo pushed image > /marker\n",
        &image,
    );
    spec.push = true;
    let events = run_to_end(&mut h, "pushed", Runnable::Build(spec)).await;
    let outcome = outcome(&events);
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    let built = built_image(&outcome);
    let (repo, tag) = image.rsplit_once(':').expect("a tag");
    let digest = built.digest.expect("a digest once pushed");
    assert!(digest.starts_with(&format!("{repo}@sha256:")), "{digest:?}");
    let path = repo
        .strip_prefix(&format!("{REGISTRY}/"))
        .expect("repo path");
    let tags = registry_get(&format!("/v2/{path}/tags/list"));
    assert!(tags.contains(&format!("\"{tag}\"")), "{tags}");
    // The registry serves the manifest under the digest reported.
    let (_, sha) = digest.split_once('@').expect("repo@digest");
    let manifest = registry_get(&format!("/v2/{path}/manifests/{sha}"));
    assert!(manifest.contains("layers"), "{manifest}");
    let log = log_text(&h.logs, &exec("pushed"));
    assert!(log_has(&log, Stream::System, "digest: sha256:"), "{log:?}");
    h.framework.cleanup(&exec("pushed")).await.expect("cleanup");
    // The registry keeps no test image (its tag list empties; the folder stays).
    registry_request("DELETE", &format!("/v2/{path}/manifests/{sha}"));
    let tags = registry_get(&format!("/v2/{path}/tags/list"));
    assert!(!tags.contains(&format!("\"{tag}\"")), "{tags}");
}

#[tokio::test]
async fn a_failed_push_fails_the_build_and_untags_it() {
    let mut h = harness().await;
    // Nothing listens there.
    let image = h.image("127.0.0.1:5999", "unpushable");
    let mut spec = build(
        "FROM localhost/runplane-busybox:latest\nRUN echo unpushable > /marker\n",
        &image,
    );
    spec.push = true;
    let events = run_to_end(&mut h, "unpushable", Runnable::Build(spec)).await;
    assert_build_failed(&outcome(&events), "127.0.0.1:5999");
    assert!(!h.image_exists(&image).await, "{image} is tagged");
}

#[tokio::test]
async fn the_builders_output_stops_at_the_log_cap_and_the_build_goes_on() {
    let mut h = harness().await;
    let image = h.image("localhost", "capped");
    let mut spec = build(
        "FROM localhost/runplane-busybox:latest\nRUN seq 1 5000\n",
        &image,
    );
    spec.log_limit_bytes = Some(600);
    let events = run_to_end(&mut h, "capped", Runnable::Build(spec)).await;
    assert_eq!(outcome(&events).exit_code, Some(0), "{events:?}");
    let log = log_text(&h.logs, &exec("capped"));
    let kept: usize = log
        .iter()
        .filter(|(stream, _)| *stream == Stream::Stdout)
        .map(|(_, text)| text.len())
        .sum();
    assert!(kept > 0 && kept <= 600, "{kept} bytes kept: {log:?}");
    assert!(
        log_has(&log, Stream::System, "log limit of 600 bytes reached"),
        "{log:?}"
    );
    assert!(!log_has(&log, Stream::Stdout, "4999"), "past the cap");
    assert!(h.image_exists(&image).await);
    h.framework.cleanup(&exec("capped")).await.expect("cleanup");
}
