//! Wiring: opens the store, log store, runtimes and frameworks under `$RUNPLANE_HOME`, starts
//! the controller, and serves the API until shut down. Jobs are left running on shutdown (each
//! local run lives under its own supervisor, in its own session).

use crate::controller::{Controller, ControllerOptions, Frameworks};
use crate::options::{ServerOptions, DEFAULT_ENGINE_IMAGE};
use nix::fcntl::{Flock, FlockArg};
use runplane_domain::workflow::WORKFLOW_FRAMEWORK;
use runplane_domain::{reason, Run, RunState};
use runplane_frameworks::engine::{EngineFramework, EngineOptions};
use runplane_frameworks::local::{LocalFramework, LocalOptions};
use runplane_frameworks::{ExecutionId, FrameworkError};
use runplane_logstore::file::FileLogStore;
use runplane_runtimes::container::{ContainerConfig, ContainerRuntime};
use runplane_runtimes::pipeline::PipelineRuntime;
use runplane_runtimes::python::{PythonConfig, PythonRuntime};
use runplane_runtimes::Runtimes;
use runplane_store::sqlite::SqliteStore;
use runplane_store::{Store, StoreError};
use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot use {path}: {source}")]
    Home {
        path: String,
        source: std::io::Error,
    },
    #[error("another runplane server is using {0} (its lock file is held)")]
    HomeInUse(String),
    #[error("refusing to listen on {0} without authentication: pass --insecure-no-auth to do it anyway (only behind a network policy)")]
    InsecureListen(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot enable the engine framework: {0}")]
    Engine(FrameworkError),
    #[error("the default framework {name:?} is not enabled (enabled: {enabled})")]
    DefaultFramework { name: String, enabled: String },
    #[error(transparent)]
    SecretKey(#[from] crate::secrets::SecretKeyError),
    #[error(transparent)]
    ArtifactStore(#[from] crate::artifacts::ArtifactStoreError),
}

/// A bound, running server.
pub struct Server {
    listener: TcpListener,
    controller: Controller,
    tasks: Vec<JoinHandle<()>>,
    _home_lock: Flock<File>,
}

impl Server {
    /// Opens everything and binds the listener; serving starts with [`Server::serve`].
    pub async fn bind(options: ServerOptions) -> Result<Server, ServerError> {
        if !options.listen.ip().is_loopback() {
            if !options.insecure_no_auth {
                return Err(ServerError::InsecureListen(options.listen));
            }
            tracing::warn!(listen = %options.listen, "LISTENING WITHOUT AUTHENTICATION on a non-loopback address: anyone who can reach it can run code here");
        }
        crate::failpoints::init();
        let home_lock = lock_home(&options)?;
        let (key_path, create_key) = options.secret_key_path();
        let secret_key = crate::secrets::SecretKey::load_or_create(&key_path, create_key)?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&options.database_path()).await?);
        let logs = Arc::new(FileLogStore::new(options.logs_dir()));
        let (events, framework_events) = tokio::sync::mpsc::unbounded_channel();
        let local = LocalFramework::new(
            LocalOptions {
                runs_dir: options.runs_dir(),
                logs_dir: options.logs_dir(),
                supervisor: options.supervisor.clone(),
            },
            events.clone(),
        );
        let mut frameworks = Frameworks::default().with(Arc::new(local));
        if let Some(engine) = &options.engine {
            let engine = EngineFramework::connect(
                EngineOptions {
                    socket: engine.socket.clone(),
                    runs_dir: options.engine_runs_dir(),
                    logs_dir: options.logs_dir(),
                    default_image: engine.image.clone(),
                },
                events,
            )
            .await
            .map_err(ServerError::Engine)?;
            frameworks = frameworks.with(Arc::new(engine));
        }
        if frameworks.get(&options.default_framework).is_none() {
            return Err(ServerError::DefaultFramework {
                name: options.default_framework.clone(),
                enabled: frameworks.names().join(", "),
            });
        }
        let environments_dir =
            std::path::absolute(options.environments_dir()).map_err(|source| {
                ServerError::Home {
                    path: options.environments_dir().display().to_string(),
                    source,
                }
            })?;
        let registry = options.engine.as_ref().and_then(|e| e.registry.clone());
        let base_image = options
            .engine
            .as_ref()
            .map_or(DEFAULT_ENGINE_IMAGE.to_string(), |e| e.image.clone());
        let runtimes = Runtimes::new()
            .with(Arc::new(PythonRuntime::new(PythonConfig {
                interpreter: options.python.clone(),
                environments_dir: environments_dir.to_string_lossy().into_owned(),
                uv: options.uv.clone(),
                base_image,
                registry,
                ..PythonConfig::default()
            })))
            .with(Arc::new(ContainerRuntime::new(ContainerConfig {
                registry: options.engine.as_ref().and_then(|e| e.registry.clone()),
                ..ContainerConfig::default()
            })))
            .with(Arc::new(PipelineRuntime::new()));
        // Before the controller starts: every execution is followed (and stoppable) before any
        // controller task or request can act on its run. The event channel is unbounded, so
        // what recovery reports waits for the reconciler.
        recover_runs_of_previous_server(&store, &frameworks).await?;
        crate::failpoints::hit("after_recover");
        let (controller, tasks) = Controller::start(
            store,
            runtimes,
            frameworks,
            logs,
            framework_events,
            ControllerOptions {
                max_concurrent_runs: options.max_concurrent_runs,
                default_framework: options.default_framework.clone(),
                gateway: crate::gateway::GatewayOptions::default(),
                secrets: crate::secrets::SecretBox::new(&secret_key),
                resolver: crate::resolver::Resolver {
                    uv: options.uv.clone(),
                    python: options.python.clone(),
                },
                artifacts: options.artifact_store()?,
            },
        );
        // Workflow runs have no framework to recover them: the engine takes them up again.
        controller.resume_workflows().await?;
        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|source| ServerError::Listen {
                    addr: options.listen,
                    source,
                })?;
        Ok(Server {
            listener,
            controller,
            tasks,
            _home_lock: home_lock,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish
    /// and returns. Runs keep executing.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // The gateway's routes stay outside the API's body limit: uploads to services stream.
        let app = axum::Router::new()
            .merge(self.controller.gateway().router())
            .merge(crate::api::router(self.controller.clone()));
        tracing::info!(addr = ?self.local_addr(), "runplane server listening");
        let bus = self.controller.bus().clone();
        let shutdown = async move {
            shutdown.await;
            // Followed logs, `/events` and `?wait=` requests end now rather than hold the
            // graceful shutdown open.
            bus.close();
        };
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        // Streamed answers (the gateway's, followed logs) go out as separate writes: with
        // Nagle's algorithm on, each one after the first waits for the client's delayed ACK
        // (40 ms).
        let listener = axum::serve::ListenerExt::tap_io(self.listener, |tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        });
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        for task in self.tasks {
            task.abort();
        }
        result
    }
}

