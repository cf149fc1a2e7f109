//! What the local framework and its `runplane supervise` processes exchange: the files of an
//! attempt folder and the control messages on the supervisor's stdout.
//!
//! The attempt folder is the whole contract between the two processes, so that a supervisor
//! keeps running, and its results stay readable, when the server that started it is gone:
//!
//! ```text
//! <runs_dir>/<run_id>/<attempt>/
//!   job.json        JobFile: what to run (written by the framework, mode 0600: env may hold secrets)
//!   work/           the job's working directory, with the job's files
//!   outputs/        RUNPLANE_OUTPUTS: files the job leaves for the framework to collect
//!   supervisor.pid  the supervisor's pid (written by the framework after spawning it)
//!   supervisor.err  the supervisor's stderr: its own diagnostics, never the job's output
//!   child.pid       the job's main process (also its process group id), once started; for a
//!                   service, replica 0's current process (rewritten when it restarts)
//!   service.json    ServiceState (services only): the replicas as the supervisor sees them,
//!                   rewritten atomically on every change (the truth behind `replicas` hints)
//!   desired.json    DesiredFile (services only): the replica count asked for by `scale`, written
//!                   atomically by the framework before it sends the supervisor SIGUSR1
//!   exit.json       ExitFile: how it ended (written atomically by the supervisor, last; fsynced
//!                   unless the server acknowledged that it recorded the end, `standby.rs`)
//! ```
//!
//! The log itself lives in the FileLogStore at `log_root/<run_id>/<attempt>.log`.

use runplane_domain::{Failure, ReplicaStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self};
use std::path::{Path, PathBuf};

pub const JOB_FILE: &str = "job.json";
pub const EXIT_FILE: &str = "exit.json";
pub const CHILD_PID_FILE: &str = "child.pid";
pub const SUPERVISOR_PID_FILE: &str = "supervisor.pid";
pub const SUPERVISOR_ERR_FILE: &str = "supervisor.err";
pub const WORK_DIR: &str = "work";
pub const OUTPUTS_DIR: &str = "outputs";
pub const SERVICE_FILE: &str = "service.json";
pub const DESIRED_FILE: &str = "desired.json";

/// The fd a service replica finds its listening socket on (`RUNPLANE_LISTEN_FD`).
pub const LISTEN_FD: i32 = 3;

/// `job.json`: everything the supervisor needs, fully resolved by the framework (absolute
/// paths, the program found in `PATH`, the complete environment) so the supervisor makes no
/// decisions of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFile {
    pub run_id: String,
    pub attempt: u32,
    /// The absolute path of the program to execute (`command[0]` resolved).
    pub program: PathBuf,
    /// The full argv; `argv[0]` is `command[0]` as the job gave it.
    pub argv: Vec<String>,
    /// The job's complete environment, `RUNPLANE_OUTPUTS` included.
    pub env: BTreeMap<String, String>,
    pub stop_grace_seconds: u64,
    /// The most bytes the log may hold before the job's output is discarded (absent in the
    /// `job.json` of an older server: the default).
    #[serde(default = "default_log_limit")]
    pub log_limit_bytes: u64,
    pub workdir: PathBuf,
    pub outputs_dir: PathBuf,
    /// The FileLogStore root the supervisor appends `(run_id, attempt)`'s log to.
    pub log_root: PathBuf,
    /// Set for a service: the job is one replica, kept running `replicas` times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceFile>,
    /// Values (secrets) to replace with `[REDACTED]` in the captured output. They are also in
    /// `env`: this file is mode 0600 and removed by cleanup.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
    /// The machine's boot id when the folder was prepared: a later server trusts what the
    /// folder's process-crash-durable files say (no `child.pid`: the job never started) only
    /// on the same machine in the same boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

/// The service part of `job.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceFile {
    /// How many replicas to start with (unless `desired.json` already says otherwise).
    pub replicas: u32,
    /// Answers `HTTP/1.x 200` to `GET` once a replica is ready; starts with `/`.
    pub readiness_path: String,
    /// How long every replica of the initial set has to become ready once.
    pub ready_timeout_seconds: u64,
}

/// `service.json`: the supervisor's view of a service's replicas.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServiceState {
    /// The replica count the supervisor is working towards.
    pub desired: u32,
    /// Every replica of the initial set has been ready (the `started` message went out).
    pub started: bool,
    /// Highest index last; a replica being scaled away stays listed (not ready) until its
    /// process tree is gone.
    pub replicas: Vec<ReplicaStatus>,
}

/// `desired.json`: `{"replicas": n}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredFile {
    pub replicas: u32,
}

fn default_log_limit() -> u64 {
    runplane_domain::runnable::DEFAULT_LOG_LIMIT_BYTES
}

/// `exit.json`: how the execution ended.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExitFile {
    /// The main process's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed the main process, when one did.
    pub signal: Option<i32>,
    /// Whether a stop (SIGTERM to the supervisor) was requested before it ended.
    pub stopped: bool,
    /// Set when the job never ran (its program could not be executed, the log could not be
    /// opened...): what went wrong, for a person to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set when the supervisor itself ended a service (`not_ready`, `start_failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

/// One line of the control channel (the supervisor's stdout), newline-delimited JSON:
/// `{"started":{"pid":123}}`, then any number of `{"log":{"end_offset":456}}`; a service
/// also sends `{"replicas":{"changes":7}}` whenever `service.json` changed (its first one
/// before anything else), and `started` (replica 0's pid) once every replica of the initial
/// set has been ready.
///
/// Control messages are hints for a live server: losing them (the server died, the pipe was
/// full) loses nothing, because the log file and `exit.json` hold the facts. `end_offset` is
/// absolute, so any message may be dropped and the next one still says everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlMessage {
    /// The job's main process is running with this pid (its process group id too).
    Started { pid: u32 },
    /// The log now ends at this offset.
    Log { end_offset: u64 },
    /// `service.json` was rewritten (`changes` counts the rewrites); read it for the replicas.
    /// The list itself stays in the file: with many replicas it would not fit in one atomic
    /// pipe write.
    Replicas { changes: u64 },
}

/// Reads a small pid file; `None` when it is missing or does not hold a pid.
pub(crate) fn read_pid_file(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}
