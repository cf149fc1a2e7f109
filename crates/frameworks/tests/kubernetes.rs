//! The kubernetes framework's lifecycle against a mocked API server (`kube_fake`, on
//! `tower_test::mock::pair`): create → watch events → complete → logs → delete, pod failures,
//! image pull errors, deletion by someone else, stop, services (readiness, scale, stop, not
//! ready), builds, recovery after a restart, and the API's faults (forbidden, transient
//! errors, unreachable).

#[path = "kube_fake/mod.rs"]
mod fake;

use base64::Engine;
use fake::{Fake, Fault};
use http::Method;
use runplane_domain::{reason, Build, ExitOutcome, FileEntry, Job, Limits, Runnable, Service};
use runplane_frameworks::kubernetes::manifests::job_objects;
use runplane_frameworks::kubernetes::{BuildSettings, KubernetesFramework, KubernetesSettings};
use runplane_frameworks::uploads::OutputsUploads;
use runplane_frameworks::{EventKind, ExecutionId, Framework, FrameworkError, FrameworkEvent};
use runplane_logstore::file::FileLogStore;
use runplane_logstore::{LogStore, LogWriter, Stream};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

struct Harness {
    tmp: tempfile::TempDir,
    fake: Fake,
    framework: KubernetesFramework,
    events: runplane_frameworks::EventReceiver,
    /// Events of other executions, received while waiting for one's.
    backlog: Vec<FrameworkEvent>,
}

fn settings(tmp: &tempfile::TempDir) -> KubernetesSettings {
    let mut settings = KubernetesSettings::new(
        fake::NAMESPACE,
        tmp.path().join("runs"),
        tmp.path().join("logs"),
    );
    settings.instance = "test".into();
    settings.retry_delay = Duration::from_millis(1);
    settings.token_key = b"test key".to_vec();
    settings.outputs_url = Some("http://runplane.test/api/v1/outputs".into());
    settings
}

async fn harness_with(tweak: impl FnOnce(&mut KubernetesSettings)) -> Harness {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fake = Fake::default();
    let mut settings = settings(&tmp);
    tweak(&mut settings);
    let (tx, events) =
        runplane_frameworks::events::channel(runplane_frameworks::events::DEFAULT_CAPACITY);
    let framework = KubernetesFramework::new(fake.client(), settings, tx);
    // Jobs, Pods and Deployments: nothing created from here on is missed.
    fake.wait_watchers(3).await;
    Harness {
        tmp,
        fake,
        framework,
        events,
        backlog: Vec::new(),
    }
}

async fn harness() -> Harness {
    harness_with(|_| {}).await
}

fn exec(run: &str) -> ExecutionId {
    ExecutionId {
        run_id: run.into(),
        attempt: 1,
    }
}

fn name(run: &str) -> String {
    format!("rp-{run}-1")
}

fn job() -> Job {
    Job {
        command: vec!["/usr/bin/python3".into(), "runner.py".into()],
        env: BTreeMap::from([("API_KEY".into(), "hunter2".into())]),
        files: vec![FileEntry {
            path: "runner.py".into(),
            mode: 0o644,
            contents: b"print('hi')\n".to_vec(),
        }],
        stop_grace_seconds: 1,
        redact: vec!["hunter2".into()],
        ..Default::default()
    }
}

impl Harness {
    /// The next event of `execution` that is not a log append.
    async fn next(&mut self, execution: &ExecutionId) -> EventKind {
        loop {
            let event = match self.backlog.iter().position(|e| &e.execution == execution) {
                Some(at) => self.backlog.remove(at),
                None => tokio::time::timeout(Duration::from_secs(15), self.events.recv())
                    .await
                    .unwrap_or_else(|_| panic!("no event of {execution:?} within 15 s"))
                    .expect("event channel closed"),
            };
            if &event.execution != execution {
                self.backlog.push(event);
                continue;
            }
            if !matches!(event.kind, EventKind::LogAppended { .. }) {
                return event.kind;
            }
        }
    }

    async fn exited(&mut self, execution: &ExecutionId) -> ExitOutcome {
        match self.next(execution).await {
            EventKind::Exited(outcome) => outcome,
            other => panic!("expected Exited, got {other:?}"),
        }
    }

