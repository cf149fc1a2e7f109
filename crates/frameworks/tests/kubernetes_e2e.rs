//! The kubernetes framework against a real cluster: `#[ignore]`d, run by its own command when
//! a kubeconfig is at hand (no cluster can run on the project's machines):
//!
//! ```text
//! RUNPLANE_TEST_KUBECONFIG=~/.kube/config \
//!   cargo test -p runplane-frameworks --test kubernetes_e2e -- --ignored --test-threads=1
//! ```
//!
//! `RUNPLANE_TEST_K8S_NAMESPACE` (default `runplane-e2e`, which must exist and allow the
//! kubeconfig's user the verbs of `deploy/kubernetes/rbac.yaml`) and `RUNPLANE_TEST_K8S_IMAGE`
//! (default `python:3.12-slim`: any image with `sh` and `python3` the cluster can pull) choose
//! where and what runs.

use runplane_domain::{reason, Job, Runnable, Service};
use runplane_frameworks::kubernetes::{KubernetesFramework, KubernetesSettings};
use runplane_frameworks::{EventKind, ExecutionId, Framework};
use runplane_logstore::file::FileLogStore;
use runplane_logstore::LogStore;
use std::collections::BTreeMap;
use std::time::Duration;

struct Cluster {
    tmp: tempfile::TempDir,
    framework: KubernetesFramework,
    events: runplane_frameworks::EventReceiver,
    image: String,
    run: String,
}

/// The cluster of `RUNPLANE_TEST_KUBECONFIG`; `None` (the test passes vacuously) without it.
async fn cluster() -> Option<Cluster> {
    let kubeconfig = std::env::var_os("RUNPLANE_TEST_KUBECONFIG")?;
    let namespace =
        std::env::var("RUNPLANE_TEST_K8S_NAMESPACE").unwrap_or_else(|_| "runplane-e2e".into());
    let image =
        std::env::var("RUNPLANE_TEST_K8S_IMAGE").unwrap_or_else(|_| "python:3.12-slim".into());
    let tmp = tempfile::tempdir().unwrap();
    let mut settings =
        KubernetesSettings::new(&namespace, tmp.path().join("runs"), tmp.path().join("logs"));
    settings.kubeconfig = Some(kubeconfig.into());
    settings.instance = format!("e2e-{}", std::process::id());
    settings.default_image = image.clone();
    let (tx, events) =
        runplane_frameworks::events::channel(runplane_frameworks::events::DEFAULT_CAPACITY);
    let framework = KubernetesFramework::connect(settings, tx)
        .await
        .expect("connect to the test cluster");
    Some(Cluster {
        tmp,
        framework,
        events,
        image,
        run: format!(
            "e2e-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_millis()
        ),
    })
}

impl Cluster {
    fn exec(&self, name: &str) -> ExecutionId {
        ExecutionId {
            run_id: format!("{}-{name}", self.run),
            attempt: 1,
        }
    }

