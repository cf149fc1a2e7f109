//! Services, volumes and limits on the engine framework, against the real Podman service that
//! `scripts/setup` starts (socket `/run/runplane-podman.sock`, or `$RUNPLANE_ENGINE_SOCKET`)
//! and its local images: replicas are real Python HTTP servers in containers.

use bollard::query_parameters::{KillContainerOptions, ListContainersOptions};
use bollard::Docker;
use runplane_domain::{
    reason, ExitOutcome, FileEntry, Job, Limits, ReplicaStatus, Runnable, Service, Volume,
};
use runplane_frameworks::engine::{
    EngineFramework, EngineOptions, DEFAULT_SOCKET, LABEL_HOME, LABEL_REPLICA,
};
use runplane_frameworks::{EventKind, ExecutionId, Framework, FrameworkError};
use runplane_logstore::file::FileLogStore;
use runplane_logstore::{LogStore, Stream};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BUSYBOX: &str = "localhost/runplane-busybox:latest";
const PYTHON: &str = "localhost/runplane-python:latest";
/// Generous: CI machines have two cores and other work.
const PATIENCE: Duration = Duration::from_secs(90);
const READY_PATH: &str = "/_ready";

/// A replica: answers the readiness path with 200 and `/` with its index, on
/// `$RUNPLANE_PORT` (all interfaces: the engine forwards the published port to it).
const REPLICA: &str = r#"
import http.server, os

index = os.environ["RUNPLANE_REPLICA"]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path in ("/_ready", "/"):
            body = f"replica {index}".encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

given = os.environ.get("RUNPLANE_PORT")
port = int(given or "9000")
server = http.server.HTTPServer(("0.0.0.0", port), Handler)
source = "RUNPLANE_PORT" if given else "its own choice"
print(f"replica {index} serving on port {port} ({source})", flush=True)
server.serve_forever()
"#;

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
}

async fn connect(tmp: &tempfile::TempDir) -> (EngineFramework, runplane_frameworks::EventReceiver) {
    let (tx, events) =
        runplane_frameworks::events::channel(runplane_frameworks::events::DEFAULT_CAPACITY);
    let options = EngineOptions {
        socket: socket(),
        runs_dir: tmp.path().join("runs"),
        logs_dir: tmp.path().join("logs"),
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
    let (framework, events) = connect(&tmp).await;
    let logs = FileLogStore::new(tmp.path().join("logs"));
    Harness {
        tmp,
        framework,
        events,
        logs,
    }
}

fn exec(name: &str) -> ExecutionId {
    ExecutionId {
        run_id: name.into(),
        attempt: 1,
    }
}

fn job(command: &[&str]) -> Job {
    Job {
        command: command.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        files: Vec::new(),
        stop_grace_seconds: 5,
        log_limit_bytes: None,
        image: None,
        redact: Vec::new(),
        volumes: Vec::new(),
        limits: None,
    }
}

fn python_service(replicas: u32) -> Service {
    let mut replica = job(&["/usr/bin/python3", "-u", "replica.py"]);
    replica.image = Some(PYTHON.into());
    replica.files.push(FileEntry {
        path: "replica.py".into(),
        mode: 0o644,
        contents: REPLICA.as_bytes().to_vec(),
    });
    Service {
        replica,
        replicas,
        readiness_path: READY_PATH.into(),
        ready_timeout_seconds: 60,
        port: None,
        http: true,
    }
}

async fn docker() -> Docker {
    Docker::connect_with_unix(
        &socket().to_string_lossy(),
        30,
        bollard::API_DEFAULT_VERSION,
    )
    .expect("connect")
    .negotiate_version()
    .await
    .expect("negotiate")
}

/// This framework's containers (all states), with their replica label.
async fn containers_of(framework: &EngineFramework) -> Vec<(String, Option<String>)> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{LABEL_HOME}={}", framework.home())],
    )]);
    docker()
        .await
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_iter()
        .filter_map(|c| {
            let replica = c.labels.as_ref()?.get(LABEL_REPLICA).cloned();
            Some((c.id?, replica))
        })
        .collect()
}

