//! End-to-end tests of services in the local framework: real supervisors keeping real Python
//! HTTP servers up (python3 and its standard library only).
//!
//! Like `local.rs`, this binary is its own supervisor (see `support`).

#[macro_use]
mod support;

use runplane_domain::{FileEntry, ReplicaStatus, Runnable, Service};
use runplane_frameworks::{EventKind, ExecutionId, Framework, FrameworkError};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

fn main() {
    support::supervise_if_asked();
    let tests: &[(&str, TestFn)] = &[
        (
            "service_starts_once_every_replica_is_ready",
            service_starts_once_every_replica_is_ready,
        ),
        (
            "killed_replicas_restart_on_the_same_port",
            killed_replicas_restart_on_the_same_port,
        ),
        (
            "scaling_retires_and_adds_the_highest_indexes",
            scaling_retires_and_adds_the_highest_indexes,
        ),
        (
            "replicas_that_never_get_ready_fail_the_service",
            replicas_that_never_get_ready_fail_the_service,
        ),
        (
            "recovered_services_report_replicas_scale_and_stop",
            recovered_services_report_replicas_scale_and_stop,
        ),
        (
            "a_scale_right_after_start_is_not_lost",
            a_scale_right_after_start_is_not_lost,
        ),
        (
            "a_killed_supervisor_leaves_no_replica_behind",
            a_killed_supervisor_leaves_no_replica_behind,
        ),
        ("scale_refuses_jobs", scale_refuses_jobs),
    ];
    run_tests(tests);
}

/// The replica: answers the readiness path with 200 and `/` with its index and pid, on the
/// socket the supervisor passed as fd 3. `FAIL=1` makes it exit 1 at once.
const REPLICA: &str = r#"
import http.server, os, socket, sys

index = os.environ["RUNPLANE_REPLICA"]
if os.environ.get("FAIL"):
    print(f"replica {index} fails at once", flush=True)
    sys.exit(1)
sock = socket.socket(fileno=int(os.environ["RUNPLANE_LISTEN_FD"]))

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/_runplane/ready":
            body = b"ready"
        elif self.path == "/":
            body = f"replica {index} pid {os.getpid()}".encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
server.socket.close()
server.socket = sock
print(f"replica {index} serving on port {os.environ['RUNPLANE_PORT']}", flush=True)
server.serve_forever()
"#;

const READY_PATH: &str = "/_runplane/ready";

fn service(replicas: u32, marker: &str) -> Service {
    let mut replica = marked_job(&["/usr/bin/python3", "-u", "replica.py"], marker);
    replica.files.push(FileEntry {
        path: "replica.py".into(),
        mode: 0o644,
        contents: REPLICA.as_bytes().to_vec(),
    });
    replica.stop_grace_seconds = 5;
    Service {
        replica,
        replicas,
        readiness_path: READY_PATH.into(),
        ready_timeout_seconds: 20,
        port: None,
        http: true,
    }
}

/// `GET path` on a replica's endpoint: the body of a 200 answer.
fn http_get(endpoint: &str, path: &str) -> Result<String, String> {
    let address = endpoint
        .parse()
        .map_err(|e| format!("endpoint {endpoint}: {e}"))?;
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .map_err(|e| format!("connect {endpoint}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {endpoint}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read {endpoint}: {e}"))?;
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        return Err(format!("no HTTP answer from {endpoint}: {answer:?}"));
    };
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{endpoint}{path} answered {head:?}"));
    }
    Ok(body.to_string())
}

