//! Following one container: its stdout/stderr into the run's log as line records, then its
//! exit, then the outputs folder — and the events that tell the controller.
//!
//! The log is copied by repeated non-follow reads with an exact cursor (`LogCursor`), re-read
//! every `POLL` only while a read brought nothing new: Podman's follow stream can skip frames of
//! a fast writer. This is the one poll on a hot path, forced by the engine.

use crate::copied_log::CopiedLog;
use crate::exit_code::split_code;
use crate::log_records::{split_records, Redactor};
use crate::outputs::collect_outputs;
use crate::{EventKind, EventSender, ExecutionId};
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::ContainerStateStatusEnum;
use bollard::query_parameters::{LogsOptions, LogsOptionsBuilder, WaitContainerOptions};
use bollard::Docker;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use runplane_domain::{reason, ExitOutcome, Failure};
use runplane_logstore::file::{FileLogStore, FileLogWriter};
use runplane_logstore::{LogWriter, Stream};
use std::path::PathBuf;
use std::time::Duration;

pub struct Follow {
    pub docker: Docker,
    pub events: EventSender,
    pub execution: ExecutionId,
    pub container: String,
    pub logs: FileLogStore,
    pub outputs_dir: PathBuf,
    pub log_limit: u64,
    /// Secrets the job's output must never reveal.
    pub redactor: Redactor,
}

impl Follow {
    async fn emit(&self, kind: EventKind) {
        self.events.emit(&self.execution, kind).await;
    }

    /// Runs until the container has exited and its outcome is reported (`Exited`), or it
    /// can no longer be followed (`Lost`).
    pub async fn run(self) {
        let kind = match self.follow().await {
            Ok(outcome) => EventKind::Exited(outcome),
            Err(message) => EventKind::Lost { message },
        };
        self.emit(kind).await;
    }

    async fn follow(&self) -> Result<ExitOutcome, String> {
        let mut writer = open_writer(&self.logs, &self.execution).await?;
        // After a restart the log already holds what the previous server copied: the engine
        // replays from a while before it, and the replayed lines are matched one by one
        // against the stored records (timestamps alone cannot tell lines of the same second
        // apart).
        let copied = CopiedLog::read(&self.logs, &self.execution.run_id, self.execution.attempt);
        let since = copied.as_ref().map(CopiedLog::since);
        let mut lines = Lines::new(self.log_limit, writer.end_offset(), &self.redactor, copied);
        let mut cursor = LogCursor::since(since);
        loop {
            // Whether it still ran before this read: if not, the read sees its whole log.
            let running = is_running(&self.docker, &self.container).await;
            let new = self.copy(&mut writer, &mut lines, &mut cursor).await?;
            if !running {
                break;
            }
            if new == 0 {
                tokio::time::sleep(POLL).await;
            }
        }
        let code = exit_code(&self.docker, &self.container).await?;
        // Once more after the engine's word on the exit: the cursor makes it free when the
        // last read had it all.
        self.copy(&mut writer, &mut lines, &mut cursor).await?;
        let end = cursor.last_time().unwrap_or_else(Utc::now);
        for kind in [Stream::Stdout, Stream::Stderr] {
            lines.push(&mut writer, kind, end, &[], true)?;
        }
        writer
            .sync()
            .map_err(|e| format!("cannot sync the log: {e}"))?;
        if let Some(end) = lines.take_news() {
            self.emit(EventKind::LogAppended { end_offset: end }).await;
        }
        drop(writer);

        let (exit_code, signal) = split_code(code);
        let failure = oom_killed(&self.docker, &self.container, code)
            .await
            .then(|| Failure {
                reason: reason::OOM_KILLED.to_string(),
                message: "the container went past its memory limit and was killed".to_string(),
            });
        Ok(ExitOutcome {
            exit_code,
            signal,
            outputs: collect_outputs(&self.outputs_dir),
            failure,
            outputs_dir: Some(self.outputs_dir.clone()),
        })
    }
}

/// How often a running container's log is read again when the last read brought nothing.
pub(super) const POLL: Duration = Duration::from_millis(250);