fn lock_home(options: &ServerOptions) -> Result<Flock<File>, ServerError> {
    let home_error = |source| ServerError::Home {
        path: options.home.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&options.home).map_err(home_error)?;
    let path = options.home.join("server.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(home_error)?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| ServerError::HomeInUse(options.home.display().to_string()))
}

/// The states in which a run may have an execution a previous server process started.
/// DELETING is among them: its purge waits for the execution's end.
const ACTIVE_STATES: [RunState; 4] = [
    RunState::Pending,
    RunState::Running,
    RunState::Stop,
    RunState::Deleting,
];

/// Runs keep executing while no server runs (each under its own supervisor). On start-up, each
/// framework takes over the executions of its runs still active in the store: those that ended
/// meanwhile report their real outcome, live ones are followed again, vanished ones end as
/// `lost` (an attempt is never started twice). Stops that a previous process recorded (STOP,
/// DELETING) are delivered again, since it may have died before sending them.
async fn recover_runs_of_previous_server(
    store: &Arc<dyn Store>,
    frameworks: &Frameworks,
) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let runs = store.runs_in_states(&ACTIVE_STATES, u32::MAX).await?;
    let total = runs.len();
    let mut by_framework: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    for run in runs {
        by_framework
            .entry(run.spec.framework.clone())
            .or_default()
            .push(run);
    }
    for (name, runs) in by_framework {
        if name == WORKFLOW_FRAMEWORK {
            // Driven by the controller's workflow engine, which resumes them.
            continue;
        }
        let Some(framework) = frameworks.get(&name) else {
            for run in runs {
                end_run_without_framework(store, &run).await?;
            }
            continue;
        };
        let execution = |run: &Run| ExecutionId {
            run_id: run.metadata.id.clone(),
            attempt: run.status.attempt,
        };
        let executions = runs.iter().map(execution).collect();
        if let Err(error) = framework.recover(executions).await {
            // Nothing is lost by leaving the runs active: a later start-up tries again, and a
            // stop meanwhile ends those the framework does not know.
            tracing::error!(framework = %name, %error, "cannot recover the runs of a previous server");
            continue;
        }
        for run in runs
            .iter()
            .filter(|run| matches!(run.status.state, RunState::Stop | RunState::Deleting))
        {
            match framework.stop(&execution(run)).await {
                // Unknown: it was reported lost, which ends the run.
                Ok(()) | Err(FrameworkError::UnknownExecution(_)) => {}
                Err(error) => {
                    tracing::warn!(run = %run.metadata.id, %error, "cannot deliver a recorded stop")
                }
            }
        }
    }
    if total > 0 {
        tracing::info!(
            runs = total,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "took over the runs of a previous server"
        );
    }
    Ok(())
}

/// A run active under a previous server whose framework this server does not enable: nothing
/// can follow it, so it ends (`lost`, or STOPPED if it was being stopped) rather than stay
/// active forever.
async fn end_run_without_framework(store: &Arc<dyn Store>, run: &Run) -> Result<(), StoreError> {
    let (to, why) = match run.status.state {
        RunState::Stop => (
            RunState::Stopped,
            crate::controller::actions::stop_reason(run),
        ),
        RunState::Pending | RunState::Running => (RunState::Error, reason::LOST.to_string()),
        // A DELETING run is purged by the controller once its execution has ended; with no
        // framework to tell, it stays until that framework is enabled again.
        _ => return Ok(()),
    };
    let request = runplane_store::TransitionRequest {
        message: Some(format!(
            "the server restarted without the {:?} framework this run executes on",
            run.spec.framework
        )),
        attempt_update: Some(runplane_store::AttemptUpdate::Ended {
            exit_code: None,
            signal: None,
            reason: Some(why.clone()),
        }),
        ..runplane_store::TransitionRequest::new(
            &run.metadata.id,
            run.status.state,
            run.status.attempt,
            to,
        )
        .reason(&why)
    };
    match store.transition(request).await {
        Ok(_) | Err(StoreError::Conflict { .. }) => {}
        Err(error) => return Err(error),
    }
    tracing::warn!(run = %run.metadata.id, framework = %run.spec.framework, "run of a framework that is not enabled marked {to}");
    Ok(())
}