    fn log(&self, execution: &ExecutionId) -> String {
        let store = FileLogStore::new(self.tmp.path().join("logs"));
        let chunk = store
            .read(&execution.run_id, execution.attempt, 0, 1 << 20)
            .expect("read log");
        chunk
            .records
            .iter()
            .map(|r| String::from_utf8_lossy(&r.data).into_owned())
            .collect()
    }

    /// Waits until the attempt's log holds `text`.
    async fn wait_log(&self, execution: &ExecutionId, text: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !self.log(execution).contains(text) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the log never got {text:?}; it is {:?}",
                self.log(execution)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn writes(&self) -> Vec<String> {
        self.fake
            .requests()
            .into_iter()
            .filter(|r| !r.starts_with("GET"))
            .map(|r| r.split('?').next().unwrap_or("").to_string())
            .collect()
    }
}

#[tokio::test]
async fn a_job_runs_from_creation_to_cleanup() {
    let mut h = harness().await;
    let execution = exec("run-a");
    let job_name = name("run-a");
    h.framework
        .start(execution.clone(), Runnable::Job(job()))
        .await
        .expect("start");

    // The ConfigMap and Secret first (the pod needs both), then the Job, then they are
    // made the Job's so that they go with it.
    let base = format!("/namespaces/{}", fake::NAMESPACE);
    assert_eq!(
        h.writes(),
        vec![
            format!("POST /api/v1{base}/configmaps"),
            format!("POST /api/v1{base}/secrets"),
            format!("POST /apis/batch/v1{base}/jobs"),
            format!("PATCH /api/v1{base}/configmaps/{job_name}"),
            format!("PATCH /api/v1{base}/secrets/{job_name}"),
        ]
    );
    let k8s_job = h.fake.get("jobs", &job_name).unwrap();
    assert_eq!(k8s_job["spec"]["backoffLimit"], 0);
    let config_map = h.fake.get("configmaps", &job_name).unwrap();
    let owner = &config_map["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Job");
    assert_eq!(owner["uid"], k8s_job["metadata"]["uid"]);
    let secret = h.fake.get("secrets", &job_name).unwrap();
    assert_eq!(
        secret["data"]["API_KEY"],
        base64::engine::general_purpose::STANDARD.encode("hunter2")
    );

    // The Job controller makes its pod; the kubelet runs it.
    let pod = format!("{job_name}-x7k2p");
    h.fake.make_pod("jobs", &job_name, &pod);
    h.fake.pod_running(&pod, 0, true, "10.1.0.7");
    assert_eq!(h.next(&execution).await, EventKind::Started);

    h.fake.log(&pod, "hello from the pod");
    h.fake.log(&pod, "the key is hunter2");
    h.wait_log(&execution, "the key is [REDACTED]").await;
    // The API server cuts the stream: the follower re-opens it and skips what it has.
    h.fake.close_log(&pod);
    h.fake.log(&pod, "after the stream was cut");
    h.wait_log(&execution, "after the stream was cut").await;

    // The runner uploads its outputs with the run-scoped token.
    let token = h.framework.run_token(&execution);
    let upload = json!({ "files": [
        { "path": "results.json", "mode": 420,
          "contents": base64::engine::general_purpose::STANDARD.encode("{\"answer\": 42}") },
    ]});
    let bytes = serde_json::to_vec(&upload).unwrap();
    assert!(h
        .framework
        .accept_outputs(&execution, "not the token", &bytes)
        .is_err());
    assert!(h
        .framework
        .accept_outputs(&exec("other"), &token, &bytes)
        .is_err());
    h.framework
        .accept_outputs(&execution, &token, &bytes)
        .expect("upload");

    h.fake.log(&pod, "last words");
    h.fake.pod_terminated(&pod, 0, "Completed", "");
    h.fake.close_log(&pod);
    h.fake.job_condition(&job_name, "Complete", "", "");
    let outcome = h.exited(&execution).await;
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(outcome.failure, None);
    assert_eq!(
        outcome.outputs["results.json"].contents,
        b"{\"answer\": 42}"
    );
    assert_eq!(
        h.log(&execution),
        "hello from the pod\nthe key is [REDACTED]\nafter the stream was cut\nlast words\n",
        "every line once, in order, redacted"
    );

    // Finished jobs are deleted, with what they owned.
    h.framework.cleanup(&execution).await.expect("cleanup");
    assert!(h.fake.get("jobs", &job_name).is_none());
    assert!(h.fake.get("configmaps", &job_name).is_none());
    assert!(h.fake.get("secrets", &job_name).is_none());
    assert!(h.fake.get("pods", &pod).is_none());
    assert!(h
        .fake
        .requests()
        .iter()
        .any(|r| r.starts_with("DELETE") && r.contains("/jobs/")));
    // The log is kept.
    assert!(h.log(&execution).contains("last words"));
}

#[tokio::test]
async fn a_failing_pod_reports_its_exit_code_and_an_oom_kill_its_reason() {
    let mut h = harness().await;
    let (failing, oom) = (exec("run-fail"), exec("run-oom"));
    for execution in [&failing, &oom] {
        h.framework
            .start(execution.clone(), Runnable::Job(job()))
            .await
            .unwrap();
    }
    let pod = format!("{}-p", name("run-fail"));
    h.fake.make_pod("jobs", &name("run-fail"), &pod);
    h.fake.log(&pod, "Traceback: boom");
    h.fake.pod_terminated(&pod, 3, "Error", "Traceback: boom");
    h.fake.job_condition(
        &name("run-fail"),
        "Failed",
        "BackoffLimitExceeded",
        "Job has reached the specified backoff limit",
    );
    // It ran (and ended) before the watch saw it running: Started comes first all the same.
    assert_eq!(h.next(&failing).await, EventKind::Started);
    let outcome = h.exited(&failing).await;
    assert_eq!(outcome.exit_code, Some(3));
    assert_eq!(outcome.failure, None, "an exit code speaks for itself");
    h.wait_log(&failing, "Traceback: boom").await;

    let pod = format!("{}-p", name("run-oom"));
    h.fake.make_pod("jobs", &name("run-oom"), &pod);
    h.fake.pod_running(&pod, 0, true, "10.1.0.8");
    assert_eq!(h.next(&oom).await, EventKind::Started);
    h.fake.pod_terminated(&pod, 137, "OOMKilled", "");
    h.fake
        .job_condition(&name("run-oom"), "Failed", "BackoffLimitExceeded", "");
    let outcome = h.exited(&oom).await;
    assert_eq!(outcome.signal, Some(9));
    assert_eq!(outcome.failure.unwrap().reason, reason::OOM_KILLED);
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_fails_the_run_with_a_clear_reason() {
    let mut h = harness().await;
    for (run, why) in [
        ("run-pull", "ErrImagePull"),
        ("run-backoff", "ImagePullBackOff"),
    ] {
        let execution = exec(run);
        let mut job = job();
        job.image = Some("registry.invalid/nope:1".into());
        h.framework
            .start(execution.clone(), Runnable::Job(job))
            .await
            .unwrap();
        let pod = format!("{}-p", name(run));
        h.fake.make_pod("jobs", &name(run), &pod);
        h.fake.pod_waiting(
            &pod,
            why,
            "rpc error: code = NotFound desc = failed to pull and unpack image",
        );
        let outcome = h.exited(&execution).await;
        let failure = outcome.failure.expect("a failure");
        assert_eq!(failure.reason, reason::START_FAILED);
        assert!(
            failure
                .message
                .starts_with("cannot pull image \"registry.invalid/nope:1\""),
            "{}",
            failure.message
        );
        assert!(failure.message.contains(why), "{}", failure.message);
        // Nothing is left waiting for an image that will not come.
        h.fake.wait_gone("jobs", &name(run)).await;
    }
}

#[tokio::test]
async fn a_job_deleted_by_someone_else_is_lost() {
    let mut h = harness().await;
    let execution = exec("run-gone");
    h.framework
        .start(execution.clone(), Runnable::Job(job()))
        .await
        .unwrap();
    let pod = format!("{}-p", name("run-gone"));
    h.fake.make_pod("jobs", &name("run-gone"), &pod);
    h.fake.pod_running(&pod, 0, true, "10.1.0.9");
    assert_eq!(h.next(&execution).await, EventKind::Started);
    h.fake.log(&pod, "working");
    h.wait_log(&execution, "working").await;
    h.fake.remove("jobs", &name("run-gone"));
    match h.next(&execution).await {
        EventKind::Lost { message } => {
            assert_eq!(message, "its Job was deleted outside runplane")
        }
        other => panic!("expected Lost, got {other:?}"),
    }
    assert_eq!(h.log(&execution), "working\n", "what was read is kept");
}

#[tokio::test]
async fn a_stopped_job_is_deleted_and_ends() {
    let mut h = harness().await;
    let execution = exec("run-stop");
    h.framework
        .start(execution.clone(), Runnable::Job(job()))
        .await
        .unwrap();
    let pod = format!("{}-p", name("run-stop"));
    h.fake.make_pod("jobs", &name("run-stop"), &pod);
    h.fake.pod_running(&pod, 0, true, "10.1.0.10");
    assert_eq!(h.next(&execution).await, EventKind::Started);
    h.framework.stop(&execution).await.expect("stop");
    let outcome = h.exited(&execution).await;
    assert_eq!(outcome.signal, Some(15));
    let delete = h
        .fake
        .requests()
        .into_iter()
        .find(|r| r.starts_with("DELETE") && r.contains("/jobs/"))
        .expect("the Job was deleted");
    let delete = delete.split('?').next().unwrap_or_default().to_string();
    assert!(delete.ends_with(&name("run-stop")), "{delete}");
    // Stopping again is harmless; cleanup then removes the rest.
    h.framework.stop(&execution).await.expect("stop again");
    h.framework.cleanup(&execution).await.expect("cleanup");
    assert!(h.fake.names("configmaps").is_empty());
    assert!(matches!(
        h.framework.stop(&exec("never")).await,
        Err(FrameworkError::UnknownExecution(_))
    ));
}

#[tokio::test]
async fn bad_input_and_api_faults_are_clear_start_failures() {
    let h = harness().await;
    let start_error = |result: Result<(), FrameworkError>| match result {
        Err(FrameworkError::StartFailed { message, .. }) => message,
        other => panic!("expected StartFailed, got {other:?}"),
    };

    let mut bad = job();
    bad.env.insert("RUNPLANE_PROFILE".into(), "gpu-huge".into());
    let message = start_error(h.framework.start(exec("p"), Runnable::Job(bad)).await);
    assert_eq!(
        message,
        "unknown profile \"gpu-huge\"; the profiles are: (none defined)"
    );
    let mut bad = job();
    bad.limits = Some(Limits {
        cpus: Some(-2.0),
        memory_bytes: None,
    });
    let message = start_error(h.framework.start(exec("q"), Runnable::Job(bad)).await);
    assert_eq!(
        message,
        "limits.cpus: -2 must be a positive number of cores"
    );
    assert!(h.writes().is_empty(), "bad input creates nothing");

    h.fake.fail(Fault {
        method: Method::POST,
        path_part: "/configmaps".into(),
        code: 403,
        message: "configmaps is forbidden: User \"system:serviceaccount:runplane:runplane\" cannot create resource \"configmaps\" in the namespace \"runs\"".into(),
        times: 1,
    });
    let message = start_error(h.framework.start(exec("f"), Runnable::Job(job())).await);
    assert!(
        message.starts_with(
            "cannot create ConfigMap rp-f-1: runplane is forbidden to do so in namespace \"runs\""
        ),
        "{message}"
    );
    assert!(h.fake.names("jobs").is_empty());
    assert!(h.fake.names("configmaps").is_empty());

    // Transient errors are retried with backoff.
    h.fake.fail(Fault {
        method: Method::POST,
        path_part: "/jobs".into(),
        code: 503,
        message: "etcdserver: leader changed".into(),
        times: 2,
    });
    h.framework
        .start(exec("t"), Runnable::Job(job()))
        .await
        .expect("started after two 503s");
    let posts = h
        .fake
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST") && r.contains("/jobs"))
        .count();
    assert_eq!(posts, 3);

    // An invalid object the API server refuses: its words, and nothing left behind.
    h.fake.fail(Fault {
        method: Method::POST,
        path_part: "/jobs".into(),
        code: 422,
        message: "Job.batch \"rp-i-1\" is invalid: spec.template.spec.containers[0].image: Required value".into(),
        times: 1,
    });
    let message = start_error(h.framework.start(exec("i"), Runnable::Job(job())).await);
    assert!(
        message.contains("refused it as invalid") && message.contains("Required value"),
        "{message}"
    );
    assert!(h.fake.get("configmaps", "rp-i-1").is_none());
    assert!(h.fake.get("secrets", "rp-i-1").is_none());
}

#[tokio::test]
async fn an_unreachable_api_server_is_a_clear_start_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let service = tower::service_fn(|_request: http::Request<kube::client::Body>| async {
        Err::<http::Response<http_body_util::Full<bytes::Bytes>>, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ))
    });
    let client = kube::Client::new(service, fake::NAMESPACE);
    let (tx, _events) =
        runplane_frameworks::events::channel(runplane_frameworks::events::DEFAULT_CAPACITY);
    let framework = KubernetesFramework::new(client, settings(&tmp), tx);
    match framework.start(exec("u"), Runnable::Job(job())).await {
        Err(FrameworkError::StartFailed { message, .. }) => assert!(
            message.contains("the Kubernetes API server cannot be reached"),
            "{message}"
        ),
        other => panic!("expected StartFailed, got {other:?}"),
    }
}