    async fn next(&mut self, execution: &ExecutionId) -> EventKind {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(300), self.events.recv())
                .await
                .expect("no event within 5 minutes")
                .expect("events closed");
            if &event.execution == execution && !matches!(event.kind, EventKind::LogAppended { .. })
            {
                return event.kind;
            }
        }
    }

    async fn until_exit(&mut self, execution: &ExecutionId) -> runplane_domain::ExitOutcome {
        loop {
            if let EventKind::Exited(outcome) = self.next(execution).await {
                return outcome;
            }
        }
    }

    fn log(&self, execution: &ExecutionId) -> String {
        let store = FileLogStore::new(self.tmp.path().join("logs"));
        store
            .read(&execution.run_id, execution.attempt, 0, 1 << 20)
            .map(|chunk| {
                chunk
                    .records
                    .iter()
                    .map(|r| String::from_utf8_lossy(&r.data).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn shell_job(script: &str) -> Job {
    Job {
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: BTreeMap::from([("GREETING".into(), "hello".into())]),
        stop_grace_seconds: 5,
        ..Default::default()
    }
}

#[tokio::test]
#[ignore = "needs a cluster: RUNPLANE_TEST_KUBECONFIG"]
async fn e2e_a_job_succeeds_with_its_logs_and_is_cleaned_up() {
    let Some(mut c) = cluster().await else { return };
    let execution = c.exec("ok");
    c.framework
        .start(
            execution.clone(),
            Runnable::Job(shell_job("echo \"$GREETING from k8s\"; sleep 2; echo done")),
        )
        .await
        .unwrap();
    assert_eq!(c.next(&execution).await, EventKind::Started);
    let outcome = c.until_exit(&execution).await;
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(c.log(&execution), "hello from k8s\ndone\n");
    c.framework.cleanup(&execution).await.unwrap();
}

#[tokio::test]
#[ignore = "needs a cluster: RUNPLANE_TEST_KUBECONFIG"]
async fn e2e_a_failing_job_reports_its_exit_code() {
    let Some(mut c) = cluster().await else { return };
    let execution = c.exec("fail");
    c.framework
        .start(
            execution.clone(),
            Runnable::Job(shell_job("echo oops; exit 3")),
        )
        .await
        .unwrap();
    let outcome = c.until_exit(&execution).await;
    assert_eq!(outcome.exit_code, Some(3));
    c.framework.cleanup(&execution).await.unwrap();
}

#[tokio::test]
#[ignore = "needs a cluster: RUNPLANE_TEST_KUBECONFIG"]
async fn e2e_a_stopped_job_ends() {
    let Some(mut c) = cluster().await else { return };
    let execution = c.exec("stop");
    c.framework
        .start(
            execution.clone(),
            Runnable::Job(shell_job("exec sleep 600")),
        )
        .await
        .unwrap();
    assert_eq!(c.next(&execution).await, EventKind::Started);
    c.framework.stop(&execution).await.unwrap();
    let outcome = c.until_exit(&execution).await;
    assert!(outcome.signal.is_some() || outcome.exit_code.is_some());
    c.framework.cleanup(&execution).await.unwrap();
}

#[tokio::test]
#[ignore = "needs a cluster: RUNPLANE_TEST_KUBECONFIG"]
async fn e2e_an_image_that_does_not_exist_fails_to_start() {
    let Some(mut c) = cluster().await else { return };
    let execution = c.exec("pull");
    let mut job = shell_job("true");
    job.image = Some("runplane.invalid/does-not-exist:1".into());
    c.framework
        .start(execution.clone(), Runnable::Job(job))
        .await
        .unwrap();
    let outcome = c.until_exit(&execution).await;
    let failure = outcome.failure.expect("a failure");
    assert_eq!(failure.reason, reason::START_FAILED);
    assert!(
        failure.message.contains("cannot pull image"),
        "{}",
        failure.message
    );
    c.framework.cleanup(&execution).await.unwrap();
}

#[tokio::test]
#[ignore = "needs a cluster: RUNPLANE_TEST_KUBECONFIG"]
async fn e2e_a_service_gets_ready_scales_and_stops() {
    let Some(mut c) = cluster().await else { return };
    let execution = c.exec("svc");
    let mut replica = shell_job("exec python3 -m http.server \"$RUNPLANE_PORT\"");
    replica.image = Some(c.image.clone());
    let service = Service {
        replica,
        replicas: 2,
        readiness_path: "/".into(),
        ready_timeout_seconds: 300,
        port: None,
        http: true,
    };
    c.framework
        .start(execution.clone(), Runnable::Service(service))
        .await
        .unwrap();
    loop {
        if c.next(&execution).await == EventKind::Started {
            break;
        }
    }
    c.framework.scale(&execution, 3).await.unwrap();
    loop {
        if let EventKind::Replicas(replicas) = c.next(&execution).await {
            if replicas.len() == 3 && replicas.iter().all(|r| r.ready) {
                break;
            }
        }
    }
    c.framework.stop(&execution).await.unwrap();
    let outcome = c.until_exit(&execution).await;
    assert_eq!(outcome.failure, None);
    c.framework.cleanup(&execution).await.unwrap();
}
