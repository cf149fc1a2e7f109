//! The `engine` framework: each job attempt is one container on a Docker-API engine (Podman's
//! Docker-compatible socket, or Docker), driven through `bollard`.
//!
//! The attempt folder `<runs_dir>/<run id>/<attempt>` holds `work/` (the job's files, mounted
//! as the working directory) and `outputs/` (mounted at `RUNPLANE_OUTPUTS`, collected when the
//! container exits). The container's labels (`runplane.run`, `runplane.attempt`,
//! `runplane.home`) are what a restarted server finds it by; nothing else is stored for a job.
//!
//! A service attempt is one container per replica (label `runplane.replica`), all mounting the
//! same attempt folder, which also keeps `service.json` (its spec and desired count) for a
//! restarted server (`service.rs`).
//!
//! On `recover`, containers are listed by label: a running one is followed again (records up to
//! the last stored one skipped, `copied.rs`), an exited one reports its exit code, a missing one
//! is lost; containers of attempts not handed over are removed.

mod build;
mod container;
mod follow;
mod oom;
mod probe;
mod program;
mod replica;
mod service;
mod service_log;

pub use container::{
    DEFAULT_SERVICE_PORT, LABEL_ATTEMPT, LABEL_HOME, LABEL_REPLICA, LABEL_RUN, OUTPUTS_MOUNT,
    WORK_MOUNT,
};

use crate::attempt::attempt_dir;
use crate::log_records::Redactor;
use crate::{EventKind, EventSender, ExecutionId, Framework, FrameworkError, FrameworkEvent};
use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use follow::Follow;
use runplane_domain::runnable::DEFAULT_LOG_LIMIT_BYTES;
use runplane_domain::{Job, Runnable};
use runplane_logstore::file::FileLogStore;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::task::AbortHandle;

/// Where the engine's socket is looked for when nothing says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/runplane-podman.sock";

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The engine's Docker-API unix socket.
    pub socket: PathBuf,
    /// Attempt folders (`<runs_dir>/<run id>/<attempt>/{work,outputs}`).
    pub runs_dir: PathBuf,
    /// The log store's root (the same as the server's).
    pub logs_dir: PathBuf,
    /// The image of jobs that name none.
    pub default_image: String,
}

pub struct EngineFramework {
    docker: Docker,
    options: EngineOptions,
    /// The `runplane.home` label: this server's runs folder, absolute.
    home: String,
    events: EventSender,
    followed: Arc<Mutex<HashMap<ExecutionId, Followed>>>,
    builds: build::Builds,
    /// Service executions, each kept by a task of its own (`service.rs`).
    services: Arc<Mutex<HashMap<ExecutionId, service::ServiceHandle>>>,
}

struct Followed {
    container: String,
    /// `None` when recovered: the container's own stop timeout (the job's grace) applies.
    grace: Option<u64>,
    task: AbortHandle,
}

