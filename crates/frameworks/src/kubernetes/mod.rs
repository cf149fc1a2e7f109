//! The `kubernetes` framework: a job attempt is a `batch/v1` Job, a service attempt a
//! Deployment (+ a Service when it serves HTTP), a build a Kaniko Job; the files and secrets
//! of a run travel in a ConfigMap and a Secret owned by that Job or Deployment
//! (`manifests.rs`, pure).
//!
//! State comes from watches, never from polling each run: three `kube-runtime` watchers (Jobs,
//! Pods, Deployments carrying this server's `managed-by` and `instance` labels) feed one
//! table of tracked executions, which turns what they see into [`FrameworkEvent`]s
//! (`Started` once the main container runs, `Replicas` from a service's pods, `Exited` from
//! the Job's conditions and the container's terminated state, `Lost` when someone else deleted
//! the objects). Logs are followed per pod into the attempt's log store (`logs.rs`). A
//! restarted server finds its objects again by label (`recover`).
//!
//! Outputs come back through the API: when `outputs_url` is set, the job's command runs under
//! a small wrapper that uploads `$RUNPLANE_OUTPUTS` with a run-scoped token (`token.rs`) after
//! it ends; the server hands the upload to [`KubernetesFramework::accept_outputs`], which keeps
//! it in the attempt's folder until `Exited` reports it.
//!
//! On `recover`, Jobs and Deployments are listed by label: wanted executions are re-attached
//! (logs resume after what is stored, matched line by line), missing ones are lost, and objects
//! of executions not handed over are deleted. Each execution ends once (`ended`), whichever
//! watch tells first.

mod api;
pub mod logs;
pub mod manifests;
pub mod profiles;
pub mod quantity;
pub mod status;
pub mod token;

use crate::attempt::{attempt_dir, check_file_path, write_job_file};
use crate::copied_log::CopiedLog;
use crate::events::Outbox;
use crate::outputs::collect_outputs;
use crate::uploads::{OutputsError, OutputsUploads};
use crate::{EventKind, EventSender, ExecutionId, Framework, FrameworkError, FrameworkEvent};
use api::{describe, is_conflict, is_not_found, retry};
use async_trait::async_trait;
use base64::Engine;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job as K8sJob;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service as K8sService};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};
use logs::{follow_pod, LogSink, SharedSink};
use manifests::{
    execution_of, managed_selector, object_name, owner_reference, selector_labels, KIND_BUILD,
    LABEL_KIND,
};
use profiles::Profiles;
use runplane_domain::runnable::DEFAULT_LOG_LIMIT_BYTES;
use runplane_domain::{
    reason, BuiltImage, ExitOutcome, Failure, ReplicaStatus, Runnable, BUILD_OUTPUT,
};
use runplane_logstore::file::FileLogStore;
use serde::de::DeserializeOwned;
use status::{JobEnd, Terminated};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::task::{AbortHandle, JoinHandle};

/// Everything the framework needs to know about its cluster.
#[derive(Debug, Clone)]
pub struct KubernetesSettings {
    /// The namespace runs are created in (the server's Role is limited to it).
    pub namespace: String,
    /// The `runplane.io/instance` label: which server's objects these are.
    pub instance: String,
    /// The image of jobs that name none.
    pub default_image: String,
    /// Admin-defined profiles users pick by name.
    pub profiles: Profiles,
    /// The extended resource GPUs are asked for with.
    pub gpu_resource: String,
    /// The service account runs' pods use (their API token is not mounted either way).
    pub service_account: Option<String>,
    pub image_pull_secrets: Vec<String>,
    /// Image builds; without it, builds are refused.
    pub build: Option<BuildSettings>,
    /// Where jobs upload their outputs (`<outputs_url>/<run id>/<attempt>`, PUT, bearer
    /// token); without it, outputs stay in the pod.
    pub outputs_url: Option<String>,
    /// The key run-scoped tokens are derived with (the server's secret key).
    pub token_key: Vec<u8>,
    /// Attempt folders: uploaded outputs (`<runs_dir>/<run id>/<attempt>/outputs`).
    pub runs_dir: PathBuf,
    /// The log store's root (the same as the server's).
    pub logs_dir: PathBuf,
    /// A kubeconfig file; in-cluster config (or `$KUBECONFIG`, `~/.kube/config`) when absent.
    pub kubeconfig: Option<PathBuf>,
    /// The first wait before retrying a transient API error (doubled each try).
    pub retry_delay: Duration,
}

impl KubernetesSettings {
    pub fn new(namespace: &str, runs_dir: PathBuf, logs_dir: PathBuf) -> Self {
        KubernetesSettings {
            namespace: namespace.to_string(),
            instance: "runplane".to_string(),
            default_image: "localhost/runplane-python:latest".to_string(),
            profiles: Profiles::default(),
            gpu_resource: "nvidia.com/gpu".to_string(),
            service_account: None,
            image_pull_secrets: Vec::new(),
            build: None,
            outputs_url: None,
            token_key: Vec::new(),
            runs_dir,
            logs_dir,
            kubeconfig: None,
            retry_delay: Duration::from_millis(200),
        }
    }
}

/// Kaniko builds.
#[derive(Debug, Clone)]
pub struct BuildSettings {
    /// Where images are pushed (`registry.example:5000/team`), unless the image names one.
    pub registry: String,
    /// The Kaniko executor image (from a registry the cluster can pull from).
    pub kaniko_image: String,
    /// Plain HTTP / unverified TLS to the registry.
    pub insecure: bool,
    /// A `kubernetes.io/dockerconfigjson` Secret with the registry's credentials.
    pub push_secret: Option<String>,
}

pub struct KubernetesFramework {
    shared: Arc<Shared>,
    watchers: Vec<AbortHandle>,
}

struct Shared {
    client: Client,
    settings: KubernetesSettings,
    /// Watcher handlers are synchronous: events go out through an ordered outbox.
    events: Outbox,
    tracked: Mutex<HashMap<ExecutionId, Tracked>>,
}

#[derive(Debug, Clone, PartialEq)]
enum What {
    Job,
    Build { destination: String },
    Service { desired: u32, port: Option<u16> },
}

