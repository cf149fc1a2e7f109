//! A small in-memory Kubernetes API server behind `tower_test::mock::pair` (as kube-rs
//! documents for testing clients): namespaced objects as JSON, create/get/list/patch/delete,
//! watches as streamed bodies, pod logs as streams the test writes to, garbage collection of
//! an owner's pods, and fault injection. The test plays the cluster's controllers by hand:
//! it makes a Job's pod, moves it through its states and ends the Job.

#![allow(dead_code)]

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::UnboundedReceiverStream;

pub type ResponseBody = UnsyncBoxBody<Bytes, std::io::Error>;

pub const NAMESPACE: &str = "runs";

#[derive(Clone, Default)]
pub struct Fake {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

#[derive(Default)]
struct State {
    /// (resource plural, name) → object.
    objects: BTreeMap<(String, String), Value>,
    version: u64,
    uid: u64,
    watchers: Vec<Watcher>,
    logs: HashMap<String, PodLog>,
    requests: Vec<String>,
    faults: VecDeque<Fault>,
}

struct Watcher {
    resource: String,
    selector: Vec<(String, String)>,
    sender: mpsc::UnboundedSender<Result<Frame<Bytes>, std::io::Error>>,
}

#[derive(Default)]
struct PodLog {
    lines: Vec<String>,
    /// Open follow streams; dropped (closed) by `close_log`.
    followers: Vec<mpsc::UnboundedSender<Result<Frame<Bytes>, std::io::Error>>>,
}

/// Answer `times` requests matching `method` and `path_part` with `code`.
pub struct Fault {
    pub method: Method,
    pub path_part: String,
    pub code: u16,
    pub message: String,
    pub times: u32,
}

fn status(code: u16, reason: &str, message: &str) -> Response<ResponseBody> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    respond(code, &body)
}

fn respond(code: u16, body: &Value) -> Response<ResponseBody> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(serde_json::to_vec(body).unwrap()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap()
}

fn streaming(
    receiver: mpsc::UnboundedReceiver<Result<Frame<Bytes>, std::io::Error>>,
) -> Response<ResponseBody> {
    Response::builder()
        .status(200)
        .body(StreamBody::new(UnboundedReceiverStream::new(receiver)).boxed_unsync())
        .unwrap()
}

fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "jobs" => ("batch/v1", "Job"),
        "deployments" => ("apps/v1", "Deployment"),
        "services" => ("v1", "Service"),
        "configmaps" => ("v1", "ConfigMap"),
        "secrets" => ("v1", "Secret"),
        "pods" => ("v1", "Pod"),
        _ => ("v1", "Unknown"),
    }
}

fn labels_match(object: &Value, selector: &[(String, String)]) -> bool {
    selector.iter().all(|(key, value)| {
        object["metadata"]["labels"][key.as_str()].as_str() == Some(value.as_str())
    })
}

