//! Frameworks (ARCHITECTURE.md) execute [`Runnable`]s on one kind of infrastructure — `local`
//! OS processes, `engine` containers on a Docker-API engine, `kubernetes` Jobs, Deployments
//! and Kaniko builds on a cluster (state from watches, objects found again by label) — and
//! report what happens to them as [`FrameworkEvent`]s on a bounded channel the controller
//! reads ([`events`]).
//!
//! Frameworks know nothing about functions, runtimes, the store or run states: they start,
//! stop and clean up executions identified by (run id, attempt), take over those a previous
//! server process started, capture logs into the log store, and collect the outputs folder
//! when a process ends. This crate depends on `runplane-domain` and `runplane-logstore` only,
//! never on the store, the runtimes or the server.
//!
//! Each framework is a folder; `engine` and `kubernetes` are cargo features (on by default),
//! so that `--no-default-features` builds and tests `local` alone. A framework uses the shared
//! modules below (attempt folders, state files, outputs, log records, replica supervision
//! policy, log writer threads) and never another framework's module. Log writers shared by
//! several followers (a kubernetes attempt's, an engine service's) append and fsync on threads
//! of their own (`log_thread.rs`), never on a tokio worker; the local framework's write in its
//! supervisor process.

// The frameworks, each in its own folder; a framework uses the shared modules below and
// never another framework's.
#[cfg(feature = "engine")]
pub mod engine;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod local;
#[cfg(feature = "scripted")]
pub mod scripted;

// What frameworks share.
mod attempt;
#[cfg(any(feature = "engine", feature = "kubernetes"))]
mod copied_log;
pub mod events;
#[cfg(any(feature = "engine", feature = "kubernetes"))]
mod exit_code;
mod files;
mod log_records;
#[cfg(any(feature = "engine", feature = "kubernetes"))]
mod log_thread;
pub mod outputs;
mod replica_policy;
pub mod uploads;

use async_trait::async_trait;
use runplane_domain::{ExitOutcome, ReplicaStatus, Runnable};

/// One attempt of one run, as a framework sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecutionId {
    pub run_id: String,
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FrameworkEvent {
    pub execution: ExecutionId,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// The process is running. For a service: every replica of the initial set has been
    /// ready once (sent once; `Replicas` and `LogAppended` may come before it, and a service
    /// that never got there ends with `Exited` alone).
    Started,
    /// New log records were appended; the log now ends at `end_offset`.
    LogAppended { end_offset: u64 },
    /// A service execution's replicas changed (started, became ready, exited, restarted,
    /// scaled): the whole list, highest index last. Sent whenever it changes, and once after
    /// a recovery re-attached a running service.
    Replicas(Vec<ReplicaStatus>),
    /// The execution ended (on its own, or after a stop). A service ends only when stopped
    /// (`failure: None`, no exit code) or when the framework failed it (`failure` set:
    /// `not_ready`, `start_failed`); its last `Replicas` list before this is empty.
    Exited(ExitOutcome),
    /// The execution can no longer be found or followed.
    Lost { message: String },
    /// The execution is gone and the job's code certainly never ran (the server died between
    /// claiming the run and starting it): the controller may start the run again.
    NeverStarted { message: String },
}

pub use events::{EventReceiver, EventSender};

#[derive(Debug, thiserror::Error)]
pub enum FrameworkError {
    #[error("cannot start {execution:?}: {message}")]
    StartFailed {
        execution: ExecutionId,
        message: String,
    },
    #[error("{0:?} is not known to this framework")]
    UnknownExecution(ExecutionId),
    #[error("{0:?} is not a service")]
    NotAService(ExecutionId),
    #[error("framework io error: {0}")]
    Io(#[from] std::io::Error),
}

#[async_trait]
pub trait Framework: Send + Sync {
    /// The name tasks and runs choose it by (`local`, `engine`, `kubernetes`...).
    fn name(&self) -> &'static str;
    /// Whether it runs each execution in a container image (`Job::image`); frameworks that run
    /// host processes ignore images.
    fn runs_containers(&self) -> bool {
        false
    }
    /// Starts an execution and returns once it is handed over; `Started`, `LogAppended` and
    /// finally `Exited` (or `Lost`) follow on the event channel, in that order.
    async fn start(&self, execution: ExecutionId, runnable: Runnable)
        -> Result<(), FrameworkError>;
    /// Takes over the executions a previous process of this server started and believed
    /// active (after a restart or a crash), so that they are followed as if started here.
    /// Returns once each of them is either followed (`stop` works on it from then on) or
    /// reported; then, for each: `Exited` if it ended meanwhile; `Started`, `LogAppended` and
    /// finally `Exited` if it still runs; `Lost` if it can no longer be found — never a second
    /// start. Executions this instance already follows are left alone. `executions` must be
    /// all the executions the caller believes active: the working state of any other attempt
    /// that ended but was never cleaned up (a crash between recording its end and `cleanup`)
    /// is removed.
    async fn recover(&self, executions: Vec<ExecutionId>) -> Result<(), FrameworkError>;
    /// Asks an execution to stop: SIGTERM-like first, forceful after the runnable's grace
    /// period, its whole process tree included. Idempotent; `Exited` follows.
    async fn stop(&self, execution: &ExecutionId) -> Result<(), FrameworkError>;
    /// Changes how many replicas a running service execution has. Scaling up starts the
    /// missing indexes; scaling down stops the highest indexes first, each gracefully (SIGTERM,
    /// its requests in flight finish, SIGKILL after the grace period). Returns once the change
    /// is handed over; `Replicas` events follow. `StartFailed`-free: an execution that is not
    /// a service answers `NotAService`.
    async fn scale(&self, execution: &ExecutionId, replicas: u32) -> Result<(), FrameworkError>;
    /// Removes what an ended execution left behind (working folders), keeping its logs. The
    /// server calls it once the execution's end is recorded in its store, so nothing of the
    /// framework's own record of that end needs to outlive a crash of the machine any longer.
    async fn cleanup(&self, execution: &ExecutionId) -> Result<(), FrameworkError>;
}
