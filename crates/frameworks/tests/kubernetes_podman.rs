//! The kubernetes framework's job pod played for real with `podman kube play`: the Job's pod
//! template as a `kind: Pod` (its outputs `emptyDir` swapped for a `hostPath`, to get the
//! outputs back), the ConfigMap of its files as a second document of the same file, running
//! the real Python runner (`crates/runtimes`) in `localhost/runplane-python` (made by
//! `scripts/setup-engine`). What a cluster would run, minus the cluster.

use runplane_domain::{FileEntry, Job};
use runplane_frameworks::kubernetes::manifests::{job_objects, FILES_CONTAINER, MAIN_CONTAINER};
use runplane_frameworks::kubernetes::KubernetesSettings;
use runplane_frameworks::uploads::OutputsUploads;
use runplane_frameworks::ExecutionId;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// The tests play one file at a time: with two files played at once, one pod once ran the
/// other's `run.json` (seen with podman 4.3; the cause inside kube play was not pinned down).
static PODMAN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PYTHON_IMAGE: &str = "localhost/runplane-python:latest";
/// The runner the python runtime embeds, exactly as it ships.
const RUNNER: &str = include_str!("../../runtimes/src/python/runner.py");

fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run podman (run scripts/setup-engine): {e}"))
}

fn require_image() {
    let found = podman(&["image", "exists", PYTHON_IMAGE]);
    assert!(
        found.status.success(),
        "no {PYTHON_IMAGE}: run scripts/setup-engine (it builds the local images)"
    );
}

/// The python runtime's job for `main:handler(name=...)`: the runner, its `run.json` and the
/// function's source under `src/`.
fn python_job(name: &str) -> Job {
    let run = json!({
        "module": "main",
        "function": "handler",
        "parameters": { "name": name },
        "context": true,
        "run_id": "kube-play",
        "project": "demo",
        "max_results_bytes": 1 << 20,
    });
    let code = "import os\n\ndef handler(context, name='world'):\n    print('hello from the pod,', name, flush=True)\n    context.log_metric('answer', 42)\n    return {'greeting': 'hello ' + name, 'cwd': os.getcwd(), 'secret': os.environ['API_KEY']}\n";
    Job {
        command: vec!["/usr/bin/python3".into(), "runner.py".into()],
        env: BTreeMap::from([
            ("PYTHONUNBUFFERED".into(), "1".into()),
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
            ("API_KEY".into(), "s3cr3t".into()),
        ]),
        files: vec![
            FileEntry {
                path: "runner.py".into(),
                mode: 0o644,
                contents: RUNNER.as_bytes().to_vec(),
            },
            FileEntry {
                path: "run.json".into(),
                mode: 0o644,
                contents: serde_json::to_vec(&run).unwrap(),
            },
            FileEntry {
                path: "src/main.py".into(),
                mode: 0o644,
                contents: code.as_bytes().to_vec(),
            },
        ],
        stop_grace_seconds: 5,
        image: Some(PYTHON_IMAGE.into()),
        redact: vec!["s3cr3t".into()],
        ..Default::default()
    }
}

/// The Job's pod template as a Pod named `pod`, with the outputs on the host at `outputs`
/// and the Secret's values put in as plain env (podman's kube play reads Secrets from its
/// own secret store, not from the file).
fn playable_pod(job: &Value, secret: Option<&Value>, pod: &str, outputs: &Path) -> Value {
    let template = &job["spec"]["template"];
    let mut spec = template["spec"].clone();
    for volume in spec["volumes"].as_array_mut().expect("volumes") {
        if volume["name"] == "outputs" {
            *volume = json!({
                "name": "outputs",
                "hostPath": { "path": outputs.to_string_lossy(), "type": "Directory" },
            });
        }
    }
    let data = secret.map(|s| s["data"].clone()).unwrap_or(json!({}));
    for container in spec["containers"].as_array_mut().expect("containers") {
        for env in container["env"].as_array_mut().into_iter().flatten() {
            if let Some(key) = env["valueFrom"]["secretKeyRef"]["key"].as_str() {
                let encoded = data[key].as_str().expect("the Secret holds the key");
                let value = base64_decode(encoded);
                *env = json!({ "name": env["name"], "value": value });
            }
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": pod, "labels": template["metadata"]["labels"] },
        "spec": spec,
    })
}