impl EngineFramework {
    /// Connects to the engine and agrees on an API version (Podman speaks an older one than
    /// bollard's default).
    pub async fn connect(
        options: EngineOptions,
        events: EventSender,
    ) -> Result<Self, FrameworkError> {
        let socket = options.socket.to_string_lossy().into_owned();
        let docker = Docker::connect_with_unix(&socket, 120, bollard::API_DEFAULT_VERSION)
            .map_err(|e| engine_error(&format!("cannot connect to the engine at {socket}"), e))?
            .negotiate_version()
            .await
            .map_err(|e| engine_error(&format!("the engine at {socket} does not answer"), e))?;
        let runs_dir = std::path::absolute(&options.runs_dir)?;
        Ok(EngineFramework {
            docker,
            home: runs_dir.to_string_lossy().into_owned(),
            options: EngineOptions {
                runs_dir,
                ..options
            },
            events,
            followed: Arc::new(Mutex::new(HashMap::new())),
            builds: build::Builds::default(),
            services: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The `runplane.home` label value of this framework's containers.
    pub fn home(&self) -> &str {
        &self.home
    }

    fn followed(&self) -> MutexGuard<'_, HashMap<ExecutionId, Followed>> {
        self.followed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn services(&self) -> MutexGuard<'_, HashMap<ExecutionId, service::ServiceHandle>> {
        self.services.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn attempt_dir(&self, execution: &ExecutionId) -> Result<PathBuf, FrameworkError> {
        attempt_dir(&self.options.runs_dir, execution).map_err(|message| {
            FrameworkError::StartFailed {
                execution: execution.clone(),
                message,
            }
        })
    }

    /// This home's containers, all states, with the execution each belongs to.
    async fn containers(
        &self,
        execution: Option<&ExecutionId>,
    ) -> Result<Vec<(String, ExecutionId, bool)>, DockerError> {
        let mut filters = vec![format!("{LABEL_HOME}={}", self.home)];
        if let Some(execution) = execution {
            filters.push(format!("{LABEL_RUN}={}", execution.run_id));
            filters.push(format!("{LABEL_ATTEMPT}={}", execution.attempt));
        }
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), filters)])),
            ..Default::default()
        };
        let found = self.docker.list_containers(Some(options)).await?;
        Ok(found
            .into_iter()
            .filter_map(|summary| {
                let execution = container::execution_of(summary.labels.as_ref()?)?;
                let running = summary.state.is_some_and(|state| {
                    state == bollard::models::ContainerSummaryStateEnum::RUNNING
                });
                Some((summary.id?, execution, running))
            })
            .collect())
    }

    async fn remove(&self, container: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(container, Some(options)).await {
            Err(e) if !is_gone(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Follows `container` from now on: its logs, its exit, its outputs.
    fn follow(
        &self,
        execution: ExecutionId,
        container: String,
        grace: Option<u64>,
        log_limit: u64,
    ) {
        let follow = Follow {
            docker: self.docker.clone(),
            events: self.events.clone(),
            execution: execution.clone(),
            container: container.clone(),
            logs: FileLogStore::new(self.options.logs_dir.clone()),
            outputs_dir: attempt_dir(&self.options.runs_dir, &execution)
                .unwrap_or_default()
                .join("outputs"),
            log_limit,
            redactor: Redactor::new(&container::redactions(
                &attempt_dir(&self.options.runs_dir, &execution).unwrap_or_default(),
            )),
        };
        let mut followed = self.followed();
        let task = tokio::spawn(follow.run()).abort_handle();
        followed.insert(
            execution,
            Followed {
                container,
                grace,
                task,
            },
        );
    }

    async fn start_job(&self, execution: &ExecutionId, job: &Job) -> Result<(), String> {
        if job.command.is_empty() {
            return Err("the job has an empty command".into());
        }
        let existing = self
            .containers(Some(execution))
            .await
            .map_err(|e| format!("the engine refused to list containers: {e}"))?;
        if !existing.is_empty() {
            return Err("a container of this attempt already exists".into());
        }
        let dir = attempt_dir(&self.options.runs_dir, execution)?;
        container::materialize(&dir, job)?;
        let image = job.image.as_deref().unwrap_or(&self.options.default_image);
        let body = match container::create_body(image, &self.home, execution, job, &dir) {
            Ok(body) => body,
            Err(why) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(why);
            }
        };
        let created = match self
            .docker
            .create_container(None::<CreateContainerOptions>, body)
            .await
        {
            Ok(created) => created,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!(
                    "cannot create a container from image {image}: {}",
                    message(&e)
                ));
            }
        };
        if let Err(why) = program::check(&self.docker, &created.id, &job.command[0]).await {
            let _ = self.remove(&created.id).await;
            let _ = std::fs::remove_dir_all(&dir);
            return Err(why);
        }
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = self.remove(&created.id).await;
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!("cannot start the container: {}", message(&e)));
        }
        self.emit(execution, EventKind::Started).await;
        self.follow(
            execution.clone(),
            created.id,
            Some(job.stop_grace_seconds),
            job.log_limit_bytes.unwrap_or(DEFAULT_LOG_LIMIT_BYTES),
        );
        Ok(())
    }

    async fn emit(&self, execution: &ExecutionId, kind: EventKind) {
        let _ = self
            .events
            .send(FrameworkEvent {
                execution: execution.clone(),
                kind,
            })
            .await;
    }
}

impl Drop for EngineFramework {
    /// Followers end with the framework (their containers go on; a new instance recovers
    /// them).
    fn drop(&mut self) {
        for (_, followed) in self.followed().drain() {
            followed.task.abort();
        }
        self.builds.abort_all();
        for (_, service) in self.services().drain() {
            service.abort();
        }
    }
}

