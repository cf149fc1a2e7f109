//! Wiring: opens the store, log store, runtimes and frameworks under `$RUNPLANE_HOME`, starts
//! the controller, and serves the API until shut down. Jobs are left running on shutdown (each
//! local run lives under its own supervisor, in its own session).

use crate::controller::{Controller, ControllerOptions};
use crate::inspector::InterpreterInspector;
use crate::options::{ServerOptions, DEFAULT_ENGINE_IMAGE};
use nix::fcntl::{Flock, FlockArg};
use runplane_frameworks::FrameworkError;
use runplane_logstore::file::FileLogStore;
use runplane_runtimes::container::{ContainerConfig, ContainerRuntime};
use runplane_runtimes::pipeline::PipelineRuntime;
use runplane_runtimes::python::{PythonConfig, PythonRuntime};
use runplane_runtimes::Runtimes;
use runplane_store::sqlite::SqliteStore;
use runplane_store::{Store, StoreError};
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
    #[error("cannot enable the kubernetes framework: {0}")]
    Kubernetes(FrameworkError),
    #[error("--kubernetes-profiles {path}: {message}")]
    KubernetesProfiles { path: String, message: String },
    #[error("this runplane was built without the {0} framework (cargo feature `{0}`)")]
    NotBuilt(&'static str),
    #[error("--store {0:?}: expected postgres://user@host:port/database or sqlite:PATH")]
    StoreUrl(String),
    #[cfg(not(feature = "postgres"))]
    #[error("--store {0:?}: this runplane was built without PostgreSQL support (cargo feature `postgres`)")]
    PostgresNotBuilt(String),
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
        let store = open_store(&options).await?;
        let logs = Arc::new(FileLogStore::new(options.logs_dir()));
        let (events, framework_events) =
            runplane_frameworks::events::channel(runplane_frameworks::events::DEFAULT_CAPACITY);
        let crate::frameworks::Enabled {
            frameworks,
            outputs_uploads,
        } = crate::frameworks::enable(&options, store.is_shared(), &secret_key, events).await?;
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
        let python = PythonConfig {
            interpreter: options.python.clone(),
            environments_dir: environments_dir.to_string_lossy().into_owned(),
            uv: options.uv.clone(),
            base_image,
            registry,
            ..PythonConfig::default()
        };
        // A server whose interpreter is missing still checks sources (its runs fail to start).
        let inspector = InterpreterInspector::new(Some(PythonConfig::default().interpreter));
        let runtimes = Runtimes::new()
            .with(Arc::new(PythonRuntime::new(python, Arc::new(inspector))))
            .with(Arc::new(ContainerRuntime::new(ContainerConfig {
                registry: options.engine.as_ref().and_then(|e| e.registry.clone()),
                ..ContainerConfig::default()
            })))
            .with(Arc::new(PipelineRuntime::new()));
        // Before the controller starts: every execution is followed (and stoppable) before any
        // controller task or request can act on its run. What recovery reports waits for the
        // reconciler in the event channel, which holds it all meanwhile (a framework's
        // `recover` reports at most a couple of events per execution without waiting for room).
        let owned = crate::controller::replicas::adopt_at_startup(&store, &options.replica).await?;
        let taken = owned.len();
        let started = std::time::Instant::now();
        let capacity = runplane_frameworks::events::DEFAULT_CAPACITY;
        framework_events.set_capacity(capacity.saturating_add(taken.saturating_mul(2)));
        crate::controller::replicas::take_over(&store, &frameworks, owned).await?;
        framework_events.set_capacity(capacity);
        if taken > 0 {
            tracing::info!(
                runs = taken,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "took over the runs of a previous server"
            );
        }
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
                replica: options.replica.clone(),
                outputs_uploads,
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

/// The store `--store` names (SQLite in the home by default).
async fn open_store(options: &ServerOptions) -> Result<Arc<dyn Store>, ServerError> {
    match options.store.as_deref() {
        None => Ok(Arc::new(SqliteStore::open(&options.database_path()).await?)),
        Some(url) if url.starts_with("sqlite:") => {
            let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
            Ok(Arc::new(
                SqliteStore::open(std::path::Path::new(path)).await?,
            ))
        }
        #[cfg(feature = "postgres")]
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => Ok(
            Arc::new(runplane_store::postgres::PostgresStore::connect(url).await?),
        ),
        #[cfg(not(feature = "postgres"))]
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Err(ServerError::PostgresNotBuilt(url.to_string()))
        }
        Some(url) => Err(ServerError::StoreUrl(url.to_string())),
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