fn base64_decode(text: &str) -> String {
    use base64::Engine;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("base64"),
    )
    .expect("utf-8")
}

struct Played {
    file: std::path::PathBuf,
    config_map: String,
}

impl Drop for Played {
    fn drop(&mut self) {
        let _ = podman(&["kube", "down", &self.file.to_string_lossy()]);
        // kube play keeps a ConfigMap's volume after the pod is gone.
        let _ = podman(&["volume", "rm", "-f", &self.config_map]);
    }
}

#[test]
fn a_generated_job_pod_runs_the_real_python_runner_under_podman_kube_play() {
    let _one_at_a_time = PODMAN.blocking_lock();
    require_image();
    let tmp = tempfile::tempdir().unwrap();
    let outputs = tmp.path().join("outputs");
    std::fs::create_dir_all(&outputs).unwrap();
    let unique = format!("kube-play-{}", std::process::id());
    let execution = ExecutionId {
        run_id: unique.clone(),
        attempt: 1,
    };
    let mut settings =
        KubernetesSettings::new("runs", tmp.path().join("runs"), tmp.path().join("logs"));
    settings.default_image = PYTHON_IMAGE.into();
    let objects = job_objects(&settings, &execution, &python_job("kube"), None).expect("objects");
    let config_map = serde_json::to_value(objects.config_map.expect("a ConfigMap")).unwrap();
    let secret = objects.secret.map(|s| serde_json::to_value(s).unwrap());
    let job = serde_json::to_value(&objects.job).unwrap();
    let pod_name = format!("{unique}-pod");
    let pod = playable_pod(&job, secret.as_ref(), &pod_name, &outputs);

    let file = tmp.path().join("play.yaml");
    let yaml = format!(
        "{}---\n{}",
        serde_yaml_ng::to_string(&config_map).unwrap(),
        serde_yaml_ng::to_string(&pod).unwrap()
    );
    std::fs::write(&file, &yaml).unwrap();
    let config_map_name = config_map["metadata"]["name"].as_str().unwrap().to_string();
    let _played = Played {
        file: file.clone(),
        config_map: config_map_name,
    };
    let played = podman(&["kube", "play", &file.to_string_lossy()]);
    assert!(
        played.status.success(),
        "podman kube play failed: {}\n{yaml}",
        String::from_utf8_lossy(&played.stderr)
    );

    // The init container copied the files; the main container ran the runner.
    let main = format!("{pod_name}-{MAIN_CONTAINER}");
    let waited = podman(&["wait", &main]);
    let code = String::from_utf8_lossy(&waited.stdout).trim().to_string();
    let logs = podman(&["logs", &main]);
    let stdout = String::from_utf8_lossy(&logs.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&logs.stderr).into_owned();
    assert_eq!(code, "0", "exit code; stdout {stdout:?}; stderr {stderr:?}");
    assert_eq!(stdout, "hello from the pod, kube\n");

    let results: Value = serde_json::from_slice(
        &std::fs::read(outputs.join("results.json")).expect("results.json in the outputs"),
    )
    .unwrap();
    assert_eq!(
        results,
        json!({ "greeting": "hello kube", "cwd": "/runplane/work/src", "secret": "s3cr3t" })
    );
    let metrics = std::fs::read_to_string(outputs.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"answer\""), "{metrics}");
    assert!(!outputs.join("error.json").exists());
    // The files step is an init container of the same pod.
    assert!(yaml.contains(&format!("name: {FILES_CONTAINER}")));
}