fn parse_selector(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .filter_map(|part| part.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

impl Fake {
    /// A client whose every request this fake answers.
    pub fn client(&self) -> Client {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<Body>, Response<ResponseBody>>();
        let fake = self.clone();
        tokio::spawn(async move {
            while let Some((request, reply)) = handle.next_request().await {
                let fake = fake.clone();
                tokio::spawn(async move {
                    let response = fake.serve(request).await;
                    reply.send_response(response);
                });
            }
        });
        Client::new(service, NAMESPACE)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn fail(&self, fault: Fault) {
        self.state().faults.push_back(fault);
    }

    /// Every request so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }

    pub fn get(&self, resource: &str, name: &str) -> Option<Value> {
        self.state()
            .objects
            .get(&(resource.to_string(), name.to_string()))
            .cloned()
    }

    pub fn names(&self, resource: &str) -> Vec<String> {
        self.state()
            .objects
            .keys()
            .filter(|(r, _)| r == resource)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// Waits until `n` watches are open (the framework's watchers are listening).
    pub async fn wait_watchers(&self, n: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let notified = self.changed.notified();
                if self.state().watchers.len() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("the framework's watchers did not start");
    }

    /// Waits until `resource/name` exists.
    pub async fn wait_for(&self, resource: &str, name: &str) -> Value {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let notified = self.changed.notified();
                if let Some(object) = self.get(resource, name) {
                    return object;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{resource}/{name} was never created"))
    }

    /// Waits until `resource/name` is gone.
    pub async fn wait_gone(&self, resource: &str, name: &str) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let notified = self.changed.notified();
                if self.get(resource, name).is_none() {
                    return;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{resource}/{name} was never deleted"))
    }

    fn notify(state: &mut State, resource: &str, kind: &str, object: &Value) {
        let line = serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap();
        let mut line = line;
        line.push(b'\n');
        state.watchers.retain(|watcher| {
            if watcher.resource != resource || !labels_match(object, &watcher.selector) {
                return !watcher.sender.is_closed();
            }
            watcher
                .sender
                .send(Ok(Frame::data(Bytes::from(line.clone()))))
                .is_ok()
        });
    }

    /// Stores `object` (created or replaced) and tells the watches, as a controller's write.
    pub fn apply(&self, resource: &str, mut object: Value) -> Value {
        let mut state = self.state();
        state.version += 1;
        let version = state.version.to_string();
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let key = (resource.to_string(), name);
        let existed = state.objects.contains_key(&key);
        object["metadata"]["resourceVersion"] = json!(version);
        object["metadata"]["namespace"] = json!(NAMESPACE);
        if object["metadata"]["uid"].is_null() {
            state.uid += 1;
            object["metadata"]["uid"] = json!(format!("uid-{}", state.uid));
        }
        if object["metadata"]["creationTimestamp"].is_null() {
            object["metadata"]["creationTimestamp"] =
                json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        let (api_version, kind) = kind_of(resource);
        object["apiVersion"] = json!(api_version);
        object["kind"] = json!(kind);
        state.objects.insert(key, object.clone());
        Self::notify(
            &mut state,
            resource,
            if existed { "MODIFIED" } else { "ADDED" },
            &object,
        );
        drop(state);
        self.changed.notify_waiters();
        object
    }

    /// Changes part of an object (a JSON merge patch), as a controller's status update.
    pub fn patch(&self, resource: &str, name: &str, patch: Value) -> Value {
        let mut object = self
            .get(resource, name)
            .unwrap_or_else(|| panic!("no {resource}/{name}"));
        merge(&mut object, &patch);
        self.apply(resource, object)
    }

    /// Deletes an object as someone else would (and, like the garbage collector, the pods
    /// of a Job or Deployment).
    pub fn remove(&self, resource: &str, name: &str) -> Option<Value> {
        let mut state = self.state();
        let removed = state
            .objects
            .remove(&(resource.to_string(), name.to_string()));
        if let Some(object) = &removed {
            Self::notify(&mut state, resource, "DELETED", object);
            if resource == "jobs" || resource == "deployments" {
                let run = object["metadata"]["labels"]["runplane.io/run-id"].clone();
                let attempt = object["metadata"]["labels"]["runplane.io/attempt"].clone();
                let pods: Vec<(String, String)> = state
                    .objects
                    .iter()
                    .filter(|((r, _), pod)| {
                        r == "pods"
                            && pod["metadata"]["labels"]["runplane.io/run-id"] == run
                            && pod["metadata"]["labels"]["runplane.io/attempt"] == attempt
                    })
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in pods {
                    if let Some(pod) = state.objects.remove(&key) {
                        Self::notify(&mut state, "pods", "DELETED", &pod);
                        if let Some(log) = state.logs.get_mut(&key.1) {
                            log.followers.clear();
                        }
                    }
                }
            }
        }
        drop(state);
        self.changed.notify_waiters();
        removed
    }

    /// A pod of `owner` (a Job or Deployment), from its template, Pending.
    pub fn make_pod(&self, owner_resource: &str, owner: &str, pod: &str) -> Value {
        let owner = self
            .get(owner_resource, owner)
            .unwrap_or_else(|| panic!("no {owner_resource}/{owner}"));
        let template = &owner["spec"]["template"];
        self.apply(
            "pods",
            json!({
                "metadata": {
                    "name": pod,
                    "labels": template["metadata"]["labels"],
                    "annotations": template["metadata"]["annotations"],
                },
                "spec": template["spec"],
                "status": { "phase": "Pending" },
            }),
        )
    }

    /// The pod's main container runs (`restarts` so far), optionally Ready.
    pub fn pod_running(&self, pod: &str, restarts: i32, ready: bool, ip: &str) {
        self.patch(
            "pods",
            pod,
            json!({ "status": {
                "phase": "Running",
                "podIP": ip,
                "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
                "containerStatuses": [{
                    "name": "main", "image": "img", "imageID": "", "ready": ready,
                    "restartCount": restarts,
                    "state": { "running": { "startedAt": now() } },
                }],
            }}),
        );
    }

    /// The pod's main container ended with `code` (`reason`: `Completed`, `Error`,
    /// `OOMKilled`), with a termination `message`.
    pub fn pod_terminated(&self, pod: &str, code: i32, reason: &str, message: &str) {
        let phase = if code == 0 { "Succeeded" } else { "Failed" };
        self.patch(
            "pods",
            pod,
            json!({ "status": {
                "phase": phase,
                "containerStatuses": [{
                    "name": "main", "image": "img", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": { "terminated": {
                        "exitCode": code, "reason": reason, "message": message,
                        "finishedAt": now(),
                    } },
                }],
            }}),
        );
        // The container ended: so do its log streams.
        self.close_log(pod);
    }

    /// The pod's main container cannot start (`ErrImagePull`...).
    pub fn pod_waiting(&self, pod: &str, reason: &str, message: &str) {
        self.patch(
            "pods",
            pod,
            json!({ "status": {
                "phase": "Pending",
                "containerStatuses": [{
                    "name": "main", "image": "registry.invalid/nope:1", "imageID": "",
                    "ready": false, "restartCount": 0,
                    "state": { "waiting": { "reason": reason, "message": message } },
                }],
            }}),
        );
    }

    pub fn job_condition(&self, job: &str, condition: &str, reason: &str, message: &str) {
        self.patch(
            "jobs",
            job,
            json!({ "status": { "conditions": [{
                "type": condition, "status": "True", "reason": reason, "message": message,
            }]}}),
        );
    }

    /// Appends a line to the pod's log (with the kubelet's timestamp).
    pub fn log(&self, pod: &str, line: &str) -> chrono::DateTime<chrono::Utc> {
        let time = chrono::Utc::now();
        let mut state = self.state();
        let log = state.logs.entry(pod.to_string()).or_default();
        let stamped = format!(
            "{} {line}\n",
            time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        );
        log.lines.push(stamped.clone());
        log.followers.retain(|f| {
            f.send(Ok(Frame::data(Bytes::from(stamped.clone()))))
                .is_ok()
        });
        time
    }

    /// Ends the pod's open log streams (the container stopped, or the API server cut them).
    pub fn close_log(&self, pod: &str) {
        if let Some(log) = self.state().logs.get_mut(pod) {
            log.followers.clear();
        }
    }

    async fn serve(&self, request: Request<Body>) -> Response<ResponseBody> {
        let method = request.method().clone();
        let uri = request.uri().clone();
        let path = uri.path().to_string();
        let query: HashMap<String, String> = uri
            .query()
            .map(|q| {
                url_pairs(q)
                    .into_iter()
                    .collect::<HashMap<String, String>>()
            })
            .unwrap_or_default();
        self.state().requests.push(format!(
            "{method} {path}{}",
            uri.query().map(|q| format!("?{q}")).unwrap_or_default()
        ));
        {
            let mut state = self.state();
            let fault = state
                .faults
                .iter_mut()
                .find(|f| f.method == method && path.contains(&f.path_part) && f.times > 0);
            if let Some(fault) = fault {
                fault.times -= 1;
                let (code, message) = (fault.code, fault.message.clone());
                let reason = match code {
                    403 => "Forbidden",
                    404 => "NotFound",
                    409 => "AlreadyExists",
                    422 => "Invalid",
                    _ => "InternalError",
                };
                return status(code, reason, &message);
            }
        }
        let body = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let parts: Vec<&str> = path.split('/').collect();
        let Some(at) = parts.iter().position(|p| *p == "namespaces") else {
            return status(404, "NotFound", "no such path");
        };
        let resource = parts.get(at + 2).copied().unwrap_or("").to_string();
        let name = parts.get(at + 3).map(|s| s.to_string());
        let sub = parts.get(at + 4).copied();
        match (method, name, sub) {
            (Method::GET, None, _) if query.get("watch").map(String::as_str) == Some("true") => {
                let (sender, receiver) = mpsc::unbounded_channel();
                let selector = parse_selector(query.get("labelSelector").map_or("", |s| s));
                self.state().watchers.push(Watcher {
                    resource,
                    selector,
                    sender,
                });
                self.changed.notify_waiters();
                streaming(receiver)
            }
            (Method::GET, None, _) => {
                let selector = parse_selector(query.get("labelSelector").map_or("", |s| s));
                let state = self.state();
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|((r, _), o)| *r == resource && labels_match(o, &selector))
                    .map(|(_, o)| o.clone())
                    .collect();
                let (api_version, kind) = kind_of(&resource);
                respond(
                    200,
                    &json!({
                        "apiVersion": api_version, "kind": format!("{kind}List"),
                        "metadata": { "resourceVersion": state.version.to_string() },
                        "items": items,
                    }),
                )
            }
            (Method::GET, Some(name), Some("log")) => self.serve_log(&name, &query),
            (Method::GET, Some(name), _) => match self.get(&resource, &name) {
                Some(object) => respond(200, &object),
                None => status(404, "NotFound", &format!("{resource} {name:?} not found")),
            },
            (Method::POST, None, _) => {
                let object: Value = serde_json::from_slice(&body).unwrap();
                let name = object["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                if self.get(&resource, &name).is_some() {
                    return status(
                        409,
                        "AlreadyExists",
                        &format!("{resource} {name:?} already exists"),
                    );
                }
                let created = self.apply(&resource, object);
                respond(201, &created)
            }
            (Method::PATCH, Some(name), _) => {
                if self.get(&resource, &name).is_none() {
                    return status(404, "NotFound", &format!("{resource} {name:?} not found"));
                }
                let patch: Value = serde_json::from_slice(&body).unwrap();
                let patched = self.patch(&resource, &name, patch);
                respond(200, &patched)
            }
            (Method::DELETE, Some(name), _) => match self.remove(&resource, &name) {
                Some(object) => respond(200, &object),
                None => status(404, "NotFound", &format!("{resource} {name:?} not found")),
            },
            _ => status(405, "MethodNotAllowed", "not supported by the fake"),
        }
    }

    fn serve_log(&self, pod: &str, query: &HashMap<String, String>) -> Response<ResponseBody> {
        if self.get("pods", pod).is_none() {
            return status(404, "NotFound", &format!("pods {pod:?} not found"));
        }
        let follow = query.get("follow").map(String::as_str) == Some("true");
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut state = self.state();
        let log = state.logs.entry(pod.to_string()).or_default();
        // The whole log every time: the follower's cursor must skip what it already has.
        for line in &log.lines {
            let _ = sender.send(Ok(Frame::data(Bytes::from(line.clone()))));
        }
        // A container that ended has a log that ends: only a live one is followed.
        let ended = state
            .objects
            .get(&("pods".to_string(), pod.to_string()))
            .is_some_and(|p| matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")));
        let log = state.logs.entry(pod.to_string()).or_default();
        if follow && !ended {
            log.followers.push(sender);
        }
        streaming(receiver)
    }
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
