//! Services end to end: a real server, real Python replicas, requests through the gateway.

mod support;

use serde_json::{json, Value};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{processes_with, rss_kib, stderr, stdout, TestServer};

const SERVICE: &str = r#"
import os, time
STATE = {"inits": 0}

def init(context, version="v1", fail=False):
    if fail:
        raise RuntimeError("the model is missing")
    STATE["version"] = version
    STATE["inits"] += 1

def handler(request):
    if request.path == "/boom":
        raise ValueError("boom")
    if request.path == "/slow":
        time.sleep(float(request.query.get("s", "1")))
    if request.path == "/upload":
        total = 0
        while True:
            chunk = request.stream.read(1 << 20)
            if not chunk:
                break
            total += len(chunk)
        return {"bytes": total}
    if request.path == "/stream":
        wait_for = request.query["wait_for"]
        def chunks():
            yield "first\n"
            while not os.path.exists(wait_for):
                time.sleep(0.01)
            yield "last\n"
        return chunks()
    return {
        "version": STATE["version"],
        "inits": STATE["inits"],
        "replica": os.environ.get("RUNPLANE_REPLICA"),
        "pid": os.getpid(),
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "prefix": request.headers.get("X-Forwarded-Prefix"),
        "json": request.json if request.method == "POST" else None,
    }
"#;

/// Applies the test service as function `name` whose init gets `version`.
fn apply_service(server: &TestServer, name: &str, version: &str) {
    let (status, body) = server.post(
        "/projects/p/functions",
        &json!({"kind": "python", "metadata": {"name": name}, "spec": {
            "handler": "handler", "source": {"code": SERVICE},
            "init_function": "init", "init_parameters": {"version": version},
        }}),
    );
    assert!(status == 201 || status == 200, "{body}");
}

/// Starts a serve run with the CLI (`run --action serve --wait`) and returns its id.
fn serve(server: &TestServer, name: &str, replicas: u32) -> String {
    let output = server.cli(
        "p",
        &[
            "run",
            name,
            "--action",
            "serve",
            "--replicas",
            &replicas.to_string(),
            "--wait",
            "-o",
            "json",
        ],
    );
    assert!(
        output.status.success(),
        "run --action serve failed: {}\n{}",
        stderr(&output),
        server.server_log()
    );
    // "run <id> (python+serve:run) READY" on stderr.
    let err = stderr(&output);
    let id = err
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no run id in {err:?}"))
        .to_string();
    let printed: Value = serde_json::from_str(&stdout(&output)).expect("service status as JSON");
    assert_eq!(printed["url"], format!("/services/p/{name}/"));
    id
}

fn gateway(server: &TestServer, name: &str, path: &str) -> String {
    format!("{}/services/p/{name}{path}", server.url)
}