fn service(replicas: u32, ready_timeout_seconds: u64) -> Service {
    Service {
        replica: job(),
        replicas,
        readiness_path: "/_runplane/ready".into(),
        ready_timeout_seconds,
        port: None,
        http: true,
    }
}

#[tokio::test]
async fn a_service_becomes_ready_scales_and_stops() {
    let mut h = harness().await;
    let execution = exec("svc");
    let deployment = name("svc");
    h.framework
        .start(execution.clone(), Runnable::Service(service(2, 60)))
        .await
        .expect("start");
    assert!(h.fake.get("services", &deployment).is_some());
    let spec = h.fake.get("deployments", &deployment).unwrap();
    assert_eq!(spec["spec"]["replicas"], 2);
    let owner = &h.fake.get("configmaps", &deployment).unwrap()["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Deployment");

    let pods = [format!("{deployment}-a"), format!("{deployment}-b")];
    for (i, pod) in pods.iter().enumerate() {
        h.fake.make_pod("deployments", &deployment, pod);
        h.fake.pod_running(pod, 0, false, &format!("10.2.0.{i}"));
    }
    // Not ready yet: replicas are reported, the service has not started.
    loop {
        match h.next(&execution).await {
            EventKind::Replicas(replicas) if replicas.len() == 2 => break,
            EventKind::Replicas(_) => {}
            other => panic!("expected Replicas, got {other:?}"),
        }
    }
    for (i, pod) in pods.iter().enumerate() {
        h.fake.pod_running(pod, 0, true, &format!("10.2.0.{i}"));
    }
    let mut last = Vec::new();
    loop {
        match h.next(&execution).await {
            EventKind::Replicas(replicas) => last = replicas,
            EventKind::Started => break,
            other => panic!("expected Replicas or Started, got {other:?}"),
        }
    }
    assert!(last.iter().all(|r| r.ready));
    let endpoints: Vec<&str> = last.iter().map(|r| r.endpoint.as_str()).collect();
    assert_eq!(endpoints, ["10.2.0.0:8080", "10.2.0.1:8080"]);

    h.framework.scale(&execution, 3).await.expect("scale");
    assert_eq!(
        h.fake.get("deployments", &deployment).unwrap()["spec"]["replicas"],
        3
    );
    assert!(matches!(
        h.framework.scale(&exec("nope"), 1).await,
        Err(FrameworkError::NotAService(_))
    ));

    h.framework.stop(&execution).await.expect("stop");
    loop {
        match h.next(&execution).await {
            EventKind::Replicas(replicas) => assert!(replicas.is_empty()),
            EventKind::Exited(outcome) => {
                assert_eq!(outcome.failure, None);
                break;
            }
            other => panic!("expected the end, got {other:?}"),
        }
    }
    assert!(h.fake.get("deployments", &deployment).is_none());
    assert!(h.fake.get("services", &deployment).is_none());
    h.framework.cleanup(&execution).await.expect("cleanup");
    assert!(h.fake.names("configmaps").is_empty());
}

