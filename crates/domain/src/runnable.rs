//! What a runtime hands to a framework, and what a framework hands back when it ends. These
//! types say nothing about functions or runtimes: a framework executes them as they are.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Something a framework can execute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Runnable {
    Job(Job),
    Service(Service),
    Build(Build),
}

/// An image to build from a Containerfile and a context, on frameworks that have a builder
/// (`engine`; the others refuse it with `StartFailed`).
///
/// The framework assembles the context (`context` files, then each of `context_dirs` copied in
/// whole), builds it, tags the result `image`, pushes it when `push` is set, and ends the
/// execution with exit code 0 and an output file [`BUILD_OUTPUT`] (a JSON
/// [`BuiltImage`]). A build that fails ends with exit code 1 and `failure` reason
/// `build_failed`, the builder's output in the log; nothing is left tagged `image`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Build {
    /// The Containerfile's text (`FROM`... ).
    pub containerfile: String,
    /// Files of the build context; paths relative, without `..`.
    #[serde(default)]
    pub context: Vec<FileEntry>,
    /// Host folders copied into the context whole (symlinks kept as links).
    #[serde(default)]
    pub context_dirs: Vec<ContextDir>,
    /// The reference to tag the built image with (`repo:tag`); unique per build.
    pub image: String,
    /// Push `image` to its registry once built (plain HTTP is allowed for loopback registries).
    #[serde(default)]
    pub push: bool,
    /// Build arguments (`ARG` values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// See [`Job::log_limit_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_limit_bytes: Option<u64>,
}

/// A host folder added to a build context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextDir {
    /// Absolute path on the framework's host.
    pub host_path: String,
    /// Where it goes in the context (relative, without `..`).
    pub path: String,
}

/// The output file a successful [`Build`] leaves.
pub const BUILD_OUTPUT: &str = "image.json";

/// What a build made: the content of [`BUILD_OUTPUT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuiltImage {
    /// The reference it was tagged with (`Build::image`).
    pub image: String,
    /// The engine's image id (`sha256:...`).
    pub id: String,
    /// `repo@sha256:...` once pushed to a registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// A host folder made visible to a job. Frameworks that run containers bind-mount it at
/// `container_path`; frameworks that run host processes leave it where it is (runtimes that
/// want both to work use the same path on both sides).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub host_path: String,
    pub container_path: String,
    #[serde(default)]
    pub read_only: bool,
}

/// Resource limits of a job's process (containers: the engine's cgroup limits; host processes
/// ignore them).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Limits {
    /// CPU cores, fractions allowed (0.5 = half a core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory in bytes; a container that goes past it is killed (`oom_killed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// A long-running HTTP server kept up as `replicas` identical processes until it is stopped.
///
/// Each replica is started like a [`Job`] (`replica`: command, env, files, grace, log cap) and
/// serves HTTP/1.1 on a TCP port the framework gives it:
/// - `RUNPLANE_LISTEN_FD` names an inherited file descriptor that is already a listening
///   socket bound by the framework (the `local` framework: no port race, and the port stays the
///   same across restarts of that replica); the replica accepts on it;
/// - otherwise `RUNPLANE_PORT` is the port to bind (frameworks that cannot pass sockets).
///
/// `RUNPLANE_REPLICA` is the replica's index (0-based). A replica is ready when
/// `GET {readiness_path}` answers 200. A replica that exits is restarted with a backoff. A
/// replica that is not ready `ready_timeout_seconds` after the service started fails the whole
/// execution ([`ExitOutcome::failure`] with reason `not_ready`), and nothing is left running.
/// Stopping a service sends SIGTERM to every replica (which finishes its requests in flight),
/// then SIGKILL after the grace period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub replica: Job,
    /// How many replicas to start with; `Framework::scale` changes it later.
    pub replicas: u32,
    pub readiness_path: String,
    pub ready_timeout_seconds: u64,
    /// The fixed port each replica listens on inside its container (container images that
    /// choose their own port). Frameworks that run host processes refuse it: they hand out
    /// ports (`RUNPLANE_LISTEN_FD` / `RUNPLANE_PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Whether replicas serve HTTP (default). When false (a `deploy`: a long-running worker),
    /// a replica is ready once it runs, has no endpoint (`""`), and nothing routes to it.
    #[serde(default = "serves_http")]
    pub http: bool,
}