/// Waits for an event of `execution` that `want` accepts; the latest replica list is kept
/// in `replicas` on the way. Panics on `Exited`/`Lost` unless `want` takes them.
async fn wait_for(
    events: &mut runplane_frameworks::EventReceiver,
    execution: &ExecutionId,
    replicas: &mut Vec<ReplicaStatus>,
    what: &str,
    mut want: impl FnMut(&EventKind, &[ReplicaStatus]) -> bool,
) -> EventKind {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("{execution:?}: no {what}; events: {seen:?}"))
            .expect("event channel closed");
        if &event.execution != execution {
            continue;
        }
        if let EventKind::Replicas(list) = &event.kind {
            *replicas = list.clone();
        }
        if want(&event.kind, replicas) {
            return event.kind;
        }
        if matches!(event.kind, EventKind::Exited(_) | EventKind::Lost { .. }) {
            panic!(
                "{execution:?} ended while waiting for {what}: {:?}",
                event.kind
            );
        }
        if !matches!(event.kind, EventKind::LogAppended { .. }) {
            seen.push(event.kind);
        }
    }
}

fn all_ready(list: &[ReplicaStatus], count: usize) -> bool {
    list.len() == count && list.iter().all(|r| r.ready)
}

async fn http_get(endpoint: &str, path: &str) -> Result<String, String> {
    let mut stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(endpoint),
    )
    .await
    .map_err(|_| format!("connect {endpoint}: timeout"))?
    .map_err(|e| format!("connect {endpoint}: {e}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {endpoint}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
        .await
        .map_err(|_| "read timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {answer:?}"))?;
    if !head.starts_with("HTTP/1.0 200") {
        return Err(format!("not a 200: {head}"));
    }
    Ok(body.to_string())
}

fn log_text(logs: &FileLogStore, execution: &ExecutionId) -> Vec<(Stream, String)> {
    let mut offset = 0;
    let mut lines = Vec::new();
    loop {
        let chunk = logs
            .read(&execution.run_id, execution.attempt, offset, 1 << 20)
            .expect("read log");
        if chunk.records.is_empty() {
            return lines;
        }
        offset = chunk.next_offset;
        lines.extend(
            chunk
                .records
                .into_iter()
                .map(|r| (r.stream, String::from_utf8_lossy(&r.data).into_owned())),
        );
    }
}

/// Stops the service and checks how it ends: `Replicas([])`, then `Exited` with no code and
/// no failure, and no container left.
async fn stop_and_check(h: &mut Harness, execution: &ExecutionId) {
    h.framework.stop(execution).await.expect("stop");
    h.framework.stop(execution).await.expect("stop again");
    let mut replicas = Vec::new();
    let ended = wait_for(
        &mut h.events,
        execution,
        &mut replicas,
        "the end",
        |kind, _| matches!(kind, EventKind::Exited(_)),
    )
    .await;
    assert_eq!(
        ended,
        EventKind::Exited(ExitOutcome::default()),
        "a stopped service ends with no code and no failure"
    );
    assert!(replicas.is_empty(), "last list before Exited: {replicas:?}");
    assert!(containers_of(&h.framework).await.is_empty());
    h.framework.cleanup(execution).await.expect("cleanup");
}