/// How far a container's log was copied: the frames of the engine's log up to `time`
/// (one-second resolution), of which `count` at `time` itself. Frames come in the same order on
/// every read, so that is enough to skip exactly what was copied — also across restarts of the
/// same container, whose log keeps the output of its earlier runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct LogCursor {
    time: Option<DateTime<Utc>>,
    count: u64,
    /// Where the first read starts (a recovered container's already-copied output).
    since: Option<DateTime<Utc>>,
}

impl LogCursor {
    pub(super) fn since(since: Option<DateTime<Utc>>) -> Self {
        LogCursor {
            time: None,
            count: 0,
            since,
        }
    }

    /// Reads the container's log once (not following: the engine's follow stream can skip
    /// frames of a fast writer, and end at the exit before it delivered everything), hands
    /// every frame past the cursor to `each` and moves the cursor past it; how many.
    pub(super) async fn read(
        &mut self,
        docker: &Docker,
        container: &str,
        mut each: impl FnMut(Stream, DateTime<Utc>, &[u8]) -> Result<(), String>,
    ) -> Result<u64, String> {
        let since = self.time.or(self.since);
        let mut stream = docker.logs(container, Some(log_options(since)));
        let mut at_time = 0u64;
        let mut new = 0u64;
        while let Some(frame) = stream.next().await {
            let (kind, message) = match frame {
                Ok(LogOutput::StdOut { message }) => (Stream::Stdout, message),
                Ok(LogOutput::StdErr { message }) => (Stream::Stderr, message),
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(%container, "container log stream: {e}");
                    break;
                }
            };
            let (time, data) = split_timestamp(&message);
            match self.time {
                Some(last) if time < last => continue,
                Some(last) if time == last => {
                    at_time += 1;
                    if at_time <= self.count {
                        continue;
                    }
                    self.count += 1;
                }
                _ => {
                    self.time = Some(time);
                    self.count = 1;
                    at_time = 1;
                }
            }
            new += 1;
            each(kind, time, data)?;
        }
        Ok(new)
    }

    /// The time of the last frame read, if any.
    pub(super) fn last_time(&self) -> Option<DateTime<Utc>> {
        self.time
    }
}

/// Whether the container may still write to its log: anything but ended ("stopping"
/// included).
pub(super) async fn is_running(docker: &Docker, container: &str) -> bool {
    docker
        .inspect_container(container, None)
        .await
        .ok()
        .and_then(|inspected| inspected.state?.status)
        // Anything but ended, "stopping" included (its process may still write).
        .is_some_and(|status| {
            !matches!(
                status,
                ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD
            )
        })
}

impl Follow {
    /// Copies the frames of the container's log past `cursor`; how many.
    async fn copy(
        &self,
        writer: &mut FileLogWriter,
        lines: &mut Lines<'_>,
        cursor: &mut LogCursor,
    ) -> Result<u64, String> {
        let read = cursor
            .read(&self.docker, &self.container, |kind, time, data| {
                if lines.copied.as_ref().is_some_and(|c| c.is_old(time)) {
                    return Ok(());
                }
                lines.push(writer, kind, time, data, false)
            })
            .await;
        // One report per read: the log's end after everything it brought.
        if let Some(end) = lines.take_news() {
            self.emit(EventKind::LogAppended { end_offset: end }).await;
        }
        read
    }
}

fn log_options(since: Option<DateTime<Utc>>) -> LogsOptions {
    let mut options = LogsOptionsBuilder::default()
        .follow(false)
        .stdout(true)
        .stderr(true)
        .timestamps(true);
    if let Some(since) = since {
        // Whole seconds, and one earlier: the engine's cut-off is coarse; `Cursor` is exact.
        let seconds = since.timestamp().saturating_sub(1);
        options = options.since(i32::try_from(seconds).unwrap_or(0));
    }
    options.build()
}

/// Waits for `container` to stop running; its exit code.
pub(super) async fn exit_code(docker: &Docker, container: &str) -> Result<i32, String> {
    let options = WaitContainerOptions {
        condition: "not-running".to_string(),
    };
    let mut wait = docker.wait_container(container, Some(options));
    match wait.next().await {
        Some(Ok(response)) => return Ok(clamp(response.status_code)),
        // A non-zero exit is an error carrying the code.
        Some(Err(DockerError::DockerContainerWaitError { code, .. })) => return Ok(clamp(code)),
        Some(Err(e)) => tracing::debug!("wait on {container}: {e}; inspecting"),
        None => {}
    }
    let inspected = docker
        .inspect_container(container, None)
        .await
        .map_err(|e| format!("container {container} vanished: {e}"))?;
    inspected
        .state
        .and_then(|state| state.exit_code)
        .map(clamp)
        .ok_or_else(|| format!("container {container} has no exit code"))
}