fn accepts(endpoint: &str) -> bool {
    endpoint
        .parse()
        .is_ok_and(|address| TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok())
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

impl Harness {
    /// Events of `execution` until a `Replicas` list satisfies `wanted` (which it returns).
    async fn replicas_until(
        &mut self,
        execution: &ExecutionId,
        what: &str,
        wanted: impl Fn(&[ReplicaStatus]) -> bool,
    ) -> Result<Vec<ReplicaStatus>, String> {
        loop {
            let event = self
                .next_event()
                .await
                .map_err(|e| format!("{e} (waiting for {what})"))?;
            ensure!(&event.execution == execution, "{event:?}");
            match event.kind {
                EventKind::Replicas(list) if wanted(&list) => return Ok(list),
                EventKind::Exited(_) | EventKind::Lost { .. } => {
                    return Err(format!("ended while waiting for {what}: {event:?}"))
                }
                _ => {}
            }
        }
    }

    /// Events until `Started`: the last `Replicas` list seen before it.
    async fn until_started(
        &mut self,
        execution: &ExecutionId,
    ) -> Result<Vec<ReplicaStatus>, String> {
        let mut last = Vec::new();
        loop {
            let event = self.next_event().await?;
            ensure!(&event.execution == execution, "{event:?}");
            match event.kind {
                EventKind::Started => return Ok(last),
                EventKind::Replicas(list) => last = list,
                EventKind::LogAppended { .. } => {}
                other => return Err(format!("expected Started, got {other:?}")),
            }
        }
    }

    /// Stops the service and checks that nothing of it is left.
    async fn stop_and_check(
        &mut self,
        execution: &ExecutionId,
        marker: &str,
        endpoints: &[String],
    ) -> TestResult {
        self.framework
            .stop(execution)
            .await
            .map_err(|e| e.to_string())?;
        let kinds = self.events_until_end(execution).await?;
        let outcome = exited(&kinds)?;
        ensure!(outcome.failure.is_none(), "{outcome:?}");
        ensure!(
            kinds
                .iter()
                .rev()
                .find_map(|k| match k {
                    EventKind::Replicas(list) => Some(list.is_empty()),
                    _ => None,
                })
                .unwrap_or(false),
            "the last Replicas list is empty: {kinds:?}"
        );
        let left = marked_processes(marker);
        ensure!(left.is_empty(), "processes left: {left:?}");
        for endpoint in endpoints {
            ensure!(!accepts(endpoint), "{endpoint} still accepts connections");
        }
        Ok(())
    }
}

fn ready_count(list: &[ReplicaStatus]) -> usize {
    list.iter().filter(|r| r.ready).count()
}

fn service_starts_once_every_replica_is_ready() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let marker = unique_marker("svc-start");
        let execution = exec("svc-start");
        let begun = Instant::now();
        h.framework
            .start(execution.clone(), Runnable::Service(service(2, &marker)))
            .await
            .map_err(|e| e.to_string())?;
        let before_started = h.until_started(&execution).await?;
        let took = begun.elapsed();
        ensure!(
            before_started.len() == 2 && ready_count(&before_started) == 2,
            "Started comes after a list with both ready: {before_started:?}"
        );
        println!("    2 replicas ready {took:?} after start");
        for replica in &before_started {
            let body = http_get(&replica.endpoint, "/")?;
            let pid = replica.pid.ok_or("no pid")?;
            ensure!(
                body == format!("replica {} pid {pid}", replica.index),
                "{body:?} from {replica:?}"
            );
            ensure!(
                replica.restarts == 0 && replica.last_exit.is_none(),
                "{replica:?}"
            );
        }
        let system = h.lines(&execution, runplane_logstore::Stream::System)?;
        for expected in [
            "replica 0 started",
            "replica 1 started",
            "replica 1 is ready",
        ] {
            ensure!(
                system.iter().any(|line| line.contains(expected)),
                "{expected:?} in {system:?}"
            );
        }
        let stdout = h.lines(&execution, runplane_logstore::Stream::Stdout)?;
        ensure!(
            stdout.iter().any(|l| l.starts_with("replica 1 serving")),
            "{stdout:?}"
        );
        let endpoints: Vec<String> = before_started.iter().map(|r| r.endpoint.clone()).collect();
        h.stop_and_check(&execution, &marker, &endpoints).await
    })
}

fn killed_replicas_restart_on_the_same_port() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let marker = unique_marker("svc-restart");
        let execution = exec("svc-restart");
        h.framework
            .start(execution.clone(), Runnable::Service(service(2, &marker)))
            .await
            .map_err(|e| e.to_string())?;
        let replicas = h.until_started(&execution).await?;
        let victim = replicas[1].clone();
        let pid = victim.pid.ok_or("no pid")?;
        let killed_at = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .map_err(|e| e.to_string())?;
        let down = h
            .replicas_until(&execution, "replica 1 down", |list| {
                list.get(1).is_some_and(|r| !r.ready)
            })
            .await?;
        ensure!(down[0].ready, "replica 0 is untouched: {down:?}");
        let restarted = h
            .replicas_until(&execution, "replica 1 restarted", |list| {
                list.get(1).is_some_and(|r| r.restarts == 1)
            })
            .await?;
        ensure!(
            restarted[1].last_exit.as_deref() == Some("signal 9")
                && restarted[1].endpoint == victim.endpoint,
            "{restarted:?}"
        );
        let ready = h
            .replicas_until(&execution, "replica 1 ready again", |list| {
                list.get(1).is_some_and(|r| r.ready)
            })
            .await?;
        println!(
            "    replica 1 ready again {:?} after SIGKILL",
            killed_at.elapsed()
        );
        let new_pid = ready[1].pid.ok_or("no pid")?;
        ensure!(
            new_pid != pid && ready[1].endpoint == victim.endpoint && ready[1].restarts == 1,
            "{ready:?}"
        );
        let body = http_get(&victim.endpoint, "/")?;
        ensure!(body == format!("replica 1 pid {new_pid}"), "{body:?}");
        let system = h.lines(&execution, runplane_logstore::Stream::System)?;
        ensure!(
            system.iter().any(|line| line.contains(
                "replica 1 was killed by signal 9 (SIGKILL); restarting in 0.25s (restart 1)"
            )),
            "{system:?}"
        );
        let endpoints: Vec<String> = ready.iter().map(|r| r.endpoint.clone()).collect();
        h.stop_and_check(&execution, &marker, &endpoints).await
    })
}