struct Tracked {
    what: What,
    name: String,
    started: bool,
    ended: bool,
    stopping: bool,
    stop_grace: u64,
    sink: Option<SharedSink>,
    followers: HashMap<String, JoinHandle<()>>,
    terminated: Option<Terminated>,
    /// A service's pods, by name.
    pods: BTreeMap<String, Pod>,
    replicas: Vec<ReplicaStatus>,
    timer: Option<AbortHandle>,
}

impl Tracked {
    fn new(what: What, name: String, stop_grace: u64, sink: Option<SharedSink>) -> Tracked {
        Tracked {
            what,
            name,
            started: false,
            ended: false,
            stopping: false,
            stop_grace,
            sink,
            followers: HashMap::new(),
            terminated: None,
            pods: BTreeMap::new(),
            replicas: Vec::new(),
            timer: None,
        }
    }

    fn abort(&mut self) {
        for (_, follower) in self.followers.drain() {
            follower.abort();
        }
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

/// The label selector of one execution's pods.
fn pod_selector(settings: &KubernetesSettings, execution: &ExecutionId) -> String {
    selector_labels(settings, execution)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl KubernetesFramework {
    /// Connects with the settings' kubeconfig, or the inferred config (in-cluster service
    /// account, `$KUBECONFIG`, `~/.kube/config`).
    pub async fn connect(
        settings: KubernetesSettings,
        events: EventSender,
    ) -> Result<Self, FrameworkError> {
        let io = |what: &str, e: &dyn std::fmt::Display| {
            FrameworkError::Io(std::io::Error::other(format!("{what}: {e}")))
        };
        let config = match &settings.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| io(&format!("cannot read {}", path.display()), &e))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .map_err(|e| io(&format!("cannot use {}", path.display()), &e))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| io("no Kubernetes configuration found", &e))?,
        };
        let client =
            Client::try_from(config).map_err(|e| io("cannot make a Kubernetes client", &e))?;
        Ok(Self::new(client, settings, events))
    }

    /// A framework on `client` (tests hand in a mocked one). Starts the watchers: must be
    /// called inside a tokio runtime.
    pub fn new(client: Client, settings: KubernetesSettings, events: EventSender) -> Self {
        let shared = Arc::new(Shared {
            client,
            settings,
            events: Outbox::new(events),
            tracked: Mutex::new(HashMap::new()),
        });
        let watchers = vec![
            tokio::spawn(watch::<K8sJob>(shared.clone(), Shared::on_job)).abort_handle(),
            tokio::spawn(watch::<Pod>(shared.clone(), Shared::on_pod)).abort_handle(),
            tokio::spawn(watch::<Deployment>(shared.clone(), Shared::on_deployment)).abort_handle(),
        ];
        KubernetesFramework { shared, watchers }
    }

    pub fn settings(&self) -> &KubernetesSettings {
        &self.shared.settings
    }

    /// The run-scoped token of an execution (what its pod uploads outputs with).
    pub fn run_token(&self, execution: &ExecutionId) -> String {
        token::run_token(&self.shared.settings.token_key, execution)
    }
}

/// The API handler that receives an upload calls this with the bearer token it was sent;
/// the outputs land in the attempt folder.
impl OutputsUploads for KubernetesFramework {
    fn accept_outputs(
        &self,
        execution: &ExecutionId,
        token: &str,
        body: &[u8],
    ) -> Result<(), OutputsError> {
        if !token::verify(&self.shared.settings.token_key, execution, token) {
            return Err(OutputsError::Forbidden);
        }
        #[derive(serde::Deserialize)]
        struct Upload {
            files: Vec<UploadFile>,
        }
        #[derive(serde::Deserialize)]
        struct UploadFile {
            path: String,
            #[serde(default)]
            mode: Option<u32>,
            contents: String,
        }
        let upload: Upload =
            serde_json::from_slice(body).map_err(|e| OutputsError::Invalid(e.to_string()))?;
        let dir = self
            .shared
            .outputs_dir(execution)
            .map_err(OutputsError::Invalid)?;
        std::fs::create_dir_all(&dir)?;
        for file in upload.files {
            let path = check_file_path(&file.path).map_err(OutputsError::Invalid)?;
            let contents = base64::engine::general_purpose::STANDARD
                .decode(&file.contents)
                .map_err(|e| OutputsError::Invalid(format!("{}: {e}", file.path)))?;
            write_job_file(&dir, &path, file.mode.unwrap_or(0o644) & 0o777, &contents)?;
        }
        Ok(())
    }
}

impl Drop for KubernetesFramework {
    /// Watchers and followers end with the framework; the cluster's objects go on and a new
    /// instance recovers them.
    fn drop(&mut self) {
        for watcher in &self.watchers {
            watcher.abort();
        }
        for (_, mut tracked) in self.shared.tracked().drain() {
            tracked.abort();
        }
    }
}