/// Accepts one HTTP request on `listener`; its request line, headers and body.
fn accept_one(listener: std::net::TcpListener) -> (String, Vec<u8>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let (stream, _) = listener.accept().expect("the uploader connects");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let mut stream = stream;
    stream
        .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    (head, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_pod_uploads_its_outputs_with_its_run_scoped_token() {
    use runplane_frameworks::kubernetes::KubernetesFramework;
    let _one_at_a_time = PODMAN.lock().await;
    require_image();
    let tmp = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || accept_one(listener));

    let unique = format!("kube-upload-{}", std::process::id());
    let execution = ExecutionId {
        run_id: unique.clone(),
        attempt: 3,
    };
    let mut settings =
        KubernetesSettings::new("runs", tmp.path().join("runs"), tmp.path().join("logs"));
    settings.default_image = PYTHON_IMAGE.into();
    settings.token_key = b"upload test key".to_vec();
    settings.outputs_url = Some(format!("http://127.0.0.1:{port}/api/v1/outputs"));
    // No cluster: only the framework's upload side is used here.
    let offline = tower::service_fn(|_request: http::Request<kube::client::Body>| async {
        Err::<http::Response<http_body_util::Full<bytes::Bytes>>, _>(std::io::Error::other(
            "no cluster in this test",
        ))
    });
    let (tx, _events) =
        runplane_frameworks::events::channel(runplane_frameworks::events::DEFAULT_CAPACITY);
    let framework =
        KubernetesFramework::new(kube::Client::new(offline, "runs"), settings.clone(), tx);
    let token = framework.run_token(&execution);

    let objects =
        job_objects(&settings, &execution, &python_job("upload"), Some(&token)).expect("objects");
    let config_map = serde_json::to_value(objects.config_map.expect("a ConfigMap")).unwrap();
    let secret = serde_json::to_value(objects.secret.expect("a Secret")).unwrap();
    let job = serde_json::to_value(&objects.job).unwrap();
    let pod_name = format!("{unique}-pod");
    // The outputs stay in the pod's emptyDir: they come back through the upload only. The
    // host's network lets the pod reach the test's server on loopback.
    let mut pod = playable_pod(&job, Some(&secret), &pod_name, tmp.path());
    let volumes = pod["spec"]["volumes"].as_array_mut().unwrap();
    for volume in volumes.iter_mut() {
        if volume["name"] == "outputs" {
            *volume = json!({ "name": "outputs", "emptyDir": {} });
        }
    }
    pod["spec"]["hostNetwork"] = json!(true);

    let file = tmp.path().join("play.yaml");
    let yaml = format!(
        "{}---\n{}",
        serde_yaml_ng::to_string(&config_map).unwrap(),
        serde_yaml_ng::to_string(&pod).unwrap()
    );
    std::fs::write(&file, &yaml).unwrap();
    let _played = Played {
        file: file.clone(),
        config_map: config_map["metadata"]["name"].as_str().unwrap().to_string(),
    };
    let played = podman(&["kube", "play", &file.to_string_lossy()]);
    assert!(
        played.status.success(),
        "podman kube play failed: {}",
        String::from_utf8_lossy(&played.stderr)
    );
    let main = format!("{pod_name}-{MAIN_CONTAINER}");
    let waited = tokio::task::spawn_blocking(move || podman(&["wait", &main]))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&waited.stdout).trim(), "0");

    let (head, body) = tokio::task::spawn_blocking(move || server.join().unwrap())
        .await
        .unwrap();
    assert!(
        head.starts_with(&format!("PUT /api/v1/outputs/{unique}/3 ")),
        "{head}"
    );
    let bearer = format!("authorization: bearer {token}");
    assert!(head.to_ascii_lowercase().contains(&bearer), "{head}");
    framework
        .accept_outputs(&execution, &token, &body)
        .expect("the upload is accepted");
    let stored = tmp
        .path()
        .join(format!("runs/{unique}/3/outputs/results.json"));
    let results: Value = serde_json::from_slice(&std::fs::read(stored).unwrap()).unwrap();
    assert_eq!(results["greeting"], "hello upload");
}