fn scaling_retires_and_adds_the_highest_indexes() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let marker = unique_marker("svc-scale");
        let execution = exec("svc-scale");
        h.framework
            .start(execution.clone(), Runnable::Service(service(2, &marker)))
            .await
            .map_err(|e| e.to_string())?;
        let replicas = h.until_started(&execution).await?;
        let retired_pid = replicas[1].pid.ok_or("no pid")?;

        h.framework
            .scale(&execution, 1)
            .await
            .map_err(|e| e.to_string())?;
        // Out of service first (not ready while it drains; a quick exit may coalesce this
        // with the next change), then gone.
        let draining = h
            .replicas_until(&execution, "replica 1 out of service", |list| {
                list.get(1).is_none_or(|r| !r.ready)
            })
            .await?;
        ensure!(draining[0].ready, "{draining:?}");
        let one = if draining.len() == 1 {
            draining
        } else {
            h.replicas_until(&execution, "one replica", |list| list.len() == 1)
                .await?
        };
        ensure!(one[0].index == 0 && one[0].ready, "{one:?}");
        ensure!(
            !pid_alive(retired_pid),
            "replica 1's process {retired_pid} is gone"
        );
        ensure!(
            !accepts(&replicas[1].endpoint),
            "replica 1's socket is closed"
        );
        ensure!(
            http_get(&one[0].endpoint, "/")?.starts_with("replica 0 "),
            "replica 0 serves"
        );

        h.framework
            .scale(&execution, 2)
            .await
            .map_err(|e| e.to_string())?;
        let two = h
            .replicas_until(&execution, "two ready replicas", |list| {
                list.len() == 2 && ready_count(list) == 2
            })
            .await?;
        ensure!(two[1].index == 1 && two[1].restarts == 0, "{two:?}");
        let body = http_get(&two[1].endpoint, "/")?;
        ensure!(body.starts_with("replica 1 pid "), "{body:?}");
        let endpoints: Vec<String> = two.iter().map(|r| r.endpoint.clone()).collect();
        h.stop_and_check(&execution, &marker, &endpoints).await
    })
}

fn replicas_that_never_get_ready_fail_the_service() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let marker = unique_marker("svc-fail");
        let execution = exec("svc-fail");
        let mut spec = service(1, &marker);
        spec.replica.env.insert("FAIL".into(), "1".into());
        spec.ready_timeout_seconds = 2;
        let begun = Instant::now();
        h.framework
            .start(execution.clone(), Runnable::Service(spec))
            .await
            .map_err(|e| e.to_string())?;
        let kinds = h.events_until_end(&execution).await?;
        let took = begun.elapsed();
        ensure!(
            !kinds.contains(&EventKind::Started),
            "never started: {kinds:?}"
        );
        let outcome = exited(&kinds)?;
        let failure = outcome.failure.as_ref().ok_or("a failure")?;
        ensure!(failure.reason == "not_ready", "{failure:?}");
        ensure!(
            failure.message.starts_with(
                "replica 0 did not answer GET /_runplane/ready within 2s (it exited with code 1 "
            ),
            "{failure:?}"
        );
        ensure!(
            took < Duration::from_secs(4),
            "ended {took:?} after start (timeout 2s)"
        );
        println!(
            "    not_ready reported {took:?} after start: {}",
            failure.message
        );
        let left = marked_processes(&marker);
        ensure!(left.is_empty(), "processes left: {left:?}");
        Ok(())
    })
}