#[async_trait]
impl Framework for EngineFramework {
    fn name(&self) -> &'static str {
        "engine"
    }

    fn runs_containers(&self) -> bool {
        true
    }

    async fn start(
        &self,
        execution: ExecutionId,
        runnable: Runnable,
    ) -> Result<(), FrameworkError> {
        self.attempt_dir(&execution)?;
        let started = match &runnable {
            Runnable::Job(job) => self.start_job(&execution, job).await,
            Runnable::Service(service) => self.start_service(&execution, service).await,
            Runnable::Build(build) => self.start_build(&execution, build).await,
        };
        started.map_err(|message| FrameworkError::StartFailed { execution, message })
    }

    async fn recover(&self, executions: Vec<ExecutionId>) -> Result<(), FrameworkError> {
        let found = self
            .containers(None)
            .await
            .map_err(|e| engine_error("cannot list the engine's containers", e))?;
        let wanted: HashSet<&ExecutionId> = executions.iter().collect();
        let mut by_execution: HashMap<ExecutionId, (String, bool)> = HashMap::new();
        for (id, execution, running) in found {
            if wanted.contains(&execution) {
                by_execution.insert(execution, (id, running));
            } else if !self.followed().contains_key(&execution)
                && !self.services().contains_key(&execution)
            {
                // Ended but never cleaned up: a crash between recording its end and cleanup.
                let _ = self.remove(&id).await;
                if let Ok(dir) = attempt_dir(&self.options.runs_dir, &execution) {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }
        // Builds have no container: their folders say which ended without a cleanup.
        for stale in build::build_executions(&self.options.runs_dir) {
            if !wanted.contains(&stale) && !self.builds.contains(&stale) {
                if let Ok(dir) = attempt_dir(&self.options.runs_dir, &stale) {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }
        for execution in executions {
            if self.followed().contains_key(&execution)
                || self.builds.contains(&execution)
                || self.services().contains_key(&execution)
            {
                continue;
            }
            if self.is_service(&execution) {
                if let Err(message) = self.recover_service(&execution).await {
                    self.emit(&execution, EventKind::Lost { message }).await;
                }
                continue;
            }
            let Some((container, running)) = by_execution.remove(&execution) else {
                let is_build = attempt_dir(&self.options.runs_dir, &execution)
                    .is_ok_and(|dir| build::is_build(&dir));
                let message = if is_build {
                    "its image build was cut off when the server stopped (builds cannot be re-attached)"
                } else {
                    "its container no longer exists"
                };
                self.emit(
                    &execution,
                    EventKind::Lost {
                        message: message.into(),
                    },
                )
                .await;
                continue;
            };
            if running {
                self.emit(&execution, EventKind::Started).await;
            }
            // The job's log cap is not on the container: the default stands in.
            self.follow(execution, container, None, DEFAULT_LOG_LIMIT_BYTES);
        }
        Ok(())
    }

    async fn stop(&self, execution: &ExecutionId) -> Result<(), FrameworkError> {
        if self.stop_build(execution).await {
            return Ok(());
        }
        if let Some(service) = self.services().get(execution) {
            service.stop();
            return Ok(());
        }
        let known = self
            .followed()
            .get(execution)
            .map(|followed| (followed.container.clone(), followed.grace));
        let (container, grace) = match known {
            Some(known) => known,
            None => {
                let found = self
                    .containers(Some(execution))
                    .await
                    .map_err(|e| engine_error("cannot list the engine's containers", e))?;
                match found.into_iter().next() {
                    Some((id, _, _)) => (id, None),
                    None => return Err(FrameworkError::UnknownExecution(execution.clone())),
                }
            }
        };
        let docker = self.docker.clone();
        // The engine answers a stop only once the container is gone (up to the grace): the
        // caller is not held that long; `Exited` tells the end.
        tokio::spawn(async move {
            let options = StopContainerOptions {
                t: grace.map(|grace| i32::try_from(grace).unwrap_or(i32::MAX)),
                signal: None,
            };
            if let Err(e) = docker.stop_container(&container, Some(options)).await {
                if !is_gone(&e) {
                    tracing::warn!("stopping container {container}: {e}");
                }
            }
        });
        Ok(())
    }

    async fn scale(&self, execution: &ExecutionId, replicas: u32) -> Result<(), FrameworkError> {
        match self.services().get(execution) {
            Some(service) => {
                service.scale(replicas);
                Ok(())
            }
            None => Err(FrameworkError::NotAService(execution.clone())),
        }
    }

    async fn cleanup(&self, execution: &ExecutionId) -> Result<(), FrameworkError> {
        // A job still running is refused (like `local`); a service's replicas are its task's
        // to stop, and cleanup ends that task whatever state it is in.
        let is_service = self.services().contains_key(execution) || self.is_service(execution);
        self.builds.forget(execution);
        if let Some(service) = self.services().remove(execution) {
            // Ended already, or given up on: whatever it left is removed below.
            service.abort();
        }
        let found = self
            .containers(Some(execution))
            .await
            .map_err(|e| engine_error("cannot list the engine's containers", e))?;
        if !is_service && found.iter().any(|(_, _, running)| *running) {
            return Err(busy(execution));
        }
        let followed = self.followed().remove(execution);
        let mut containers: Vec<String> = found.into_iter().map(|(id, _, _)| id).collect();
        if let Some(followed) = followed {
            if !containers.contains(&followed.container) {
                containers.push(followed.container);
            }
        }
        for container in containers {
            self.remove(&container)
                .await
                .map_err(|e| engine_error(&format!("cannot remove container {container}"), e))?;
        }
        let dir = self.attempt_dir(execution)?;
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
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

/// Not there, or already stopped: what an idempotent stop or remove accepts.
fn is_gone(error: &DockerError) -> bool {
    matches!(
        error,
        DockerError::DockerResponseServerError {
            status_code: 304 | 404,
            ..
        }
    )
}

/// The engine's own words when it answered; the client's error otherwise.
fn message(error: &DockerError) -> String {
    match error {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn engine_error(context: &str, error: DockerError) -> FrameworkError {
    FrameworkError::Io(std::io::Error::other(format!(
        "{context}: {}",
        message(&error)
    )))
}
