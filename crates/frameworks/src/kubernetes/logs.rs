//! Pod logs into the attempt's log store, incrementally: one follower per pod reads the main
//! container's log with `follow` and timestamps, and remembers how far it got (the time of the
//! last line and how many lines it took at that time). When the stream ends while the pod
//! lives on (the container restarted, the API server closed the stream), it re-opens from
//! there: a restarted container's unread tail is read from its previous instance first. When
//! the pod is gone, what was read is kept.
//!
//! The API merges stdout and stderr: every line is recorded as `stdout`.

use crate::copied_log::CopiedLog;
use crate::events::Outbox;
use crate::log_records::Redactor;
use crate::log_thread::LogThread;
use crate::{EventKind, ExecutionId, FrameworkEvent};
use chrono::{DateTime, Utc};
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams};
use runplane_logstore::file::FileLogWriter;
use runplane_logstore::{LogWriter, Stream};
use std::time::Duration;

use super::manifests::MAIN_CONTAINER;

/// One attempt's log writer state; it lives on its own thread ([`SharedSink`]).
pub(crate) struct LogSink {
    execution: ExecutionId,
    events: Outbox,
    writer: FileLogWriter,
    redactor: Redactor,
    limit: u64,
    capped: bool,
    reported: u64,
    /// What a previous server already stored, when following a recovered execution.
    copied: Option<CopiedLog>,
}

/// One attempt's log, shared by the followers of its pods (a service has several). Its
/// writer appends and fsyncs on a thread of its own, never on a tokio worker.
#[derive(Clone)]
pub(crate) struct SharedSink {
    thread: LogThread<LogSink>,
    /// Where a recovered execution's re-read starts (the last stored record's time).
    since: Option<DateTime<Utc>>,
}

impl SharedSink {
    pub(crate) fn new(sink: LogSink) -> std::io::Result<SharedSink> {
        let since = sink.since();
        let name = format!("log-{}", sink.execution.run_id);
        Ok(SharedSink {
            thread: LogThread::spawn(name, sink)?,
            since,
        })
    }

    pub(crate) fn since(&self) -> Option<DateTime<Utc>> {
        self.since
    }

    /// Appends one line (see [`LogSink::line`]); does not wait.
    pub(crate) fn line(&self, time: DateTime<Utc>, text: &[u8]) {
        let text = text.to_vec();
        self.thread.run(move |sink| sink.line(time, &text));
    }

    /// Makes the log durable and reports its end; does not wait.
    pub(crate) fn flush(&self) {
        self.thread.run(LogSink::flush);
    }

    /// [`flush`](Self::flush), waiting until it is done (and what was appended before it).
    pub(crate) async fn flushed(&self) {
        self.thread.ask(LogSink::flush).await;
    }
}

impl LogSink {
    pub(crate) fn new(
        execution: ExecutionId,
        events: Outbox,
        writer: FileLogWriter,
        redact: &[String],
        limit: u64,
        copied: Option<CopiedLog>,
    ) -> LogSink {
        let end = writer.end_offset();
        LogSink {
            execution,
            events,
            writer,
            redactor: Redactor::new(redact),
            limit,
            capped: end >= limit,
            reported: end,
            copied,
        }
    }

    /// Where a recovered execution's re-read starts (the last stored record's time).
    pub(crate) fn since(&self) -> Option<DateTime<Utc>> {
        self.copied.as_ref().map(CopiedLog::since)
    }

    /// Appends one line (its newline added), redacted, within the log cap.
    pub(crate) fn line(&mut self, time: DateTime<Utc>, text: &[u8]) {
        if self.capped {
            return;
        }
        let mut record = text.to_vec();
        record.push(b'\n');
        let record = self.redactor.apply(&record).into_owned();
        if let Some(copied) = &self.copied {
            if copied.is_old(time) || copied.contains(time, Stream::Stdout, &record) {
                return;
            }
        }
        let result = if self.writer.end_offset() + record.len() as u64 > self.limit {
            self.capped = true;
            let note = format!(
                "log limit of {} bytes reached: the rest of the output is discarded\n",
                self.limit
            );
            self.writer
                .append(Stream::System, Utc::now(), note.as_bytes())
        } else {
            self.writer.append(Stream::Stdout, time, &record)
        };
        if let Err(e) = result {
            tracing::warn!(execution = ?self.execution, "cannot write the log: {e}");
        }
    }