#[tokio::test]
async fn replicas_serve_restart_and_scale() {
    let mut h = harness().await;
    let execution = exec("svc");
    let starting = Instant::now();
    h.framework
        .start(execution.clone(), Runnable::Service(python_service(2)))
        .await
        .expect("start");
    let mut replicas = Vec::new();
    wait_for(
        &mut h.events,
        &execution,
        &mut replicas,
        "Started",
        |kind, _| kind == &EventKind::Started,
    )
    .await;
    eprintln!("2 replicas started and ready in {:?}", starting.elapsed());
    assert!(all_ready(&replicas, 2), "{replicas:?}");
    let endpoints: Vec<String> = replicas.iter().map(|r| r.endpoint.clone()).collect();
    assert_eq!(endpoints.iter().collect::<HashSet<_>>().len(), 2);
    for (index, endpoint) in endpoints.iter().enumerate() {
        assert!(endpoint.starts_with("127.0.0.1:"), "{endpoint}");
        assert_eq!(
            http_get(endpoint, "/").await.expect("GET /"),
            format!("replica {index}")
        );
    }

    // Replica 1's container is killed behind the framework's back: it comes back, on the
    // same host port.
    let victim = containers_of(&h.framework)
        .await
        .into_iter()
        .find(|(_, replica)| replica.as_deref() == Some("1"))
        .expect("replica 1's container")
        .0;
    docker()
        .await
        .kill_container(&victim, None::<KillContainerOptions>)
        .await
        .expect("kill");
    let killed = Instant::now();
    wait_for(
        &mut h.events,
        &execution,
        &mut replicas,
        "replica 1 restarted and ready",
        |_, list| list.len() == 2 && list[1].restarts == 1 && list[1].ready && list[0].ready,
    )
    .await;
    eprintln!("killed replica ready again in {:?}", killed.elapsed());
    assert_eq!(replicas[1].last_exit.as_deref(), Some("signal 9"));
    assert_eq!(replicas[1].endpoint, endpoints[1], "the port is kept");
    assert_eq!(replicas[0].restarts, 0);
    assert_eq!(
        http_get(&endpoints[1], "/")
            .await
            .expect("GET / after restart"),
        "replica 1"
    );

    // 2 → 1: the highest index goes, its container with it.
    h.framework.scale(&execution, 1).await.expect("scale to 1");
    wait_for(
        &mut h.events,
        &execution,
        &mut replicas,
        "one replica",
        |_, list| all_ready(list, 1),
    )
    .await;
    assert_eq!(replicas[0].endpoint, endpoints[0]);
    assert_eq!(containers_of(&h.framework).await.len(), 1);
    // 1 → 3.
    h.framework.scale(&execution, 3).await.expect("scale to 3");
    wait_for(
        &mut h.events,
        &execution,
        &mut replicas,
        "three ready replicas",
        |_, list| all_ready(list, 3),
    )
    .await;
    assert_eq!(
        replicas.iter().map(|r| r.index).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(
        http_get(&replicas[2].endpoint, "/").await.expect("GET /"),
        "replica 2"
    );
    assert_eq!(containers_of(&h.framework).await.len(), 3);

    stop_and_check(&mut h, &execution).await;
    let log = log_text(&h.logs, &execution);
    for index in 0..3 {
        let line = format!("replica {index} serving on port 8080 (RUNPLANE_PORT)\n");
        assert!(
            log.contains(&(Stream::Stdout, line.clone())),
            "{line:?} missing from {log:?}"
        );
    }
    // Replica 1 ran three times (start, restart, scale-up), each line copied once.
    let served_1 = log
        .iter()
        .filter(|(_, text)| text == "replica 1 serving on port 8080 (RUNPLANE_PORT)\n")
        .count();
    assert_eq!(served_1, 3, "{log:?}");
    assert!(
        log.iter().any(|(stream, text)| *stream == Stream::System
            && text.contains("replica 1 was killed by signal 9")),
        "{log:?}"
    );
}

#[tokio::test]
async fn replicas_that_never_get_ready_fail_the_service() {
    let mut h = harness().await;
    let execution = exec("never");
    let mut service = python_service(2);
    service.readiness_path = "/missing".into();
    service.ready_timeout_seconds = 3;
    let started = Instant::now();
    h.framework
        .start(execution.clone(), Runnable::Service(service))
        .await
        .expect("start");
    let mut replicas = Vec::new();
    let ended = wait_for(
        &mut h.events,
        &execution,
        &mut replicas,
        "the end",
        |kind, _| {
            assert_ne!(
                kind,
                &EventKind::Started,
                "a never-ready service never starts"
            );
            matches!(kind, EventKind::Exited(_))
        },
    )
    .await;
    assert!(started.elapsed() >= Duration::from_secs(3));
    let EventKind::Exited(outcome) = ended else {
        unreachable!()
    };
    let failure = outcome.failure.expect("a failure");
    assert_eq!(failure.reason, reason::NOT_READY);
    assert!(
        failure
            .message
            .contains("did not answer GET /missing within 3s"),
        "{}",
        failure.message
    );
    assert_eq!(outcome.exit_code, None);
    assert!(replicas.is_empty(), "{replicas:?}");
    assert!(containers_of(&h.framework).await.is_empty());
    h.framework.cleanup(&execution).await.expect("cleanup");
}

#[tokio::test]
async fn replicas_that_keep_exiting_are_restarted_with_a_backoff_then_fail() {
    let mut h = harness().await;
    let execution = exec("crasher");
    let service = Service {
        replica: job(&["sh", "-c", "echo \"crash $RUNPLANE_REPLICA\"; exit 3"]),
        replicas: 1,
        readiness_path: READY_PATH.into(),
        ready_timeout_seconds: 4,
        port: None,
        http: true,
    };
    h.framework
        .start(execution.clone(), Runnable::Service(service))
        .await
        .expect("start");
    let mut replicas = Vec::new();
    let mut most_restarts = 0;
    let ended = wait_for(
        &mut h.events,
        &execution,
        &mut replicas,
        "the end",
        |kind, list| {
            if let Some(replica) = list.first() {
                most_restarts = most_restarts.max(replica.restarts);
                if replica.restarts > 0 {
                    assert_eq!(replica.last_exit.as_deref(), Some("exit code 3"));
                }
            }
            matches!(kind, EventKind::Exited(_))
        },
    )
    .await;
    // 0.25 + 0.5 + 1 + 2 s of backoff fit in 4 s at most: a few restarts, not a storm.
    assert!((1..=5).contains(&most_restarts), "{most_restarts} restarts");
    let EventKind::Exited(outcome) = ended else {
        unreachable!()
    };
    let failure = outcome.failure.expect("a failure");
    assert_eq!(failure.reason, reason::NOT_READY);
    assert!(
        failure.message.contains("it exited with code 3"),
        "{}",
        failure.message
    );
    let crashes = log_text(&h.logs, &execution)
        .into_iter()
        .filter(|line| line == &(Stream::Stdout, "crash 0\n".to_string()))
        .count();
    // Each run's line once (the last run may have been removed before it printed).
    assert!(
        (most_restarts..=most_restarts + 1).contains(&(crashes as u32)),
        "{crashes} lines for {most_restarts} restarts"
    );
    assert!(containers_of(&h.framework).await.is_empty());
    h.framework.cleanup(&execution).await.expect("cleanup");
}

#[tokio::test]
async fn workers_without_http_are_ready_once_running() {
    let mut h = harness().await;
    let execution = exec("worker");
    let service = Service {
        replica: job(&[
            "sh",
            "-c",
            "echo \"worker $RUNPLANE_REPLICA port=${RUNPLANE_PORT:-none}\"; exec sleep 300",
        ]),
        replicas: 2,
        readiness_path: String::new(),
        ready_timeout_seconds: 30,
        port: None,
        http: false,
    };
    h.framework
        .start(execution.clone(), Runnable::Service(service))
        .await
        .expect("start");
    let mut replicas = Vec::new();
    wait_for(
        &mut h.events,
        &execution,
        &mut replicas,
        "Started",
        |kind, _| kind == &EventKind::Started,
    )
    .await;
    assert!(all_ready(&replicas, 2), "{replicas:?}");
    assert!(
        replicas.iter().all(|r| r.endpoint.is_empty()),
        "{replicas:?}"
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let log = log_text(&h.logs, &execution);
        let workers: HashSet<&str> = log
            .iter()
            .filter(|(stream, _)| *stream == Stream::Stdout)
            .map(|(_, text)| text.as_str())
            .collect();
        if workers == HashSet::from(["worker 0 port=none\n", "worker 1 port=none\n"]) {
            break;
        }
        assert!(Instant::now() < deadline, "worker output: {log:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_and_check(&mut h, &execution).await;
}

#[tokio::test]
async fn a_fixed_port_is_published_and_no_port_is_invented() {
    let mut h = harness().await;
    let execution = exec("fixed");
    let mut service = python_service(1);
    // The replica reads RUNPLANE_PORT when it is set and binds 9000 otherwise: with a fixed
    // port the framework sets none.
    service.port = Some(9000);
    h.framework
        .start(execution.clone(), Runnable::Service(service))
        .await
        .expect("start");
    let mut replicas = Vec::new();
    wait_for(
        &mut h.events,
        &execution,
        &mut replicas,
        "Started",
        |kind, _| kind == &EventKind::Started,
    )
    .await;
    assert_eq!(
        http_get(&replicas[0].endpoint, "/").await.expect("GET /"),
        "replica 0"
    );
    stop_and_check(&mut h, &execution).await;
    let log = log_text(&h.logs, &execution);
    assert!(
        log.contains(&(
            Stream::Stdout,
            "replica 0 serving on port 9000 (its own choice)\n".to_string()
        )),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_new_instance_recovers_a_service_with_its_endpoints() {
    let mut h = harness().await;
    let execution = exec("survivor");
    h.framework
        .start(execution.clone(), Runnable::Service(python_service(2)))
        .await
        .expect("start");
    let mut replicas = Vec::new();
    wait_for(
        &mut h.events,
        &execution,
        &mut replicas,
        "Started",
        |kind, _| kind == &EventKind::Started,
    )
    .await;
    let before: Vec<String> = replicas.iter().map(|r| r.endpoint.clone()).collect();
    // The server dies: its tasks with it; the containers go on.
    let Harness {
        tmp,
        framework,
        logs,
        ..
    } = h;
    drop(framework);
    let (framework, events) = connect(&tmp).await;
    let mut h = Harness {
        tmp,
        framework,
        events,
        logs,
    };
    h.framework
        .recover(vec![execution.clone()])
        .await
        .expect("recover");
    let mut replicas = Vec::new();
    wait_for(
        &mut h.events,
        &execution,
        &mut replicas,
        "Started after recovery",
        |kind, _| kind == &EventKind::Started,
    )
    .await;
    wait_for(
        &mut h.events,
        &execution,
        &mut replicas,
        "ready replicas after recovery",
        |_, list| all_ready(list, 2),
    )
    .await;
    let after: Vec<String> = replicas.iter().map(|r| r.endpoint.clone()).collect();
    assert_eq!(after, before);
    for (index, endpoint) in after.iter().enumerate() {
        assert_eq!(
            http_get(endpoint, "/").await.expect("GET /"),
            format!("replica {index}")
        );
    }
    // Still kept: a replica killed now is restarted, its earlier output not copied again.
    let victim = containers_of(&h.framework)
        .await
        .into_iter()
        .find(|(_, replica)| replica.as_deref() == Some("0"))
        .expect("replica 0's container")
        .0;
    docker()
        .await
        .kill_container(&victim, None::<KillContainerOptions>)
        .await
        .expect("kill");
    wait_for(
        &mut h.events,
        &execution,
        &mut replicas,
        "replica 0 restarted after recovery",
        |_, list| list.len() == 2 && list[0].restarts == 1 && list[0].ready,
    )
    .await;
    assert_eq!(replicas[0].endpoint, before[0]);
    // And scaling works on the recovered service.
    h.framework.scale(&execution, 1).await.expect("scale");
    wait_for(
        &mut h.events,
        &execution,
        &mut replicas,
        "one replica",
        |_, list| all_ready(list, 1),
    )
    .await;
    stop_and_check(&mut h, &execution).await;
    // Replica 0 served twice (before the restart of the server and after its kill), each
    // line copied once; replica 1 once.
    let log = log_text(&h.logs, &execution);
    let served = |index: u32| {
        let line = format!("replica {index} serving on port 8080 (RUNPLANE_PORT)\n");
        log.iter().filter(|(_, text)| *text == line).count()
    };
    assert_eq!((served(0), served(1)), (2, 1), "{log:?}");
}

#[tokio::test]
async fn scale_refuses_jobs() {
    let h = harness().await;
    let execution = exec("job");
    h.framework
        .start(
            execution.clone(),
            Runnable::Job(job(&["sh", "-c", "exec sleep 300"])),
        )
        .await
        .expect("start");
    assert!(matches!(
        h.framework.scale(&execution, 2).await,
        Err(FrameworkError::NotAService(_))
    ));
    // Cleanup refuses a running job: it is stopped first.
    h.framework.stop(&execution).await.expect("stop");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while let Err(e) = h.framework.cleanup(&execution).await {
        assert!(std::time::Instant::now() < deadline, "cleanup: {e}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The events of a job until it ends.
async fn job_outcome(h: &mut Harness, name: &str, job: Job) -> ExitOutcome {
    let execution = exec(name);
    h.framework
        .start(execution.clone(), Runnable::Job(job))
        .await
        .expect("start");
    let mut replicas = Vec::new();
    let ended = wait_for(
        &mut h.events,
        &execution,
        &mut replicas,
        "the end",
        |kind, _| matches!(kind, EventKind::Exited(_)),
    )
    .await;
    let EventKind::Exited(outcome) = ended else {
        unreachable!()
    };
    outcome
}

#[tokio::test]
async fn volumes_are_mounted_read_only_or_writable() {
    let mut h = harness().await;
    let shared = h.tmp.path().join("shared");
    let scratch = h.tmp.path().join("scratch");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::write(shared.join("data.txt"), "from the host\n").unwrap();
    let mut volumes_job = job(&[
        "sh",
        "-c",
        "cat /data/data.txt; touch /data/new 2>/dev/null && echo data-writable; echo out > /scratch/out.txt",
    ]);
    volumes_job.volumes = vec![
        Volume {
            host_path: shared.to_string_lossy().into_owned(),
            container_path: "/data".into(),
            read_only: true,
        },
        Volume {
            host_path: scratch.to_string_lossy().into_owned(),
            container_path: "/scratch".into(),
            read_only: false,
        },
    ];
    let outcome = job_outcome(&mut h, "volumes", volumes_job).await;
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    assert_eq!(
        log_text(&h.logs, &exec("volumes")),
        vec![(Stream::Stdout, "from the host\n".to_string())],
        "readable, and not writable"
    );
    assert!(!shared.join("new").exists());
    assert_eq!(
        std::fs::read_to_string(scratch.join("out.txt")).unwrap(),
        "out\n"
    );
    h.framework
        .cleanup(&exec("volumes"))
        .await
        .expect("cleanup");

    let mut bad = job(&["true"]);
    bad.volumes = vec![Volume {
        host_path: "relative/path".into(),
        container_path: "/data".into(),
        read_only: false,
    }];
    let error = h
        .framework
        .start(exec("badvolume"), Runnable::Job(bad))
        .await
        .expect_err("a relative host path is refused");
    assert!(
        error.to_string().contains("volumes[0].host_path"),
        "{error}"
    );
    assert!(containers_of(&h.framework).await.is_empty());
}

#[tokio::test]
async fn cpu_limits_reach_the_cgroup_and_bad_limits_are_refused() {
    let mut h = harness().await;
    let mut limited = job(&[
        "sh",
        "-c",
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us",
    ]);
    limited.limits = Some(Limits {
        cpus: Some(0.5),
        memory_bytes: None,
    });
    let outcome = job_outcome(&mut h, "cpus", limited).await;
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    let log = log_text(&h.logs, &exec("cpus"));
    let numbers: Vec<i64> = log
        .iter()
        .filter_map(|(_, text)| text.trim().parse().ok())
        .collect();
    assert_eq!(numbers.len(), 2, "{log:?}");
    assert_eq!(numbers[0] * 2, numbers[1], "half a core: {log:?}");
    h.framework.cleanup(&exec("cpus")).await.expect("cleanup");

    let mut bad = job(&["true"]);
    bad.limits = Some(Limits {
        cpus: Some(-1.0),
        memory_bytes: None,
    });
    let error = h
        .framework
        .start(exec("badcpus"), Runnable::Job(bad))
        .await
        .expect_err("negative cpus are refused");
    assert!(error.to_string().contains("limits.cpus"), "{error}");
}

#[tokio::test]
async fn a_job_past_its_memory_limit_is_oom_killed() {
    let mut h = harness().await;
    let mut hungry = job(&[
        "/usr/bin/python3",
        "-c",
        "b = bytearray(200 * 1024 * 1024); print('allocated', len(b))",
    ]);
    hungry.image = Some(PYTHON.into());
    hungry.limits = Some(Limits {
        cpus: None,
        memory_bytes: Some(50 * 1024 * 1024),
    });
    let outcome = job_outcome(&mut h, "hungry", hungry).await;
    let failure = outcome.failure.clone().expect("an oom failure");
    assert_eq!(failure.reason, reason::OOM_KILLED, "{outcome:?}");
    assert_eq!(outcome.signal, Some(9), "{outcome:?}");
    h.framework.cleanup(&exec("hungry")).await.expect("cleanup");

    // The same with room enough ends well: the limit, not the program, killed it.
    let mut fed = job(&[
        "/usr/bin/python3",
        "-c",
        "b = bytearray(20 * 1024 * 1024); print('allocated', len(b))",
    ]);
    fed.image = Some(PYTHON.into());
    fed.limits = Some(Limits {
        cpus: None,
        memory_bytes: Some(200 * 1024 * 1024),
    });
    let outcome = job_outcome(&mut h, "fed", fed).await;
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    assert_eq!(outcome.failure, None);
    h.framework.cleanup(&exec("fed")).await.expect("cleanup");
}
