//! Run logs as records `(offset, time, stream, bytes)` per run attempt (`docs/lifecycle.md`).
//!
//! Writers append records and get their offsets; readers resume from any offset a previous
//! read returned. The file-backed implementation ([`file::FileLogStore`]) is shared by the
//! server and by the `runplane supervise` process that captures a local run's output, so it is
//! synchronous and depends on nothing but std: no tokio, no store, no domain.

pub mod file;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::io;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// Lines written by runplane itself (truncation markers, supervisor notes).
    System,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::System => "system",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Where this record starts; reading from it returns this record first.
    pub offset: u64,
    pub time: DateTime<Utc>,
    pub stream: Stream,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub records: Vec<LogRecord>,
    /// The offset to resume from (the end of the last complete record returned).
    pub next_offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("offset {offset} is not the start of a record in this log")]
    BadOffset { offset: u64 },
    #[error("log io error: {0}")]
    Io(#[from] io::Error),
}

/// Appends records to one run attempt's log.
pub trait LogWriter: Send {
    /// Appends one record; returns its offset.
    fn append(&mut self, stream: Stream, time: DateTime<Utc>, data: &[u8])
        -> Result<u64, LogError>;
    /// Makes every appended record durable (fsync).
    fn sync(&mut self) -> Result<(), LogError>;
    /// The offset the next record will get (= the end of the log).
    fn end_offset(&self) -> u64;
}

pub trait LogStore: Send + Sync {
    /// Opens the log of a run attempt for appending (creating it), after dropping any torn
    /// record a crash left at its end.
    fn writer(&self, run_id: &str, attempt: u32) -> Result<Box<dyn LogWriter>, LogError>;
    /// Complete records from `offset`, up to about `max_bytes` of data (at least one record
    /// when one is there). A log that does not exist reads as empty.
    fn read(
        &self,
        run_id: &str,
        attempt: u32,
        offset: u64,
        max_bytes: usize,
    ) -> Result<LogChunk, LogError>;
    /// The attempts that have a log, ascending.
    fn attempts(&self, run_id: &str) -> Result<Vec<u32>, LogError>;
    /// Removes every log of the run.
    fn delete(&self, run_id: &str) -> Result<(), LogError>;
}