#[tokio::test]
async fn a_service_that_never_gets_ready_fails_not_ready() {
    let mut h = harness().await;
    let execution = exec("svc-slow");
    h.framework
        .start(execution.clone(), Runnable::Service(service(1, 1)))
        .await
        .unwrap();
    let pod = format!("{}-a", name("svc-slow"));
    h.fake.make_pod("deployments", &name("svc-slow"), &pod);
    h.fake.pod_running(&pod, 0, false, "10.3.0.1");
    let outcome = loop {
        match h.next(&execution).await {
            EventKind::Replicas(_) => {}
            EventKind::Exited(outcome) => break outcome,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(outcome.failure.unwrap().reason, reason::NOT_READY);
    h.fake.wait_gone("deployments", &name("svc-slow")).await;
}

#[tokio::test]
async fn a_build_runs_kaniko_and_reports_the_pushed_digest() {
    let mut h = harness_with(|settings| {
        settings.build = Some(BuildSettings {
            registry: "registry.test:5000/runplane".into(),
            kaniko_image: "registry.test:5000/kaniko/executor:v1".into(),
            insecure: true,
            push_secret: None,
        });
    })
    .await;
    let execution = exec("build");
    let build = Build {
        containerfile: "FROM base\n".into(),
        context: Vec::new(),
        context_dirs: Vec::new(),
        image: "demo/hello:v1".into(),
        push: true,
        args: BTreeMap::new(),
        log_limit_bytes: None,
    };
    h.framework
        .start(execution.clone(), Runnable::Build(build))
        .await
        .expect("start");
    let pod = format!("{}-k", name("build"));
    h.fake.make_pod("jobs", &name("build"), &pod);
    h.fake.pod_running(&pod, 0, true, "10.4.0.1");
    assert_eq!(h.next(&execution).await, EventKind::Started);
    h.fake.log(
        &pod,
        "INFO[0001] Pushing image to registry.test:5000/runplane/demo/hello:v1",
    );
    let digest = "sha256:0f3a0d8c4c4e5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f";
    h.fake.pod_terminated(&pod, 0, "Completed", digest);
    h.fake.job_condition(&name("build"), "Complete", "", "");
    let outcome = h.exited(&execution).await;
    assert_eq!(outcome.exit_code, Some(0));
    let built: runplane_domain::BuiltImage =
        serde_json::from_slice(&outcome.outputs["image.json"].contents).unwrap();
    assert_eq!(built.image, "registry.test:5000/runplane/demo/hello:v1");
    assert_eq!(built.id, digest);
    assert_eq!(
        built.digest.as_deref(),
        Some(format!("registry.test:5000/runplane/demo/hello@{digest}").as_str())
    );
    h.wait_log(&execution, "Pushing image").await;
}

#[tokio::test]
async fn a_restarted_server_finds_its_objects_by_label() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let settings = settings(&tmp);
    // What the previous server left: a running job whose first line it had copied, and an
    // ended job it never cleaned up.
    let running = exec("old-running");
    let stale = exec("old-stale");
    for execution in [&running, &stale] {
        let objects = job_objects(&settings, execution, &job(), Some("t")).unwrap();
        fake.apply(
            "configmaps",
            serde_json::to_value(objects.config_map).unwrap(),
        );
        fake.apply("jobs", serde_json::to_value(objects.job).unwrap());
    }
    let pod = format!("{}-p", name("old-running"));
    fake.make_pod("jobs", &name("old-running"), &pod);
    fake.pod_running(&pod, 0, true, "10.5.0.1");
    let line_time = fake.log(&pod, "copied before the restart");
    {
        let store = FileLogStore::new(tmp.path().join("logs"));
        let mut writer = store.open_writer("old-running", 1).unwrap();
        writer
            .append(Stream::Stdout, line_time, b"copied before the restart\n")
            .unwrap();
        writer.sync().unwrap();
    }
    fake.log(&pod, "written while no server watched");

    let (tx, events) =
        runplane_frameworks::events::channel(runplane_frameworks::events::DEFAULT_CAPACITY);
    let framework = KubernetesFramework::new(fake.client(), settings, tx);
    fake.wait_watchers(3).await;
    let mut h = Harness {
        tmp,
        fake,
        framework,
        events,
        backlog: Vec::new(),
    };
    let missing = exec("old-missing");
    h.framework
        .recover(vec![running.clone(), missing.clone()])
        .await
        .expect("recover");
    match h.next(&missing).await {
        EventKind::Lost { message } => assert!(message.contains("no longer exists"), "{message}"),
        other => panic!("expected Lost, got {other:?}"),
    }
    assert_eq!(h.next(&running).await, EventKind::Started);
    h.fake.wait_gone("jobs", &name("old-stale")).await;
    assert!(h.fake.get("configmaps", &name("old-stale")).is_none());

    h.fake.log(&pod, "written after the restart");
    h.wait_log(&running, "written after the restart").await;
    h.fake.pod_terminated(&pod, 0, "Completed", "");
    h.fake.close_log(&pod);
    h.fake
        .job_condition(&name("old-running"), "Complete", "", "");
    assert_eq!(h.exited(&running).await.exit_code, Some(0));
    assert_eq!(
        h.log(&running),
        "copied before the restart\nwritten while no server watched\nwritten after the restart\n",
        "nothing lost, nothing twice"
    );
}

#[tokio::test]
async fn connect_reads_a_kubeconfig_and_a_server_that_is_down_fails_starts_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    // A port nothing listens on, on loopback.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters: [{{name: test, cluster: {{server: \"https://127.0.0.1:{port}\", insecure-skip-tls-verify: true}}}}]\n\
             users: [{{name: test, user: {{token: abc}}}}]\n\
             contexts: [{{name: test, context: {{cluster: test, user: test, namespace: runs}}}}]\n"
        ),
    )
    .unwrap();
    let mut settings = settings(&tmp);
    settings.kubeconfig = Some(kubeconfig);
    let (tx, _events) =
        runplane_frameworks::events::channel(runplane_frameworks::events::DEFAULT_CAPACITY);
    let framework = KubernetesFramework::connect(settings, tx)
        .await
        .expect("a client from the kubeconfig");
    match framework.start(exec("down"), Runnable::Job(job())).await {
        Err(FrameworkError::StartFailed { message, .. }) => assert!(
            message.contains("the Kubernetes API server cannot be reached"),
            "{message}"
        ),
        other => panic!("expected StartFailed, got {other:?}"),
    }

    let mut settings = self::settings(&tmp);
    settings.kubeconfig = Some(tmp.path().join("missing"));
    let (tx, _events) =
        runplane_frameworks::events::channel(runplane_frameworks::events::DEFAULT_CAPACITY);
    match KubernetesFramework::connect(settings, tx).await {
        Err(error) => assert!(error.to_string().contains("cannot read"), "{error}"),
        Ok(_) => panic!("a missing kubeconfig must be an error"),
    }
}