    /// Tells the controller how far the log goes, when it moved.
    pub(crate) fn flush(&mut self) {
        let end = self.writer.end_offset();
        if end != self.reported {
            if let Err(e) = self.writer.sync() {
                tracing::warn!(execution = ?self.execution, "cannot sync the log: {e}");
            }
            self.reported = end;
            self.events.push(FrameworkEvent {
                execution: self.execution.clone(),
                kind: EventKind::LogAppended { end_offset: end },
            });
        }
    }
}

/// How far one container's log was read: lines up to `time`, `count` of them at `time`.
#[derive(Debug, Clone, Default)]
struct Cursor {
    time: Option<DateTime<Utc>>,
    count: u64,
}

impl Cursor {
    /// Whether the line at `time` is new (moving past it); lines come in order on every read.
    fn take(&mut self, time: DateTime<Utc>, seen_at_time: &mut u64) -> bool {
        match self.time {
            Some(last) if time < last => false,
            Some(last) if time == last => {
                *seen_at_time += 1;
                if *seen_at_time <= self.count {
                    return false;
                }
                self.count += 1;
                true
            }
            _ => {
                self.time = Some(time);
                self.count = 1;
                *seen_at_time = 1;
                true
            }
        }
    }

    /// The `sinceTime` to re-open with: a second before (the API rounds to whole seconds).
    fn since(&self, fallback: Option<DateTime<Utc>>) -> Option<k8s_openapi::jiff::Timestamp> {
        let time = self.time.or(fallback)?;
        k8s_openapi::jiff::Timestamp::from_second(time.timestamp().saturating_sub(1)).ok()
    }
}

/// `2024-01-02T03:04:05.123456789Z text`: the kubelet's time of the line and the line.
fn split_timestamp(line: &str) -> (DateTime<Utc>, &str) {
    if let Some((stamp, rest)) = line.split_once(' ') {
        if let Ok(time) = DateTime::parse_from_rfc3339(stamp) {
            return (time.with_timezone(&Utc), rest);
        }
    }
    (Utc::now(), line)
}

/// Follows `pod`'s main container until the pod is gone or its container ended for good
/// (`done` tells: the pod's restart policy says it will not run again).
pub(crate) async fn follow_pod(
    pods: Api<Pod>,
    pod: String,
    sink: SharedSink,
    restarts_at_start: i32,
) {
    let mut cursor = Cursor::default();
    let mut restarts = restarts_at_start;
    let since = sink.since();
    let mut idle = Duration::from_millis(200);
    loop {
        let read = read_once(&pods, &pod, &sink, &mut cursor, since, false).await;
        let state = pod_state(&pods, &pod).await;
        match state {
            PodState::Gone => break,
            PodState::Running { restart_count } if restart_count > restarts => {
                // The container restarted while the stream was open: the previous
                // instance's unread tail first.
                let _ = read_once(&pods, &pod, &sink, &mut cursor, since, true).await;
                restarts = restart_count;
            }
            PodState::Ended => {
                // One last read: lines written between the stream's end and the exit.
                let _ = read_once(&pods, &pod, &sink, &mut cursor, since, false).await;
                break;
            }
            _ => {}
        }
        if read == 0 {
            // Not started yet, or restarting after a crash (CrashLoopBackOff): wait a little
            // longer each time, up to a few seconds.
            tokio::time::sleep(idle).await;
            idle = (idle * 2).min(Duration::from_secs(5));
        } else {
            idle = Duration::from_millis(200);
        }
    }
    sink.flushed().await;
}