/// Whether the container that ended with `code` was killed for its memory limit: the
/// engine's word, or the kernel's when the engine cannot tell (see `oom.rs`).
pub(super) async fn oom_killed(docker: &Docker, container: &str, code: i32) -> bool {
    let engine_says = docker
        .inspect_container(container, None)
        .await
        .ok()
        .and_then(|inspected| inspected.state?.oom_killed)
        .unwrap_or(false);
    if engine_says {
        return true;
    }
    if code != 128 + 9 {
        return false;
    }
    let id = container.to_string();
    tokio::task::spawn_blocking(move || super::oom::kernel_killed(&id))
        .await
        .unwrap_or(false)
}

fn clamp(code: i64) -> i32 {
    i32::try_from(code).unwrap_or(i32::MAX)
}

/// The log writer of the attempt. A follower of the same attempt that was just aborted (the
/// previous framework instance in this process) may still hold its lock for a moment.
pub(super) async fn open_writer(
    logs: &FileLogStore,
    execution: &ExecutionId,
) -> Result<FileLogWriter, String> {
    let mut tries = 0;
    loop {
        match logs.open_writer(&execution.run_id, execution.attempt) {
            Ok(writer) => return Ok(writer),
            Err(e) if tries >= 50 => return Err(format!("cannot open the log: {e}")),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// `2024-01-02T03:04:05.123456789Z <data>`: the engine's time of the line and the line.
pub(super) fn split_timestamp(message: &[u8]) -> (DateTime<Utc>, &[u8]) {
    if let Some(space) = message.iter().position(|b| *b == b' ') {
        if let Some(time) = std::str::from_utf8(&message[..space])
            .ok()
            .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        {
            return (time.with_timezone(&Utc), &message[space + 1..]);
        }
    }
    (Utc::now(), message)
}

/// Per-stream line assembly, redaction and the attempt's log cap.
struct Lines<'r> {
    redactor: &'r Redactor,
    /// What a previous server already stored, when following a recovered container.
    copied: Option<CopiedLog>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    limit: u64,
    written: u64,
    capped: bool,
    end: u64,
    reported: u64,
}

impl<'r> Lines<'r> {
    fn new(limit: u64, end: u64, redactor: &'r Redactor, copied: Option<CopiedLog>) -> Self {
        Lines {
            redactor,
            copied,
            stdout: Vec::new(),
            stderr: Vec::new(),
            limit,
            written: end,
            capped: end >= limit,
            end,
            reported: end,
        }
    }

    fn push(
        &mut self,
        writer: &mut FileLogWriter,
        stream: Stream,
        time: DateTime<Utc>,
        data: &[u8],
        at_eof: bool,
    ) -> Result<(), String> {
        let pending = match stream {
            Stream::Stderr => &mut self.stderr,
            _ => &mut self.stdout,
        };
        pending.extend_from_slice(data);
        for record in split_records(pending, at_eof) {
            if self.capped {
                continue;
            }
            let record = self.redactor.apply(&record);
            if self
                .copied
                .as_ref()
                .is_some_and(|copied| copied.contains(time, stream, &record))
            {
                continue;
            }
            if self.written + record.len() as u64 > self.limit {
                self.capped = true;
                let note = format!(
                    "log limit of {} bytes reached: the rest of the output is discarded\n",
                    self.limit
                );
                writer
                    .append(Stream::System, Utc::now(), note.as_bytes())
                    .map_err(|e| format!("cannot write the log: {e}"))?;
                self.end = writer.end_offset();
                continue;
            }
            self.written += record.len() as u64;
            writer
                .append(stream, time, &record)
                .map_err(|e| format!("cannot write the log: {e}"))?;
            // The log's end, not the record's start: what `LogAppended` promises.
            self.end = writer.end_offset();
        }
        Ok(())
    }

    /// The log's new end, when it moved since the last call.
    fn take_news(&mut self) -> Option<u64> {
        (self.end != self.reported).then(|| {
            self.reported = self.end;
            self.end
        })
    }
}