#[tokio::test]
async fn a_replicas_log_survives_its_container_restarting() {
    let mut h = harness().await;
    let execution = exec("svc-restart");
    let deployment = name("svc-restart");
    h.framework
        .start(execution.clone(), Runnable::Service(service(1, 60)))
        .await
        .unwrap();
    let pod = format!("{deployment}-a");
    h.fake.make_pod("deployments", &deployment, &pod);
    h.fake.pod_running(&pod, 0, true, "10.6.0.1");
    loop {
        if h.next(&execution).await == EventKind::Started {
            break;
        }
    }
    h.fake.log(&pod, "first life");
    h.wait_log(&execution, "first life").await;
    // The container crashed and the kubelet restarted it: the stream ended, the pod lives.
    h.fake.close_log(&pod);
    h.fake.pod_running(&pod, 1, true, "10.6.0.1");
    h.fake.log(&pod, "second life");
    h.wait_log(&execution, "second life").await;
    let restarts = loop {
        if let EventKind::Replicas(replicas) = h.next(&execution).await {
            if replicas[0].restarts == 1 {
                break replicas[0].restarts;
            }
        }
    };
    assert_eq!(restarts, 1);
    // Deleted with its Deployment: what was read stays.
    h.framework.stop(&execution).await.unwrap();
    loop {
        if let EventKind::Exited(_) = h.next(&execution).await {
            break;
        }
    }
    assert_eq!(h.log(&execution), "first life\nsecond life\n");
}