fn serves_http() -> bool {
    true
}

/// One replica of a service execution, as its framework reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaStatus {
    /// 0-based; scaling down removes the highest indexes first.
    pub index: u32,
    /// `host:port` the replica serves on (reachable from the server).
    pub endpoint: String,
    /// Whether it answered its readiness check since it last (re)started.
    pub ready: bool,
    /// How many times it was restarted after exiting.
    pub restarts: u32,
    /// Its process id, when it runs as a local process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// How its last process ended (`exit code 1`, `signal 9`), when it was restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}

/// A process to run to completion.
///
/// The framework materializes `files` into a fresh working directory, starts `command` there
/// with `env` (plus `RUNPLANE_OUTPUTS`, the absolute path of an empty folder whose files it
/// collects when the process ends), and never interprets the process's stdout.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Job {
    /// argv; `command[0]` is an absolute path or a name looked up in `PATH`.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub files: Vec<FileEntry>,
    /// Time between SIGTERM and SIGKILL when the job is stopped.
    pub stop_grace_seconds: u64,
    /// The most bytes the attempt's log may hold; once reached, the framework discards the
    /// rest of the job's output (after one `system` line saying so) while the job goes on.
    /// [`DEFAULT_LOG_LIMIT_BYTES`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_limit_bytes: Option<u64>,
    /// The container image to run it in, for frameworks that run containers (`engine`; the
    /// framework's default image when absent). Frameworks that run host processes ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Values the framework must never write to the job's log (secrets handed in `env`): each
    /// occurrence in the captured output is replaced with [`REDACTED`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
    /// Host folders to mount (container frameworks); see [`Volume`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// cpu/memory limits (container frameworks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// What a redacted value is replaced with in logs.
pub const REDACTED: &str = "[REDACTED]";

/// The log cap of a job that names none: 64 MiB per attempt.
pub const DEFAULT_LOG_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

/// A file to write before the process starts. `path` is relative and never contains `..`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub mode: u32,
    #[serde(with = "bytes_as_base64")]
    pub contents: Vec<u8>,
}

/// How an execution ended, as seen by the framework.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ExitOutcome {
    /// The process's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it, when it was killed.
    pub signal: Option<i32>,
    /// The files it left in its outputs folder (top level, each read up to a cap).
    pub outputs: BTreeMap<String, OutputFile>,
    /// Set when the framework itself ended the execution for a reason of its own (a service
    /// whose replicas never became ready: `not_ready`); it decides the run's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// The attempt's outputs folder on this host, when the framework keeps it there (local
    /// and engine do): where the controller finds logged artifacts (`artifacts/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs_dir: Option<std::path::PathBuf>,
}

/// Why a framework ended an execution: a machine-readable reason and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    #[serde(with = "bytes_as_base64")]
    pub contents: Vec<u8>,
    /// The file's real size; larger than `contents.len()` when it was cut at the cap.
    pub size: u64,
}

impl OutputFile {
    pub fn is_truncated(&self) -> bool {
        self.size > self.contents.len() as u64
    }
}

mod bytes_as_base64 {
    //! Small files travel in JSON (supervisor state, debugging dumps) as standard base64.
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_entries_round_trip_through_json() {
        for contents in [
            vec![],
            vec![0u8],
            vec![1, 2],
            vec![255, 0, 7],
            (0..=255).collect(),
        ] {
            let entry = FileEntry {
                path: "a/b.py".into(),
                mode: 0o644,
                contents,
            };
            let json = serde_json::to_string(&entry).unwrap();
            assert_eq!(serde_json::from_str::<FileEntry>(&json).unwrap(), entry);
        }
    }
}