/// One watcher over this server's objects of kind `K`, feeding `handle` (`deleted` for
/// deletions). After a re-list (the watch was cut), objects the list no longer holds are
/// handed over as deleted once a direct read confirms they are gone.
async fn watch<K>(shared: Arc<Shared>, handle: fn(&Arc<Shared>, K, bool))
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Default
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(shared.client.clone(), &shared.settings.namespace);
    let config = watcher::Config::default().labels(&managed_selector(&shared.settings));
    let stream = watcher::watcher(api.clone(), config).default_backoff();
    futures::pin_mut!(stream);
    let mut listed: Option<HashSet<String>> = None;
    let mut known: HashSet<String> = HashSet::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(object)) => {
                known.insert(object.meta().name.clone().unwrap_or_default());
                handle(&shared, object, false);
            }
            Ok(Event::Delete(object)) => {
                known.remove(object.meta().name.as_deref().unwrap_or_default());
                handle(&shared, object, true);
            }
            Ok(Event::Init) => listed = Some(HashSet::new()),
            Ok(Event::InitApply(object)) => {
                let name = object.meta().name.clone().unwrap_or_default();
                if let Some(listed) = listed.as_mut() {
                    listed.insert(name.clone());
                }
                known.insert(name);
                handle(&shared, object, false);
            }
            Ok(Event::InitDone) => {
                let listed = listed.take().unwrap_or_default();
                let vanished: Vec<String> = known.difference(&listed).cloned().collect();
                for name in vanished {
                    known.remove(&name);
                    if let Ok(None) = api.get_opt(&name).await {
                        // What a delete event would have carried: its name, labels and
                        // annotations are what the handler reads. Rebuilt from the name.
                        if let Some(object) = shared.ghost::<K>(&name) {
                            handle(&shared, object, true);
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("kubernetes watch: {e}"),
        }
    }
}

impl Shared {
    fn tracked(&self) -> MutexGuard<'_, HashMap<ExecutionId, Tracked>> {
        self.tracked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an event; watcher handlers cannot wait for room in the channel.
    fn emit(&self, execution: &ExecutionId, kind: EventKind) {
        self.events.push(FrameworkEvent {
            execution: execution.clone(),
            kind,
        });
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    fn outputs_dir(&self, execution: &ExecutionId) -> Result<PathBuf, String> {
        Ok(attempt_dir(&self.settings.runs_dir, execution)?.join("outputs"))
    }

    /// An object of kind `K` standing for a tracked execution's vanished one (named `name`):
    /// enough metadata for the handlers.
    fn ghost<K: Resource + Default>(&self, name: &str) -> Option<K> {
        let tracked = self.tracked();
        // A Job's or Deployment's name, or one of a service's pods.
        let (execution, _) = tracked
            .iter()
            .find(|(_, t)| t.name == name || t.pods.contains_key(name))?;
        let mut object = K::default();
        let meta = object.meta_mut();
        meta.name = Some(name.to_string());
        meta.annotations = Some(BTreeMap::from([(
            manifests::ANNOTATION_RUN_ID.to_string(),
            execution.run_id.clone(),
        )]));
        meta.labels = Some(BTreeMap::from([(
            manifests::LABEL_ATTEMPT.to_string(),
            execution.attempt.to_string(),
        )]));
        Some(object)
    }

    fn open_sink(
        &self,
        execution: &ExecutionId,
        redact: &[String],
        log_limit: u64,
        recovered: bool,
    ) -> Result<SharedSink, String> {
        let logs = FileLogStore::new(self.settings.logs_dir.clone());
        let copied = if recovered {
            CopiedLog::read(&logs, &execution.run_id, execution.attempt)
        } else {
            None
        };
        let writer = logs
            .open_writer(&execution.run_id, execution.attempt)
            .map_err(|e| format!("cannot open the log: {e}"))?;
        SharedSink::new(LogSink::new(
            execution.clone(),
            self.events.clone(),
            writer,
            redact,
            log_limit,
            copied,
        ))
        .map_err(|e| format!("cannot start the log writer: {e}"))
    }

    // ----- watch events -------------------------------------------------------------------

    fn on_job(self: &Arc<Self>, job: K8sJob, deleted: bool) {
        let Some(execution) = execution_of(&job.metadata) else {
            return;
        };
        let mut tracked = self.tracked();
        let Some(entry) = tracked.get_mut(&execution) else {
            return;
        };
        if entry.ended || matches!(entry.what, What::Service { .. }) {
            return;
        }
        if deleted {
            if entry.stopping {
                let outcome = stopped_outcome(entry.terminated.as_ref());
                drop(tracked);
                // Stopped before it ran: no `Started` for it.
                self.finish(&execution, Ending::Exited(outcome), false);
            } else {
                drop(tracked);
                self.finish(
                    &execution,
                    Ending::Lost("its Job was deleted outside runplane".to_string()),
                    false,
                );
            }
            return;
        }
        match status::job_end(&job) {
            JobEnd::Running => {}
            JobEnd::Succeeded => {
                drop(tracked);
                self.finish(&execution, Ending::JobEnded(None), true);
            }
            JobEnd::Failed {
                reason: why,
                message,
            } => {
                let failure = (why == "DeadlineExceeded").then(|| Failure {
                    reason: reason::TIMEOUT.to_string(),
                    message: format!("the Job went past its activeDeadlineSeconds: {message}"),
                });
                let failure = failure.or_else(|| {
                    Some(Failure {
                        reason: String::new(),
                        message: format!("the Job failed ({why}): {message}"),
                    })
                });
                drop(tracked);
                self.finish(&execution, Ending::JobEnded(failure), true);
            }
        }
    }

    fn on_pod(self: &Arc<Self>, pod: Pod, deleted: bool) {
        let Some(execution) = execution_of(&pod.metadata) else {
            return;
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        let mut tracked = self.tracked();
        let Some(entry) = tracked.get_mut(&execution) else {
            return;
        };
        if entry.ended {
            return;
        }
        if let Some(failure) = (!deleted && !entry.stopping)
            .then(|| status::start_failure(&pod))
            .flatten()
        {
            tracing::info!(?execution, "{}", failure.message);
            entry.ended = true;
            let what = entry.what.clone();
            drop(tracked);
            self.fail(&execution, &what, failure);
            return;
        }
        let mut newly_started = false;
        if !deleted && status::main_started(&pod) {
            if !entry.followers.contains_key(&name) {
                if let Some(sink) = entry.sink.clone() {
                    let follower = tokio::spawn(follow_pod(
                        self.api::<Pod>(),
                        name.clone(),
                        sink,
                        status::restarts(&pod),
                    ));
                    entry.followers.insert(name.clone(), follower);
                }
            }
            if let Some(terminated) = status::terminated(&pod) {
                entry.terminated = Some(terminated);
            }
            if !entry.started && !matches!(entry.what, What::Service { .. }) {
                entry.started = true;
                newly_started = true;
            }
        }
        if let What::Service { desired, port } = entry.what.clone() {
            if deleted {
                entry.pods.remove(&name);
            } else {
                entry.pods.insert(name, pod);
            }
            let pods: Vec<Pod> = entry.pods.values().cloned().collect();
            let replicas = status::replicas(&pods, port);
            let changed = replicas != entry.replicas;
            entry.replicas = replicas.clone();
            let ready = replicas.iter().filter(|r| r.ready).count();
            let became_ready = !entry.started && ready >= desired as usize && desired > 0;
            if became_ready {
                entry.started = true;
                if let Some(timer) = entry.timer.take() {
                    timer.abort();
                }
            }
            drop(tracked);
            if changed {
                self.emit(&execution, EventKind::Replicas(replicas));
            }
            if became_ready {
                self.emit(&execution, EventKind::Started);
            }
            return;
        }
        drop(tracked);
        if newly_started {
            self.emit(&execution, EventKind::Started);
        }
    }

    fn on_deployment(self: &Arc<Self>, deployment: Deployment, deleted: bool) {
        if !deleted {
            return;
        }
        let Some(execution) = execution_of(&deployment.metadata) else {
            return;
        };
        let mut tracked = self.tracked();
        let Some(entry) = tracked.get_mut(&execution) else {
            return;
        };
        if entry.ended || !matches!(entry.what, What::Service { .. }) {
            return;
        }
        let stopping = entry.stopping;
        drop(tracked);
        if stopping {
            self.finish(&execution, Ending::Exited(ExitOutcome::default()), false);
        } else {
            self.finish(
                &execution,
                Ending::Lost("its Deployment was deleted outside runplane".to_string()),
                false,
            );
        }
    }

    // ----- ends ---------------------------------------------------------------------------

    /// Ends an execution the framework gave up on: its objects are deleted (in the
    /// background), then `Exited` with `failure`.
    fn fail(self: &Arc<Self>, execution: &ExecutionId, what: &What, failure: Failure) {
        let shared = self.clone();
        let gone = execution.clone();
        let what = what.clone();
        tokio::spawn(async move {
            shared.delete_workload(&gone, &what).await;
        });
        let outcome = ExitOutcome {
            failure: Some(failure),
            ..Default::default()
        };
        let ending = Ending::Exited(outcome);
        self.finish_now(ending, &self.force_end(execution));
    }

    fn force_end(&self, execution: &ExecutionId) -> Option<Ended> {
        let mut tracked = self.tracked();
        let entry = tracked.get_mut(execution)?;
        entry.ended = true;
        if let Some(timer) = entry.timer.take() {
            timer.abort();
        }
        Some(Ended {
            execution: execution.clone(),
            what: entry.what.clone(),
            followers: entry.followers.drain().collect(),
            sink: entry.sink.take(),
            terminated: entry.terminated.clone(),
            started: entry.started,
            had_replicas: !entry.replicas.is_empty(),
            grace: entry.stop_grace,
        })
    }

    fn finish_now(self: &Arc<Self>, ending: Ending, ended: &Option<Ended>) {
        let Some(ended) = ended else {
            return;
        };
        // Followers of a failed start have nothing to wait for.
        for (_, follower) in &ended.followers {
            follower.abort();
        }
        let Some(sink) = ended.sink.clone() else {
            if ended.had_replicas {
                self.emit(&ended.execution, EventKind::Replicas(Vec::new()));
            }
            self.emit(&ended.execution, ending.into_kind());
            return;
        };
        // The log's end goes out before the ending.
        let shared = self.clone();
        let (execution, had_replicas) = (ended.execution.clone(), ended.had_replicas);
        tokio::spawn(async move {
            sink.flushed().await;
            if had_replicas {
                shared.emit(&execution, EventKind::Replicas(Vec::new()));
            }
            shared.emit(&execution, ending.into_kind());
        });
    }

    /// Ends a tracked execution once: its log followers are given time to read the end of
    /// the log, then the outcome is worked out and reported. `ran`: the main container got
    /// to run (`Started` is sent first if it was not).
    fn finish(self: &Arc<Self>, execution: &ExecutionId, ending: Ending, ran: bool) {
        let Some(ended) = self.force_end(execution) else {
            return;
        };
        let shared = self.clone();
        tokio::spawn(async move {
            let patience = Duration::from_secs(ended.grace.saturating_add(10));
            for (_, follower) in ended.followers {
                let abort = follower.abort_handle();
                if tokio::time::timeout(patience, follower).await.is_err() {
                    abort.abort();
                }
            }
            if let Some(sink) = &ended.sink {
                sink.flushed().await;
            }
            drop(ended.sink);
            let kind = match ending {
                Ending::JobEnded(failure) => {
                    let terminated = match ended.terminated {
                        Some(terminated) => Some(terminated),
                        None => shared.find_terminated(&ended.execution).await,
                    };
                    EventKind::Exited(
                        shared
                            .job_outcome(&ended.execution, &ended.what, terminated, failure)
                            .await,
                    )
                }
                other => other.into_kind(),
            };
            let is_exit = matches!(kind, EventKind::Exited(_));
            if ran && is_exit && !ended.started {
                shared.emit(&ended.execution, EventKind::Started);
            }
            if ended.had_replicas {
                shared.emit(&ended.execution, EventKind::Replicas(Vec::new()));
            }
            shared.emit(&ended.execution, kind);
        });
    }

    /// The main container's end, read from the execution's pods when the watch did not
    /// bring it before the Job's end.
    async fn find_terminated(&self, execution: &ExecutionId) -> Option<Terminated> {
        let pods: Api<Pod> = self.api();
        let params = ListParams::default().labels(&pod_selector(&self.settings, execution));
        let list = retry(self.settings.retry_delay, "list pods", || {
            pods.list(&params)
        })
        .await
        .ok()?;
        list.items.iter().find_map(status::terminated)
    }

    async fn job_outcome(
        &self,
        execution: &ExecutionId,
        what: &What,
        terminated: Option<Terminated>,
        job_failure: Option<Failure>,
    ) -> ExitOutcome {
        let outputs_dir = self.outputs_dir(execution).ok();
        let mut outcome = ExitOutcome {
            exit_code: terminated.as_ref().and_then(|t| t.exit_code),
            signal: terminated.as_ref().and_then(|t| t.signal),
            failure: terminated.as_ref().and_then(Terminated::failure),
            ..Default::default()
        };
        if let Some(terminated) = &terminated {
            if terminated
                .message
                .starts_with("runplane: outputs not uploaded")
            {
                tracing::warn!(?execution, "{}", terminated.message.trim());
            }
        }
        match (&job_failure, terminated.is_some()) {
            // The Job's own verdict decides when it is runplane's to tell (a timeout), or
            // when there is no container end to read an exit code from.
            (Some(failure), _) if !failure.reason.is_empty() => {
                outcome.failure = Some(failure.clone())
            }
            (Some(failure), false) => {
                outcome.failure = Some(Failure {
                    reason: reason::FAILED.to_string(),
                    message: failure.message.clone(),
                })
            }
            (None, false) => outcome.exit_code = Some(0),
            _ => {}
        }
        if let What::Build { destination } = what {
            let succeeded = job_failure.is_none() && outcome.exit_code == Some(0);
            if succeeded {
                let digest = terminated
                    .as_ref()
                    .map(|t| t.message.trim().to_string())
                    .filter(|d| d.starts_with("sha256:"));
                if let (Some(dir), Some(digest)) = (&outputs_dir, digest) {
                    let repository = repository_of(destination);
                    let built = BuiltImage {
                        image: destination.clone(),
                        id: digest.clone(),
                        digest: Some(format!("{repository}@{digest}")),
                    };
                    if let Ok(json) = serde_json::to_vec(&built) {
                        let _ = std::fs::create_dir_all(dir);
                        let _ = std::fs::write(dir.join(BUILD_OUTPUT), json);
                    }
                }
            } else if outcome.failure.is_none() {
                outcome.failure = Some(Failure {
                    reason: reason::BUILD_FAILED.to_string(),
                    message: "the image build failed; see its log".to_string(),
                });
                outcome.exit_code = outcome.exit_code.or(Some(1));
            }
        }
        if let Some(dir) = outputs_dir.filter(|dir| dir.is_dir()) {
            outcome.outputs = collect_outputs(&dir);
            outcome.outputs_dir = Some(dir);
        }
        outcome
    }

    /// Deletes an execution's Job or Deployment (+ Service): pods in the background.
    async fn delete_workload(&self, execution: &ExecutionId, what: &What) {
        let name = object_name(execution);
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        let result = match what {
            What::Service { .. } => {
                let _ = self.delete::<K8sService>(&name, &params).await;
                self.delete::<Deployment>(&name, &params).await
            }
            _ => self.delete::<K8sJob>(&name, &params).await,
        };
        if let Err(e) = result {
            tracing::warn!(?execution, "{e}");
        }
    }

    /// Deletes one object; gone already is fine.
    async fn delete<K>(&self, name: &str, params: &DeleteParams) -> Result<(), String>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = self.api();
        let what = format!("delete {} {name}", K::kind(&Default::default()));
        match retry(self.settings.retry_delay, &what, || {
            api.delete(name, params)
        })
        .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(describe(&self.settings.namespace, &what, &e)),
        }
    }

    /// Creates `object`; one left by an earlier failed start of the same attempt (a
    /// ConfigMap, a Secret) is replaced.
    async fn create<K>(&self, object: &K) -> Result<K, String>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + serde::Serialize
            + Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = self.api();
        let kind = K::kind(&Default::default()).to_string();
        let name = object.meta().name.clone().unwrap_or_default();
        let what = format!("create {kind} {name}");
        let post = PostParams::default();
        match retry(self.settings.retry_delay, &what, || {
            api.create(&post, object)
        })
        .await
        {
            Ok(created) => Ok(created),
            Err(e) if is_conflict(&e) && kind != "Job" && kind != "Deployment" => {
                self.delete::<K>(&name, &DeleteParams::default()).await?;
                retry(self.settings.retry_delay, &what, || {
                    api.create(&post, object)
                })
                .await
                .map_err(|e| describe(&self.settings.namespace, &what, &e))
            }
            Err(e) => Err(describe(&self.settings.namespace, &what, &e)),
        }
    }

    /// Makes the ConfigMap and Secret of an execution owned by its Job or Deployment, so
    /// that the garbage collector removes them with it. Best effort: cleanup deletes them
    /// by name anyway.
    async fn adopt(
        &self,
        owner_kind: &str,
        api_version: &str,
        name: &str,
        uid: &str,
        secret: bool,
        config_map: bool,
    ) {
        let patch = serde_json::json!({
            "metadata": { "ownerReferences": [owner_reference(owner_kind, api_version, name, uid)] }
        });
        let params = PatchParams::default();
        let patch = Patch::Merge(&patch);
        if config_map {
            let api: Api<ConfigMap> = self.api();
            if let Err(e) = retry(self.settings.retry_delay, "patch ConfigMap", || {
                api.patch(name, &params, &patch)
            })
            .await
            {
                tracing::warn!(%name, "cannot set the ConfigMap's owner: {e}");
            }
        }
        if secret {
            let api: Api<Secret> = self.api();
            if let Err(e) = retry(self.settings.retry_delay, "patch Secret", || {
                api.patch(name, &params, &patch)
            })
            .await
            {
                tracing::warn!(%name, "cannot set the Secret's owner: {e}");
            }
        }
    }

    /// Deletes every object of an execution (ConfigMap and Secret too).
    async fn delete_all(&self, execution: &ExecutionId) -> Result<(), String> {
        let name = object_name(execution);
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        self.delete::<K8sJob>(&name, &params).await?;
        self.delete::<Deployment>(&name, &params).await?;
        self.delete::<K8sService>(&name, &params).await?;
        self.delete::<ConfigMap>(&name, &params).await?;
        self.delete::<Secret>(&name, &params).await?;
        Ok(())
    }

    fn track(&self, execution: &ExecutionId, tracked: Tracked) -> Result<(), String> {
        let mut all = self.tracked();
        if all.contains_key(execution) {
            return Err("this attempt was already started".to_string());
        }
        all.insert(execution.clone(), tracked);
        Ok(())
    }

    fn untrack(&self, execution: &ExecutionId) {
        if let Some(mut tracked) = self.tracked().remove(execution) {
            tracked.abort();
        }
    }

    // ----- start --------------------------------------------------------------------------

    async fn start_job(
        self: &Arc<Self>,
        execution: &ExecutionId,
        job: &runplane_domain::Job,
    ) -> Result<(), String> {
        let token = self
            .settings
            .outputs_url
            .as_ref()
            .map(|_| token::run_token(&self.settings.token_key, execution));
        let objects = manifests::job_objects(&self.settings, execution, job, token.as_deref())
            .map_err(|e| e.to_string())?;
        let sink = self.open_sink(
            execution,
            &job.redact,
            job.log_limit_bytes.unwrap_or(DEFAULT_LOG_LIMIT_BYTES),
            false,
        )?;
        let name = object_name(execution);
        self.track(
            execution,
            Tracked::new(What::Job, name.clone(), job.stop_grace_seconds, Some(sink)),
        )?;
        let created = self
            .create_parts(
                execution,
                objects.config_map.as_ref(),
                objects.secret.as_ref(),
                &objects.job,
            )
            .await;
        match created {
            Ok(uid) => {
                self.adopt(
                    "Job",
                    "batch/v1",
                    &name,
                    &uid,
                    objects.secret.is_some(),
                    objects.config_map.is_some(),
                )
                .await;
                Ok(())
            }
            Err(why) => {
                self.untrack(execution);
                Err(why)
            }
        }
    }

    /// Creates the ConfigMap, the Secret and then the Job (the Job last: its pod needs
    /// both); on a failure, removes what was made. The Job's uid.
    async fn create_parts(
        &self,
        execution: &ExecutionId,
        config_map: Option<&ConfigMap>,
        secret: Option<&Secret>,
        job: &K8sJob,
    ) -> Result<String, String> {
        let undo = |why: String| async move {
            let _ = self.delete_all(execution).await;
            why
        };
        let jobs: Api<K8sJob> = self.api();
        let name = object_name(execution);
        match retry(self.settings.retry_delay, "read Job", || {
            jobs.get_opt(&name)
        })
        .await
        {
            Ok(Some(_)) => return Err("a Job of this attempt already exists".to_string()),
            Ok(None) => {}
            Err(e) => {
                return Err(describe(
                    &self.settings.namespace,
                    &format!("read Job {name}"),
                    &e,
                ))
            }
        }
        if let Some(config_map) = config_map {
            if let Err(why) = self.create(config_map).await {
                return Err(undo(why).await);
            }
        }
        if let Some(secret) = secret {
            if let Err(why) = self.create(secret).await {
                return Err(undo(why).await);
            }
        }
        match self.create(job).await {
            Ok(created) => Ok(created.metadata.uid.unwrap_or_default()),
            Err(why) => Err(undo(why).await),
        }
    }

    async fn start_build(
        self: &Arc<Self>,
        execution: &ExecutionId,
        build: &runplane_domain::Build,
    ) -> Result<(), String> {
        let objects = manifests::build_objects(&self.settings, execution, build)
            .map_err(|e| e.to_string())?;
        let sink = self.open_sink(
            execution,
            &[],
            build.log_limit_bytes.unwrap_or(DEFAULT_LOG_LIMIT_BYTES),
            false,
        )?;
        let name = object_name(execution);
        self.track(
            execution,
            Tracked::new(
                What::Build {
                    destination: objects.destination.clone(),
                },
                name.clone(),
                10,
                Some(sink),
            ),
        )?;
        match self
            .create_parts(execution, Some(&objects.config_map), None, &objects.job)
            .await
        {
            Ok(uid) => {
                self.adopt("Job", "batch/v1", &name, &uid, false, true)
                    .await;
                Ok(())
            }
            Err(why) => {
                self.untrack(execution);
                Err(why)
            }
        }
    }

    async fn start_service(
        self: &Arc<Self>,
        execution: &ExecutionId,
        service: &runplane_domain::Service,
    ) -> Result<(), String> {
        let objects = manifests::service_objects(&self.settings, execution, service, None)
            .map_err(|e| e.to_string())?;
        let sink = self.open_sink(
            execution,
            &service.replica.redact,
            service
                .replica
                .log_limit_bytes
                .unwrap_or(DEFAULT_LOG_LIMIT_BYTES),
            false,
        )?;
        let name = object_name(execution);
        let port = service
            .http
            .then(|| service.port.unwrap_or(manifests::DEFAULT_SERVICE_PORT));
        let mut tracked = Tracked::new(
            What::Service {
                desired: service.replicas,
                port,
            },
            name.clone(),
            service.replica.stop_grace_seconds,
            Some(sink),
        );
        tracked.timer = Some(self.ready_timer(execution, service.ready_timeout_seconds));
        self.track(execution, tracked)?;
        let undo = |why: String| async move {
            let _ = self.delete_all(execution).await;
            self.untrack(execution);
            why
        };
        let deployments: Api<Deployment> = self.api();
        match retry(self.settings.retry_delay, "read Deployment", || {
            deployments.get_opt(&name)
        })
        .await
        {
            Ok(Some(_)) => {
                self.untrack(execution);
                return Err("a Deployment of this attempt already exists".to_string());
            }
            Ok(None) => {}
            Err(e) => {
                self.untrack(execution);
                return Err(describe(
                    &self.settings.namespace,
                    &format!("read Deployment {name}"),
                    &e,
                ));
            }
        }
        if let Some(config_map) = &objects.config_map {
            if let Err(why) = self.create(config_map).await {
                return Err(undo(why).await);
            }
        }
        if let Some(secret) = &objects.secret {
            if let Err(why) = self.create(secret).await {
                return Err(undo(why).await);
            }
        }
        let uid = match self.create(&objects.deployment).await {
            Ok(created) => created.metadata.uid.unwrap_or_default(),
            Err(why) => return Err(undo(why).await),
        };
        if let Some(k8s_service) = &objects.service {
            if let Err(why) = self.create(k8s_service).await {
                return Err(undo(why).await);
            }
        }
        self.adopt(
            "Deployment",
            "apps/v1",
            &name,
            &uid,
            objects.secret.is_some(),
            objects.config_map.is_some(),
        )
        .await;
        Ok(())
    }

    /// Fails a service whose replicas were not all ready `seconds` after it started.
    fn ready_timer(self: &Arc<Self>, execution: &ExecutionId, seconds: u64) -> AbortHandle {
        let shared = Arc::downgrade(self);
        let execution = execution.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let what = {
                let tracked = shared.tracked();
                match tracked.get(&execution) {
                    Some(t) if !t.started && !t.ended && !t.stopping => t.what.clone(),
                    _ => return,
                }
            };
            let failure = Failure {
                reason: reason::NOT_READY.to_string(),
                message: format!("not every replica was ready within {seconds} s"),
            };
            shared.fail(&execution, &what, failure);
        })
        .abort_handle()
    }

    // ----- recovery -----------------------------------------------------------------------

    async fn recover(self: &Arc<Self>, executions: Vec<ExecutionId>) -> Result<(), String> {
        let selector = managed_selector(&self.settings);
        let params = ListParams::default().labels(&selector);
        let jobs: Api<K8sJob> = self.api();
        let deployments: Api<Deployment> = self.api();
        let found_jobs = retry(self.settings.retry_delay, "list Jobs", || {
            jobs.list(&params)
        })
        .await
        .map_err(|e| describe(&self.settings.namespace, "list Jobs", &e))?;
        let found_deployments = retry(self.settings.retry_delay, "list Deployments", || {
            deployments.list(&params)
        })
        .await
        .map_err(|e| describe(&self.settings.namespace, "list Deployments", &e))?;
        let wanted: HashSet<&ExecutionId> = executions.iter().collect();
        let mut by_execution: HashMap<ExecutionId, Found> = HashMap::new();
        for job in found_jobs.items {
            if let Some(execution) = execution_of(&job.metadata) {
                by_execution.insert(execution, Found::Job(Box::new(job)));
            }
        }
        for deployment in found_deployments.items {
            if let Some(execution) = execution_of(&deployment.metadata) {
                by_execution.insert(execution, Found::Deployment(Box::new(deployment)));
            }
        }
        let stale: Vec<ExecutionId> = by_execution
            .keys()
            .filter(|e| !wanted.contains(e) && !self.tracked().contains_key(e))
            .cloned()
            .collect();
        for execution in stale {
            // Ended but never cleaned up: a crash between recording its end and cleanup.
            by_execution.remove(&execution);
            if let Err(e) = self.delete_all(&execution).await {
                tracing::warn!(?execution, "removing a stale execution: {e}");
            }
            if let Ok(dir) = attempt_dir(&self.settings.runs_dir, &execution) {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        for execution in executions {
            if self.tracked().contains_key(&execution) {
                continue;
            }
            let Some(found) = by_execution.remove(&execution) else {
                self.emit(
                    &execution,
                    EventKind::Lost {
                        message: "its Job or Deployment no longer exists in the cluster"
                            .to_string(),
                    },
                );
                continue;
            };
            if let Err(message) = self.reattach(&execution, found).await {
                self.emit(&execution, EventKind::Lost { message });
            }
        }
        Ok(())
    }

    async fn reattach(
        self: &Arc<Self>,
        execution: &ExecutionId,
        found: Found,
    ) -> Result<(), String> {
        // The secrets to redact are not kept outside the cluster: read them back from the
        // execution's Secret.
        let secrets: Api<Secret> = self.api();
        let name = object_name(execution);
        let redact: Vec<String> = match secrets.get_opt(&name).await {
            Ok(Some(secret)) => secret
                .data
                .unwrap_or_default()
                .into_iter()
                .filter(|(key, _)| key != manifests::TOKEN_ENV)
                .filter_map(|(_, value)| String::from_utf8(value.0).ok())
                .collect(),
            _ => Vec::new(),
        };
        // The job's log cap is not on the cluster's objects: the default stands in.
        let sink = self.open_sink(execution, &redact, DEFAULT_LOG_LIMIT_BYTES, true)?;
        match found {
            Found::Job(job) => {
                let kind = job
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_KIND))
                    .cloned()
                    .unwrap_or_default();
                let what = if kind == KIND_BUILD {
                    let destination = job
                        .spec
                        .as_ref()
                        .and_then(|s| s.template.spec.as_ref())
                        .and_then(|s| s.containers.first())
                        .and_then(|c| c.args.as_ref())
                        .and_then(|args| {
                            args.iter()
                                .find_map(|a| a.strip_prefix("--destination=").map(str::to_string))
                        })
                        .unwrap_or_default();
                    What::Build { destination }
                } else {
                    What::Job
                };
                let grace = job
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.spec.as_ref())
                    .and_then(|s| s.termination_grace_period_seconds)
                    .and_then(|g| u64::try_from(g).ok())
                    .unwrap_or(30);
                self.track(execution, Tracked::new(what, name, grace, Some(sink)))?;
                self.replay_pods(execution).await;
                self.on_job(*job, false);
            }
            Found::Deployment(deployment) => {
                let spec = deployment.spec.clone().unwrap_or_default();
                let desired = u32::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
                let pod_spec = spec.template.spec.unwrap_or_default();
                let main = pod_spec.containers.first();
                let port = main
                    .and_then(|c| c.ports.as_ref())
                    .and_then(|ports| ports.first())
                    .and_then(|p| u16::try_from(p.container_port).ok());
                let grace = pod_spec
                    .termination_grace_period_seconds
                    .and_then(|g| u64::try_from(g).ok())
                    .unwrap_or(30);
                let mut tracked =
                    Tracked::new(What::Service { desired, port }, name, grace, Some(sink));
                // Its first start is behind it: a service that ran before the restart is not
                // held to its ready timeout again.
                tracked.started = true;
                self.track(execution, tracked)?;
                self.replay_pods(execution).await;
                let replicas = self
                    .tracked()
                    .get(execution)
                    .map(|t| t.replicas.clone())
                    .unwrap_or_default();
                self.emit(execution, EventKind::Started);
                self.emit(execution, EventKind::Replicas(replicas));
            }
        }
        Ok(())
    }

    /// Hands the execution's current pods to `on_pod`, as the watch would have.
    async fn replay_pods(self: &Arc<Self>, execution: &ExecutionId) {
        let pods: Api<Pod> = self.api();
        let params = ListParams::default().labels(&pod_selector(&self.settings, execution));
        match retry(self.settings.retry_delay, "list pods", || {
            pods.list(&params)
        })
        .await
        {
            Ok(list) => {
                for pod in list.items {
                    self.on_pod(pod, false);
                }
            }
            Err(e) => tracing::warn!(?execution, "cannot list the pods of a recovered run: {e}"),
        }
    }
}