/// Reads the container's log (following it) past `cursor`; how many new lines.
async fn read_once(
    pods: &Api<Pod>,
    pod: &str,
    sink: &SharedSink,
    cursor: &mut Cursor,
    since: Option<DateTime<Utc>>,
    previous: bool,
) -> u64 {
    let params = LogParams {
        container: Some(MAIN_CONTAINER.to_string()),
        follow: !previous,
        previous,
        timestamps: true,
        since_time: cursor.since(since),
        ..Default::default()
    };
    let stream = match pods.log_stream(pod, &params).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(%pod, "cannot read the pod's log yet: {e}");
            return 0;
        }
    };
    let mut lines = Box::pin(stream.lines());
    let mut seen_at_time = 0u64;
    let mut new = 0u64;
    // Lines that come together are told to the controller together: one `LogAppended` once
    // the stream pauses (or every FLUSH_EVERY lines), not one per line.
    let mut unflushed = 0u32;
    loop {
        let next = if unflushed == 0 {
            lines.next().await
        } else {
            match tokio::time::timeout(FLUSH_AFTER, lines.next()).await {
                Ok(next) => next,
                Err(_) => {
                    sink.flushed().await;
                    unflushed = 0;
                    continue;
                }
            }
        };
        let Some(line) = next else {
            break;
        };
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                tracing::debug!(%pod, "pod log stream: {e}");
                break;
            }
        };
        let (time, text) = split_timestamp(&line);
        if !cursor.take(time, &mut seen_at_time) {
            continue;
        }
        new += 1;
        sink.line(time, text.as_bytes());
        unflushed += 1;
        if unflushed >= FLUSH_EVERY {
            // Waiting here keeps the writer's queue short when the disk is slow.
            sink.flushed().await;
            unflushed = 0;
        }
    }
    if unflushed > 0 {
        sink.flush();
    }
    new
}

/// How long a pause in the stream is before appended lines are reported.
const FLUSH_AFTER: Duration = Duration::from_millis(50);
/// Report at least every this many lines of a stream that never pauses.
const FLUSH_EVERY: u32 = 256;

enum PodState {
    Gone,
    /// The main container is not running and will not run again.
    Ended,
    Running {
        restart_count: i32,
    },
    Waiting,
}

async fn pod_state(pods: &Api<Pod>, pod: &str) -> PodState {
    let found = match pods.get_opt(pod).await {
        Ok(Some(found)) => found,
        Ok(None) => return PodState::Gone,
        // The API server may be away for a moment: look again later.
        Err(_) => return PodState::Waiting,
    };
    let status = found.status.unwrap_or_default();
    let never_restarts = found
        .spec
        .and_then(|spec| spec.restart_policy)
        .is_some_and(|policy| policy == "Never");
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return PodState::Ended;
    }
    let main = status
        .container_statuses
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == MAIN_CONTAINER);
    match main {
        Some(main) => {
            let terminated = main
                .state
                .as_ref()
                .is_some_and(|state| state.terminated.is_some());
            if terminated && never_restarts {
                PodState::Ended
            } else if main.state.as_ref().is_some_and(|s| s.running.is_some()) {
                PodState::Running {
                    restart_count: main.restart_count,
                }
            } else {
                PodState::Waiting
            }
        }
        None => PodState::Waiting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_skips_exactly_what_was_read() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let mut cursor = Cursor::default();
        let mut n = 0;
        assert!(cursor.take(t("2024-01-01T00:00:01Z"), &mut n));
        assert!(cursor.take(t("2024-01-01T00:00:02Z"), &mut n));
        assert!(cursor.take(t("2024-01-01T00:00:02Z"), &mut n));
        // A re-read from the start: everything up to the cursor is old, then new lines.
        let mut n = 0;
        assert!(!cursor.take(t("2024-01-01T00:00:01Z"), &mut n));
        assert!(!cursor.take(t("2024-01-01T00:00:02Z"), &mut n));
        assert!(!cursor.take(t("2024-01-01T00:00:02Z"), &mut n));
        assert!(cursor.take(t("2024-01-01T00:00:02Z"), &mut n));
        assert!(cursor.take(t("2024-01-01T00:00:03Z"), &mut n));
        assert_eq!(
            cursor.since(None).unwrap().as_second(),
            t("2024-01-01T00:00:02Z").timestamp()
        );
    }

    #[test]
    fn timestamps_are_split_off() {
        let (time, text) = split_timestamp("2024-01-02T03:04:05.123456789Z hello world");
        assert_eq!(text, "hello world");
        assert_eq!(time.timestamp_subsec_nanos(), 123_456_789);
        let (_, text) = split_timestamp("no stamp");
        assert_eq!(text, "no stamp");
    }
}
