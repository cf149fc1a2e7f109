//! Wiring: opens the store, log store, runtimes and frameworks under `$RUNPLANE_HOME`, starts
//! the controller, and serves the API until shut down. Jobs are left running on shutdown (each
//! local run lives under its own supervisor, in its own session).

use crate::controller::{Controller, ControllerOptions, Frameworks};
use crate::options::ServerOptions;
use nix::fcntl::{Flock, FlockArg};
use runplane_domain::{reason, RunState};
use runplane_frameworks::local::{LocalFramework, LocalOptions};
use runplane_logstore::file::FileLogStore;
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
        let home_lock = lock_home(&options)?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&options.database_path()).await?);
        let logs = Arc::new(FileLogStore::new(options.logs_dir()));
        let (events, framework_events) = tokio::sync::mpsc::unbounded_channel();
        let local = LocalFramework::new(
            LocalOptions {
                runs_dir: options.runs_dir(),
                logs_dir: options.logs_dir(),
                supervisor: options.supervisor.clone(),
            },
            events,
        );
        let frameworks = Frameworks::default().with(Arc::new(local));
        let runtimes = Runtimes::new().with(Arc::new(PythonRuntime::new(PythonConfig {
            interpreter: options.python.clone(),
            ..PythonConfig::default()
        })));
        end_runs_of_previous_server(&store).await?;
        let (controller, tasks) = Controller::start(
            store,
            runtimes,
            frameworks,
            logs,
            framework_events,
            ControllerOptions {
                max_concurrent_runs: options.max_concurrent_runs,
                default_framework: "local".to_string(),
            },
        );
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
        let app = crate::api::router(self.controller.clone());
        tracing::info!(addr = ?self.local_addr(), "runplane server listening");
        let result = axum::serve(self.listener, app)
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

/// Runs that were executing under a previous server process cannot be re-attached yet (that is
/// the durable-runs work): end them as `lost` rather than leave them RUNNING forever.
async fn end_runs_of_previous_server(store: &Arc<dyn Store>) -> Result<(), StoreError> {
    let orphans = store
        .runs_in_states(
            &[RunState::Pending, RunState::Running, RunState::Stop],
            u32::MAX,
        )
        .await?;
    for run in orphans {
        let (to, why) = if run.status.state == RunState::Stop {
            (
                RunState::Stopped,
                crate::controller::actions::stop_reason(&run),
            )
        } else {
            (RunState::Error, reason::LOST.to_string())
        };
        let request = runplane_store::TransitionRequest {
            message: Some("the server restarted while the run was executing".to_string()),
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
        tracing::warn!(run = %run.metadata.id, "run from a previous server process marked {to}");
    }
    Ok(())
}