enum Found {
    Job(Box<K8sJob>),
    Deployment(Box<Deployment>),
}

/// What `finish` hands on once the followers are done.
struct Ended {
    execution: ExecutionId,
    what: What,
    followers: Vec<(String, JoinHandle<()>)>,
    sink: Option<SharedSink>,
    terminated: Option<Terminated>,
    started: bool,
    had_replicas: bool,
    grace: u64,
}

enum Ending {
    /// The Job reached Complete or Failed (its condition's failure, if any).
    JobEnded(Option<Failure>),
    Exited(ExitOutcome),
    Lost(String),
}

impl Ending {
    fn into_kind(self) -> EventKind {
        match self {
            Ending::JobEnded(failure) => EventKind::Exited(ExitOutcome {
                failure,
                ..Default::default()
            }),
            Ending::Exited(outcome) => EventKind::Exited(outcome),
            Ending::Lost(message) => EventKind::Lost { message },
        }
    }
}

/// A stopped job: its exit when the container's end was seen, SIGTERM otherwise.
fn stopped_outcome(terminated: Option<&Terminated>) -> ExitOutcome {
    match terminated {
        Some(t) => ExitOutcome {
            exit_code: t.exit_code,
            signal: t.signal,
            ..Default::default()
        },
        None => ExitOutcome {
            signal: Some(15),
            ..Default::default()
        },
    }
}

