//! Following one run of one replica's container: its output into the service's shared log,
//! then how it ended, reported to the service's task.
//!
//! A restarted replica is the same container started again, and the engine hands back the
//! output of all its runs each time: the follower starts at the cursor where the previous run's
//! follower stopped, and after a server restart skips what a previous server stored
//! (`copied`). Like a job's, the log is copied by repeated reads, not the engine's follow
//! stream, which can skip frames of a fast writer (see `follow.rs`).

use super::follow::{exit_code, is_running, oom_killed, LogCursor, POLL};
use super::service_log::ServiceLog;
use crate::copied_log::CopiedLog;
use crate::log_records::split_records;
use bollard::Docker;
use chrono::Utc;
use runplane_logstore::Stream;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What a replica's tasks tell the service's task.
#[derive(Debug)]
pub enum Report {
    /// The container of run `generation` stopped running.
    Exited {
        index: u32,
        generation: u64,
        /// Its exit code; `Err` when the container vanished.
        code: Result<i32, String>,
        oom: bool,
        /// How far this container's log (all its runs) was copied.
        cursor: LogCursor,
    },
    /// Run `generation` answered its readiness check.
    Ready { index: u32, generation: u64 },
    /// A retired replica's container is stopped and removed.
    Removed { index: u32 },
}

pub struct Watch {
    pub docker: Docker,
    pub container: String,
    pub index: u32,
    pub generation: u64,
    pub log: Arc<ServiceLog>,
    /// How far earlier runs of the same container were copied.
    pub cursor: LogCursor,
    pub copied: Option<Arc<CopiedLog>>,
    pub reports: mpsc::UnboundedSender<Report>,
}

impl Watch {
    pub async fn run(self) {
        let cursor = self.copy_logs().await;
        let code = exit_code(&self.docker, &self.container).await;
        let oom = match code {
            Ok(code) => oom_killed(&self.docker, &self.container, code).await,
            Err(_) => false,
        };
        let _ = self.reports.send(Report::Exited {
            index: self.index,
            generation: self.generation,
            code,
            oom,
            cursor,
        });
    }

    /// Copies the container's output until it stopped running (the one more read after it
    /// stopped gets the rest); the cursor past everything copied, for its next run.
    async fn copy_logs(&self) -> LogCursor {
        let mut cursor = self.cursor.clone();
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            let running = is_running(&self.docker, &self.container).await;
            let new = self.copy(&mut cursor, &mut stdout, &mut stderr).await;
            if !running {
                break;
            }
            if new == 0 {
                tokio::time::sleep(POLL).await;
            }
        }
        // The engine's word on the exit came after the last read: once more (free when that
        // read had it all).
        let _ = exit_code(&self.docker, &self.container).await;
        self.copy(&mut cursor, &mut stdout, &mut stderr).await;
        let last_time = cursor.last_time().unwrap_or_else(Utc::now);
        for (kind, pending) in [(Stream::Stdout, &mut stdout), (Stream::Stderr, &mut stderr)] {
            self.log
                .append(kind, last_time, split_records(pending, true));
        }
        cursor
    }

    /// One read of the frames past `cursor` into the service log; how many.
    async fn copy(
        &self,
        cursor: &mut LogCursor,
        stdout: &mut Vec<u8>,
        stderr: &mut Vec<u8>,
    ) -> u64 {
        let read = cursor
            .read(&self.docker, &self.container, |kind, time, data| {
                if self
                    .copied
                    .as_ref()
                    .is_some_and(|copied| copied.is_old(time))
                {
                    return Ok(());
                }
                let pending = match kind {
                    Stream::Stderr => &mut *stderr,
                    _ => &mut *stdout,
                };
                pending.extend_from_slice(data);
                let mut records = split_records(pending, false);
                if let Some(copied) = &self.copied {
                    records.retain(|record| !copied.contains(time, kind, &self.log.redact(record)));
                }
                self.log.append(kind, time, records);
                Ok(())
            })
            .await;
        read.unwrap_or_else(|e| {
            tracing::debug!(container = %self.container, "replica log: {e}");
            0
        })
    }
}