fn get_json(server: &TestServer, url: &str) -> (u16, Value) {
    let response = server
        .http
        .get(url)
        .send()
        .expect("GET through the gateway");
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

fn run_of(server: &TestServer, id: &str) -> Value {
    server.get(&format!("/projects/p/runs/{id}")).1
}

/// Polls the run (test only) until `check` holds.
fn wait_run(server: &TestServer, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = run_of(server, id);
        if check(&run) {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "run {id}: {what} never happened: {run:#}\n{}",
            server.server_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_service_answers_through_the_gateway_and_is_stopped_and_resumed() {
    let server = TestServer::start();
    apply_service(&server, "greeter", "v1");
    let id = serve(&server, "greeter", 1);

    let run = run_of(&server, &id);
    assert_eq!(run["status"]["state"], "RUNNING");
    let replica = &run["status"]["service"]["replicas"][0];
    assert_eq!(replica["ready"], true, "{run:#}");
    let endpoint = replica["endpoint"].as_str().expect("endpoint").to_string();

    // Through the gateway: path, query and prefix reach the handler; init ran once.
    let (status, body) = get_json(&server, &gateway(&server, "greeter", "/hello?who=ada"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], "v1");
    assert_eq!(body["inits"], 1);
    assert_eq!(body["path"], "/hello");
    assert_eq!(body["query"]["who"], "ada");
    assert_eq!(body["prefix"], "/services/p/greeter");

    // `invoke` posts JSON and prints the answer.
    let output = server.cli(
        "p",
        &["invoke", "greeter", "--data", r#"{"name": "grace"}"#],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let answer: Value = serde_json::from_str(&stdout(&output)).expect("JSON answer");
    assert_eq!(answer["json"]["name"], "grace");
    assert_eq!(answer["method"], "POST");

    // A handler exception fails that request only; malformed JSON is a 400.
    let (status, body) = get_json(&server, &gateway(&server, "greeter", "/boom"));
    assert_eq!(status, 500);
    assert_eq!(body["error"], "ValueError", "{body}");
    let response = server
        .http
        .post(gateway(&server, "greeter", "/"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .expect("POST");
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(get_json(&server, &gateway(&server, "greeter", "/")).0, 200);

    // `get services` shows it ready.
    let output = server.cli("p", &["get", "services", "-o", "json"]);
    let services: Value = serde_json::from_str(&stdout(&output)).expect("services");
    assert_eq!(services[0]["name"], "greeter");
    assert_eq!(services[0]["run_id"], id.as_str());
    assert_eq!(services[0]["state"], "RUNNING");
    assert_eq!(services[0]["ready"], 1);

    // Stop: STOPPED, processes gone, port freed, the gateway refuses.
    let output = server.cli("p", &["stop", &id]);
    assert!(output.status.success(), "{}", stderr(&output));
    let run = wait_run(&server, &id, "STOPPED", |r| {
        r["status"]["state"] == "STOPPED"
    });
    assert_eq!(run["status"]["reason"], "user");
    assert!(
        std::net::TcpStream::connect(&endpoint).is_err(),
        "the replica's port {endpoint} still accepts"
    );
    let status = get_json(&server, &gateway(&server, "greeter", "/")).0;
    assert!(
        status == 503 || status == 404,
        "stopped service answered {status}"
    );

    // Resume: a new attempt, ready again, answering.
    let output = server.cli("p", &["resume", &id]);
    assert!(output.status.success(), "{}", stderr(&output));
    wait_run(&server, &id, "RUNNING again", |r| {
        r["status"]["state"] == "RUNNING" && r["status"]["attempt"] == 2
    });
    let (status, body) = get_json(&server, &gateway(&server, "greeter", "/"));
    assert_eq!(status, 200, "{body}");

    // Deleting the service stops its run and removes the name.
    let output = server.cli("p", &["delete", "services", "greeter"]);
    assert!(output.status.success(), "{}", stderr(&output));
    wait_run(&server, &id, "STOPPED after delete", |r| {
        r["status"]["state"] == "STOPPED"
    });
    assert_eq!(server.get("/projects/p/services/greeter").0, 404);
    assert_eq!(get_json(&server, &gateway(&server, "greeter", "/")).0, 404);
}

#[test]
fn a_rolling_redeploy_fails_no_request() {
    let server = TestServer::start();
    apply_service(&server, "model", "v1");
    let old = serve(&server, "model", 2);

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let versions = Arc::new(Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut clients = Vec::new();
    for n in 0..8 {
        let (stop, failures, versions, client) = (
            stop.clone(),
            failures.clone(),
            versions.clone(),
            client.clone(),
        );
        let url = gateway(&server, "model", "/");
        let slow = gateway(&server, "model", "/slow?s=0.3");
        clients.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                // Every client mixes in slower requests, which are in flight when a replica
                // is taken out of rotation.
                let target = if (i + n).is_multiple_of(5) {
                    &slow
                } else {
                    &url
                };
                match client.get(target).send() {
                    Ok(response) if response.status().is_success() => {
                        let body: Value = response.json().unwrap_or(Value::Null);
                        let version = body["version"].as_str().unwrap_or("?").to_string();
                        *versions.lock().unwrap().entry(version).or_default() += 1;
                    }
                    Ok(response) => failures.lock().unwrap().push(format!(
                        "{} {}",
                        response.status(),
                        response.text().unwrap_or_default()
                    )),
                    Err(error) => failures.lock().unwrap().push(error.to_string()),
                }
            }
        }));
    }
    // Requests that outlast the rollout: started on the old version, finished after it.
    let long: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            let url = gateway(&server, "model", "/slow?s=4");
            std::thread::spawn(move || {
                let response = client.get(url).send().map_err(|e| e.to_string())?;
                let status = response.status();
                let body: Value = response.json().map_err(|e| e.to_string())?;
                Ok::<_, String>((status.as_u16(), body, Instant::now()))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));

    apply_service(&server, "model", "v2");
    let new = serve(&server, "model", 2);
    let taken_over = Instant::now();
    let old_run = wait_run(&server, &old, "replaced", |r| {
        r["status"]["state"] == "STOPPED"
    });
    assert_eq!(old_run["status"]["reason"], "replaced", "{old_run:#}");
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("client thread");
    }
    for request in long {
        let (status, body, finished) = request
            .join()
            .expect("long request thread")
            .expect("the long request failed");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["version"], "v1");
        assert!(
            finished > taken_over,
            "the long request ended before the takeover"
        );
    }

    let failures = failures.lock().unwrap();
    let versions = versions.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests (answered: {versions:?}), first: {:?}\n{}",
        failures.len(),
        failures.first(),
        server.server_log()
    );
    assert!(versions.get("v1").copied().unwrap_or(0) > 0, "{versions:?}");
    assert!(versions.get("v2").copied().unwrap_or(0) > 0, "{versions:?}");

    let (_, service) = server.get("/projects/p/services/model");
    assert_eq!(service["run_id"], new.as_str());
    assert_eq!(service["ready"], 2);
    let (status, body) = get_json(&server, &gateway(&server, "model", "/"));
    assert_eq!((status, body["version"].clone()), (200, json!("v2")));
}

#[test]
fn a_killed_replica_is_restarted() {
    let server = TestServer::start();
    apply_service(&server, "sturdy", "v1");
    let id = serve(&server, "sturdy", 2);
    let run = run_of(&server, &id);
    let pid = run["status"]["service"]["replicas"][0]["pid"]
        .as_u64()
        .expect("replica pid");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let run = wait_run(&server, &id, "replica 0 restarted and ready", |r| {
        let replica = &r["status"]["service"]["replicas"][0];
        replica["restarts"] == 1 && replica["ready"] == true && replica["pid"] != json!(pid)
    });
    assert_eq!(run["status"]["state"], "RUNNING");
    for _ in 0..6 {
        let (status, body) = get_json(&server, &gateway(&server, "sturdy", "/"));
        assert_eq!(status, 200, "{body}");
    }
    let (_, service) = server.get("/projects/p/services/sturdy");
    assert_eq!(service["restarts"], 1);
}

#[test]
fn a_streamed_response_reaches_the_client_chunk_by_chunk() {
    let server = TestServer::start();
    apply_service(&server, "streamer", "v1");
    serve(&server, "streamer", 1);
    let flag = server.work.path().join("go");
    let url = format!(
        "{}?wait_for={}",
        gateway(&server, "streamer", "/stream"),
        flag.display()
    );
    let mut response = server.http.get(url).send().expect("GET");
    assert_eq!(response.status().as_u16(), 200);
    let mut received = Vec::new();
    let mut buffer = [0u8; 64];
    while !received.ends_with(b"first\n") {
        let n = response.read(&mut buffer).expect("read the first chunk");
        assert!(
            n > 0,
            "the stream ended before its first chunk: {received:?}"
        );
        received.extend_from_slice(&buffer[..n]);
    }
    // Only now may the handler produce its last chunk.
    std::fs::write(&flag, b"").expect("flag");
    response.read_to_end(&mut received).expect("read the rest");
    assert_eq!(String::from_utf8_lossy(&received), "first\nlast\n");
}

#[test]
fn a_1gib_upload_streams_through_the_gateway() {
    const SIZE: u64 = 1 << 30;
    let server = TestServer::start();
    apply_service(&server, "sink", "v1");
    serve(&server, "sink", 1);
    // Warm the gateway's connection pool and allocator first.
    assert_eq!(get_json(&server, &gateway(&server, "sink", "/")).0, 200);
    let pid = server.pid();
    let before = rss_kib(pid);
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let body = reqwest::blocking::Body::sized(std::io::repeat(b'x').take(SIZE), SIZE);
    let response = server
        .http
        .post(gateway(&server, "sink", "/upload"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .expect("upload");
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    let status = response.status().as_u16();
    let answer: Value = response.json().expect("JSON answer");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["bytes"], SIZE);
    let growth_mib = peak.saturating_sub(before) / 1024;
    eprintln!("server RSS {} KiB before, peak {} KiB", before, peak);
    assert!(
        growth_mib < 50,
        "the server's memory grew by {growth_mib} MiB during a 1 GiB upload"
    );
}

#[test]
fn a_service_that_never_becomes_ready_ends_in_error_with_nothing_left() {
    let server = TestServer::start();
    let (status, body) = server.post(
        "/projects/p/functions",
        &json!({"kind": "python", "metadata": {"name": "broken"}, "spec": {
            "handler": "handler", "source": {"code": SERVICE},
            "init_function": "init", "init_parameters": {"fail": true},
        }}),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = server.post(
        "/projects/p/tasks",
        &json!({"kind": "python+serve", "metadata": {"name": "broken-serve"},
                "spec": {"function": "broken", "ready_timeout_seconds": 3}}),
    );
    assert!(status == 200 || status == 201, "{body}");
    let started = Instant::now();
    let output = server.cli(
        "p",
        &[
            "run",
            "broken",
            "--action",
            "serve",
            "--task",
            "broken-serve",
            "--wait",
        ],
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}\n{}",
        stderr(&output),
        stdout(&output)
    );
    assert!(stderr(&output).contains("not_ready"), "{}", stderr(&output));
    assert!(started.elapsed() < Duration::from_secs(20));
    let id = stderr(&output)
        .split_whitespace()
        .nth(1)
        .expect("run id")
        .to_string();
    let (_, logs) = server.get_text(&format!("/projects/p/runs/{id}/logs"));
    assert!(logs.contains("the model is missing"), "{logs}");
    // Nothing but the server itself runs under its home.
    let deadline = Instant::now() + Duration::from_secs(10);
    let home = server.home.path().display().to_string();
    let left = || {
        let mut pids = processes_with(&home);
        pids.retain(|pid| *pid != server.pid());
        pids
    };
    while !left().is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes left behind: {:?}",
            left()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_replica_counts_are_rejected_with_their_field() {
    let server = TestServer::start();
    apply_service(&server, "svc", "v1");
    let (status, problem) = server.post(
        "/projects/p/runs",
        &json!({"function": "svc", "action": "serve", "replicas": 0}),
    );
    assert_eq!(status, 422, "{problem}");
    assert_eq!(support::fields(&problem), vec!["replicas"]);
    let (status, problem) = server.post(
        "/projects/p/tasks",
        &json!({"kind": "python+serve", "metadata": {"name": "t"},
                "spec": {"function": "svc", "replicas": 1000, "ready_timeout_seconds": 0}}),
    );
    assert_eq!(status, 422, "{problem}");
    let mut fields = support::fields(&problem);
    fields.sort();
    assert_eq!(fields, vec!["spec.ready_timeout_seconds", "spec.replicas"]);
}

#[test]
fn a_service_keeps_serving_across_a_server_crash_and_its_rollout_finishes_after_it() {
    let mut server = TestServer::start();
    apply_service(&server, "durable", "v1");
    let old = serve(&server, "durable", 1);
    let pid_before = run_of(&server, &old)["status"]["service"]["replicas"][0]["pid"].clone();

    server.kill9();
    server.restart(&[]);
    // The replica was never restarted: the new server re-attached it and routes to it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = get_json(&server, &gateway(&server, "durable", "/"));
        if status == 200 {
            assert_eq!(body["version"], "v1");
            assert_eq!(body["pid"], pid_before, "the replica was restarted");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the service never answered after the restart: {status} {body}\n{}",
            server.server_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A redeploy after the restart replaces the run the previous server started.
    apply_service(&server, "durable", "v2");
    let new = serve(&server, "durable", 1);
    let old_run = wait_run(&server, &old, "replaced", |r| {
        r["status"]["state"] == "STOPPED"
    });
    assert_eq!(old_run["status"]["reason"], "replaced");
    let (_, service) = server.get("/projects/p/services/durable");
    assert_eq!(service["run_id"], new.as_str());
    let (status, body) = get_json(&server, &gateway(&server, "durable", "/"));
    assert_eq!((status, body["version"].clone()), (200, json!("v2")));
}