/// `registry/repo:tag` → `registry/repo` (a port's colon is not a tag's).
fn repository_of(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(colon) if !image[colon..].contains('/') => &image[..colon],
        _ => image,
    }
}

fn busy(execution: &ExecutionId) -> FrameworkError {
    FrameworkError::Io(std::io::Error::new(
        std::io::ErrorKind::ResourceBusy,
        format!(
            "execution {}/{} is still running; stop it first",
            execution.run_id, execution.attempt
        ),
    ))
}

#[async_trait]
impl Framework for KubernetesFramework {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn runs_containers(&self) -> bool {
        true
    }

    async fn start(
        &self,
        execution: ExecutionId,
        runnable: Runnable,
    ) -> Result<(), FrameworkError> {
        let shared = &self.shared;
        let started = match attempt_dir(&shared.settings.runs_dir, &execution) {
            Err(message) => Err(message),
            Ok(_) => match &runnable {
                Runnable::Job(job) => shared.start_job(&execution, job).await,
                Runnable::Service(service) => shared.start_service(&execution, service).await,
                Runnable::Build(build) => shared.start_build(&execution, build).await,
            },
        };
        started.map_err(|message| {
            tracing::info!(?execution, "start failed: {message}");
            FrameworkError::StartFailed { execution, message }
        })
    }