fn recovered_services_report_replicas_scale_and_stop() -> TestResult {
    let mut h = harness()?;
    let marker = unique_marker("svc-recover");
    let execution = exec("svc-recover");
    // The first server: starts the service, then dies (its runtime and control pipe go away).
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let started = first.block_on(async {
        h.framework
            .start(execution.clone(), Runnable::Service(service(2, &marker)))
            .await
            .map_err(|e| e.to_string())?;
        h.until_started(&execution).await
    })?;
    first.shutdown_timeout(Duration::from_secs(5));
    ensure!(ready_count(&started) == 2, "{started:?}");

    run(|| async {
        let (framework, events) = reopen(&h)?;
        h.framework = framework;
        h.events = events;
        h.framework
            .recover(vec![execution.clone()])
            .await
            .map_err(|e| e.to_string())?;
        let first_event = h.next_event().await?;
        ensure!(
            first_event.kind == EventKind::Replicas(started.clone()),
            "the replicas are reported at once: {first_event:?}"
        );
        h.until_started(&execution).await?;
        for replica in &started {
            http_get(&replica.endpoint, "/")?;
        }

        h.framework
            .scale(&execution, 1)
            .await
            .map_err(|e| e.to_string())?;
        let one = h
            .replicas_until(&execution, "one replica", |list| list.len() == 1)
            .await?;
        ensure!(one[0] == started[0], "replica 0 is untouched: {one:?}");
        let gone = started[1].pid.ok_or("no pid")?;
        ensure!(!pid_alive(gone), "replica 1's process {gone} is gone");

        let endpoints: Vec<String> = started.iter().map(|r| r.endpoint.clone()).collect();
        h.stop_and_check(&execution, &marker, &endpoints).await
    })
}

fn scale_refuses_jobs() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let execution = exec("a-job");
        h.framework
            .start(execution.clone(), Runnable::Job(job(&["sleep", "30"])))
            .await
            .map_err(|e| e.to_string())?;
        h.wait_started(&execution).await?;
        ensure!(
            matches!(
                h.framework.scale(&execution, 2).await,
                Err(FrameworkError::NotAService(_))
            ),
            "NotAService"
        );
        h.framework
            .stop(&execution)
            .await
            .map_err(|e| e.to_string())?;
        h.events_until_end(&execution).await?;
        ensure!(
            matches!(
                h.framework.scale(&execution, 2).await,
                Err(FrameworkError::NotAService(_))
            ),
            "NotAService after the end too"
        );
        Ok(())
    })
}

/// The scale may reach the attempt folder before the supervisor is up (it reads desired.json
/// when it starts) or after (SIGUSR1, once it has said something): either way it counts.
fn a_scale_right_after_start_is_not_lost() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let marker = unique_marker("svc-early-scale");
        let execution = exec("svc-early-scale");
        h.framework
            .start(execution.clone(), Runnable::Service(service(2, &marker)))
            .await
            .map_err(|e| e.to_string())?;
        h.framework
            .scale(&execution, 1)
            .await
            .map_err(|e| e.to_string())?;
        let one = h
            .replicas_until(&execution, "one ready replica", |list| {
                list.len() == 1 && list[0].ready
            })
            .await?;
        let endpoints: Vec<String> = one.iter().map(|r| r.endpoint.clone()).collect();
        h.stop_and_check(&execution, &marker, &endpoints).await
    })
}

/// Without its supervisor nobody keeps the replicas in check: the execution is lost and every
/// replica (found by its RUNPLANE_OUTPUTS) is killed.
fn a_killed_supervisor_leaves_no_replica_behind() -> TestResult {
    run(|| async {
        let mut h = harness()?;
        let marker = unique_marker("svc-lost");
        let execution = exec("svc-lost");
        h.framework
            .start(execution.clone(), Runnable::Service(service(2, &marker)))
            .await
            .map_err(|e| e.to_string())?;
        h.until_started(&execution).await?;
        let dir = h.attempt_dir(&execution);
        let supervisor: i32 = std::fs::read_to_string(dir.join("supervisor.pid"))
            .map_err(|e| e.to_string())?
            .trim()
            .parse()
            .map_err(|e| format!("supervisor.pid: {e}"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(supervisor),
            nix::sys::signal::Signal::SIGKILL,
        )
        .map_err(|e| e.to_string())?;
        let kinds = h.events_until_end(&execution).await?;
        ensure!(
            matches!(kinds.last(), Some(EventKind::Lost { message }) if message.contains("killed processes")),
            "{kinds:?}"
        );
        // SIGKILL was sent; dying takes the kernel a moment.
        wait_for("the replicas to die", || {
            marked_processes(&marker).is_empty().then_some(())
        })
        .await
    })
}
