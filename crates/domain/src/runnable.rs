//! What a runtime hands to a framework, and what a framework hands back when it ends. These
//! types say nothing about functions or runtimes: a framework executes them as they are.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Something a framework can execute. Services and builds join `Job` in later issues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Runnable {
    Job(Job),
}

/// A process to run to completion.
///
/// The framework materializes `files` into a fresh working directory, starts `command` there
/// with `env` (plus `RUNPLANE_OUTPUTS`, the absolute path of an empty folder whose files it
/// collects when the process ends), and never interprets the process's stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

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