    async fn recover(&self, executions: Vec<ExecutionId>) -> Result<(), FrameworkError> {
        self.shared
            .recover(executions)
            .await
            .map_err(|message| FrameworkError::Io(std::io::Error::other(message)))
    }

    async fn stop(&self, execution: &ExecutionId) -> Result<(), FrameworkError> {
        let what = {
            let mut tracked = self.shared.tracked();
            let Some(entry) = tracked.get_mut(execution) else {
                return Err(FrameworkError::UnknownExecution(execution.clone()));
            };
            if entry.ended {
                return Ok(());
            }
            entry.stopping = true;
            if let Some(timer) = entry.timer.take() {
                timer.abort();
            }
            entry.what.clone()
        };
        let name = object_name(execution);
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        let result = match &what {
            What::Service { .. } => {
                let _ = self.shared.delete::<K8sService>(&name, &params).await;
                self.shared.delete::<Deployment>(&name, &params).await
            }
            _ => self.shared.delete::<K8sJob>(&name, &params).await,
        };
        result.map_err(|message| FrameworkError::Io(std::io::Error::other(message)))
    }

    async fn scale(&self, execution: &ExecutionId, replicas: u32) -> Result<(), FrameworkError> {
        {
            let mut tracked = self.shared.tracked();
            match tracked.get_mut(execution) {
                Some(Tracked {
                    what: What::Service { desired, .. },
                    ..
                }) => *desired = replicas,
                _ => return Err(FrameworkError::NotAService(execution.clone())),
            }
        }
        let deployments: Api<Deployment> = self.shared.api();
        let name = object_name(execution);
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        let params = PatchParams::default();
        let patch = Patch::Merge(&patch);
        retry(self.shared.settings.retry_delay, "scale Deployment", || {
            deployments.patch(&name, &params, &patch)
        })
        .await
        .map(|_| ())
        .map_err(|e| {
            FrameworkError::Io(std::io::Error::other(describe(
                &self.shared.settings.namespace,
                &format!("scale Deployment {name}"),
                &e,
            )))
        })
    }

    async fn cleanup(&self, execution: &ExecutionId) -> Result<(), FrameworkError> {
        let running_job = self
            .shared
            .tracked()
            .get(execution)
            .is_some_and(|t| !t.ended && !matches!(t.what, What::Service { .. }));
        if running_job {
            return Err(busy(execution));
        }
        self.shared.untrack(execution);
        self.shared
            .delete_all(execution)
            .await
            .map_err(|message| FrameworkError::Io(std::io::Error::other(message)))?;
        let dir = attempt_dir(&self.shared.settings.runs_dir, execution).map_err(|message| {
            FrameworkError::StartFailed {
                execution: execution.clone(),
                message,
            }
        })?;
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_drop_the_tag_only() {
        assert_eq!(repository_of("reg:5000/team/app:v1"), "reg:5000/team/app");
        assert_eq!(repository_of("reg:5000/team/app"), "reg:5000/team/app");
        assert_eq!(repository_of("app:v1"), "app");
        assert_eq!(repository_of("app@sha256:abc"), "app");
    }
}
