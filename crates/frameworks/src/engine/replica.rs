//! Following one run of one replica's container: its output into the service's shared log,
//! then how it ended, reported to the service's task.
//!
//! A restarted replica is the same container started again, and the engine hands back the
//! output of all its runs each time: the follower skips the log frames it already copied
//! (`skip_frames`, counted by the previous run's follower), or, after a server restart, those
//! a previous server stored (`copied`).

use super::copied::CopiedLog;
use super::follow::{exit_code, oom_killed, split_timestamp};
use super::service_log::ServiceLog;
use crate::local::capture::split_records;
use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use bollard::Docker;
use chrono::Utc;
use futures::StreamExt;
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
        /// Log frames of this container seen so far, all runs included.
        frames: u64,
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
    pub skip_frames: u64,
    pub copied: Option<Arc<CopiedLog>>,
    pub reports: mpsc::UnboundedSender<Report>,
}

impl Watch {
    pub async fn run(self) {
        let frames = self.copy_logs().await;
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
            frames,
        });
    }

    /// Copies the container's output until its log stream ends (it stopped); the frames seen.
    async fn copy_logs(&self) -> u64 {
        let options = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .build();
        let mut stream = self.docker.logs(&self.container, Some(options));
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut frames = 0u64;
        let mut last_time = Utc::now();
        while let Some(frame) = stream.next().await {
            let (kind, message) = match frame {
                Ok(LogOutput::StdOut { message }) => (Stream::Stdout, message),
                Ok(LogOutput::StdErr { message }) => (Stream::Stderr, message),
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(container = %self.container, "replica log stream: {e}");
                    break;
                }
            };
            frames += 1;
            if frames <= self.skip_frames {
                continue;
            }
            let (time, data) = split_timestamp(&message);
            if self
                .copied
                .as_ref()
                .is_some_and(|copied| copied.is_old(time))
            {
                continue;
            }
            last_time = time;
            let pending = match kind {
                Stream::Stderr => &mut stderr,
                _ => &mut stdout,
            };
            pending.extend_from_slice(data);
            let mut records = split_records(pending, false);
            if let Some(copied) = &self.copied {
                records.retain(|record| !copied.contains(time, kind, &self.log.redact(record)));
            }
            self.log.append(kind, time, records);
        }
        for (kind, pending) in [(Stream::Stdout, &mut stdout), (Stream::Stderr, &mut stderr)] {
            self.log
                .append(kind, last_time, split_records(pending, true));
        }
        frames
    }
}
